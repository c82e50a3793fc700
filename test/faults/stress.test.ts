import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBaseImage } from '../helpers/base-image';

/**
 * N workers (default 8) run random operations — Apptainer writers and readers through overlayctl
 * exec, resize, check, info, cache save/restore — on a shared set of images and one shared local
 * cache store for M seconds. Then every image must be clean and match a model of what the
 * completed operations produced; no operation may wait forever or corrupt another's work.
 */
const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
const WORKERS = Number(process.env.STRESS_WORKERS ?? 8);
const SECONDS = Number(process.env.STRESS_SECONDS ?? 30);
const IMAGES = 3;
const OP_BOUND_MS = 180_000; // a hang detector

let dir: string;
let base: string;
const images: string[] = [];
const store = () => join(dir, 'store');
const completedWrites = new Map<string, Set<string>>();
const completedResizes = new Map<string, { at: number; bytes: number }>();
const counts: Record<string, { ok: number; locked: number }> = {};

function tally(op: string, outcome: 'ok' | 'locked') {
  counts[op] ??= { ok: 0, locked: 0 };
  counts[op][outcome]++;
}

async function run(op: string, args: string[]) {
  const sep = args.indexOf('--'); // --json must come before the container command
  const argv = sep < 0 ? [...args, '--json'] : [...args.slice(0, sep), '--json', ...args.slice(sep)];
  const r = await execa(CLI, argv, {
    reject: false,
    timeout: OP_BOUND_MS,
    killSignal: 'SIGKILL',
  });
  expect(r.timedOut, `${op} waited forever: ${args.join(' ')}`).toBe(false);
  const last = r.stdout.trim().split('\n').at(-1) ?? '{}';
  // biome-ignore lint/suspicious/noExplicitAny: parsed CLI JSON
  let out: Record<string, any> = {};
  try {
    out = JSON.parse(last);
  } catch {}
  return { r, out };
}

const pick = <T>(xs: T[]): T => xs[Math.floor(Math.random() * xs.length)]!;

async function worker(id: number, deadline: number) {
  let n = 0;
  while (Date.now() < deadline) {
    const image = pick(images);
    const token = `w${id}-${n++}`;
    const op = pick(['write', 'write', 'read', 'resize', 'check', 'info', 'save', 'restore']);
    if (op === 'write') {
      const { r } = await run(op, [
        'exec',
        image,
        '--base',
        base,
        '--',
        'sh',
        '-c',
        `mkdir -p /opt/stress && echo ${token} > /opt/stress/${token}`,
      ]);
      if (r.exitCode === 0) {
        completedWrites.get(image)!.add(token);
        tally(op, 'ok');
      } else {
        expect(r.stdout + r.stderr).toMatch(/E_LOCKED|in use/);
        tally(op, 'locked');
      }
    } else if (op === 'read') {
      const { r } = await run(op, ['exec', image, '--ro', '--base', base, '--', 'ls', '/opt']);
      if (r.exitCode === 0) tally(op, 'ok');
      else {
        expect(r.stdout + r.stderr).toMatch(/E_LOCKED|in use/);
        tally(op, 'locked');
      }
    } else if (op === 'resize') {
      const mib = pick([96, 128, 160]);
      const { r, out } = await run(op, ['resize', image, '--size', String(mib)]);
      if (r.exitCode === 0) {
        completedResizes.set(image, { at: Date.now(), bytes: mib * 2 ** 20 });
        tally(op, 'ok');
      } else {
        expect(out.error?.code).toBe('E_LOCKED');
        tally(op, 'locked');
      }
    } else if (op === 'check') {
      const { out } = await run(op, ['check', image]);
      const status = out.images?.[0]?.status;
      expect(['clean', 'locked']).toContain(status); // never corrupt
      tally(op, status === 'clean' ? 'ok' : 'locked');
    } else if (op === 'info') {
      const { r } = await run(op, ['info', image]);
      expect(r.exitCode).toBe(0);
      tally(op, 'ok');
    } else if (op === 'save') {
      const { r, out } = await run(op, [
        'cache',
        'save',
        image,
        '--key',
        `k-${pick([0, 1, 2])}`,
        '--store',
        store(),
      ]);
      if (r.exitCode === 0) tally(op, 'ok');
      else {
        expect(out.error?.code).toBe('E_LOCKED');
        tally(op, 'locked');
      }
    } else {
      const target = join(dir, `restore-${token}.img`);
      const { r, out } = await run(op, [
        'cache',
        'restore',
        target,
        '--key',
        `k-${pick([0, 1, 2])}`,
        '--store',
        store(),
      ]);
      expect(r.exitCode).toBe(0);
      if (out.outcome === 'hit') {
        const fsck = await execa('e2fsck', ['-fn', target], { reject: false });
        expect(fsck.exitCode, `restored ${target} is not clean`).toBe(0);
      }
      rmSync(target, { force: true });
      tally(op, 'ok');
    }
  }
}

beforeAll(async () => {
  base = await ensureBaseImage();
  dir = mkdtempSync(join(tmpdir(), 'ov-stress-'));
  mkdirSync(store(), { mode: 0o755 });
  for (let i = 0; i < IMAGES; i++) {
    const image = join(dir, `img${i}.img`);
    await execa(CLI, ['create', image, '--size', '128', '--profile', 'small']);
    images.push(image);
    completedWrites.set(image, new Set());
  }
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('concurrency stress', () => {
  it(`${WORKERS} workers for ${SECONDS}s leave every image clean and as the model says`, async () => {
    const deadline = Date.now() + SECONDS * 1000;
    await Promise.all(Array.from({ length: WORKERS }, (_, i) => worker(i, deadline)));
    process.stdout.write(`\nstress: ${JSON.stringify(counts)}\n`);
    for (const image of images) {
      const fsck = await execa('e2fsck', ['-fn', image], { reject: false });
      expect(fsck.exitCode, fsck.stdout).toBe(0);
      const ls = await execa('debugfs', ['-R', 'ls -p /upper/opt/stress', image], { reject: false });
      const present = new Set([...ls.stdout.matchAll(/\/\d+\/\d+\/\d+\/\d+\/([^/]+)\//g)].map((m) => m[1]));
      for (const token of completedWrites.get(image)!)
        expect(present.has(token), `${token} lost in ${image}`).toBe(true);
      const resized = completedResizes.get(image);
      if (resized) expect(statSync(image).size).toBe(resized.bytes);
      expect(existsSync(image)).toBe(true);
    }
    const ops = Object.values(counts).reduce((a, c) => a + c.ok, 0);
    expect(ops).toBeGreaterThan(WORKERS);
  });
});
