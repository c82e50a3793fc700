// SIGKILL during resize and repair of an embedded overlay, at every external-tool boundary
// (test/faults/killpoints.ts) and at several moments of the SIF rewrite itself: afterwards the
// SIF is the old one (byte for byte) or the complete new one (Apptainer lists the same ids, the
// container partition is unchanged, the overlay checks clean with the data in it), and the next
// operation leaves no temp file behind.
import { createHash } from 'node:crypto';
import { copyFileSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeKillPointDir } from '../faults/killpoints';
import { ensureBaseImage } from '../helpers/base-image';
import { containerSha, fileSha, overlayObject, sifList, sifWithOverlay } from './helpers';

const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
const killPoints = makeKillPointDir();
/** Kill moments as fractions of an unkilled run's duration (adapts to the machine's load). */
const TIME_FRACTIONS = [0.3, 0.5, 0.65, 0.8, 0.9, 0.97];
const PAYLOAD = readFileSync('/etc/services');
const payloadSum = createHash('sha256').update(PAYLOAD).digest('hex');
let dir: string;
let base: string;
let baseContainer: string;
const stats = { trials: 0, killed: 0, oldKept: 0, newInPlace: 0, killedDuringRewrite: 0 };

function run(args: string[], env: Record<string, string> = {}) {
  writeFileSync(killPoints.counter, ''); // KILL_AT counts the calls of this run only
  return execa(CLI, args, { reject: false, env: { PATH: `${killPoints.bin}:${process.env.PATH}`, ...env } });
}

/** Tool boundaries of an unkilled run, and how long it took. */
async function boundaries(args: string[], prepare: () => Promise<void>): Promise<{ n: number; ms: number }> {
  await prepare();
  const started = Date.now();
  const r = await run(args);
  expect(r.exitCode, r.stderr).toBe(0);
  const n = readFileSync(killPoints.counter, 'utf8').split('\n').filter(Boolean).length;
  return { n, ms: Date.now() - started };
}

async function payloadIn(sif: string): Promise<string> {
  const o = (await overlayObject(sif))!;
  const r = await execa('debugfs', ['-R', 'cat /upper/data', `${sif}?offset=${o.start}`], {
    encoding: 'buffer',
    stripFinalNewline: false,
  });
  return createHash('sha256').update(Buffer.from(r.stdout)).digest('hex');
}

/** The invariant: old SIF byte for byte, or a complete new one; and no stray temp after the next run. */
async function assertOldOrNew(sif: string, oldSum: string, ids: number[], newOverlaySize?: number) {
  stats.trials++;
  // a temp SIF (a file, not a work directory) means the kill came during the rewrite itself
  const temps = readdirSync(dir).filter((n) => n.includes('.ovtmp-'));
  if (temps.some((n) => statSync(join(dir, n)).isFile())) stats.killedDuringRewrite++;
  if (fileSha(sif) === oldSum) stats.oldKept++;
  else {
    stats.newInPlace++;
    expect((await sifList(sif)).map((o) => o.id)).toEqual(ids);
    expect(await containerSha(sif)).toBe(baseContainer);
    const o = (await overlayObject(sif))!;
    if (newOverlaySize) expect(o.end - o.start).toBe(newOverlaySize);
    const fsck = await execa('e2fsck', ['-fn', `${sif}?offset=${o.start}`], { reject: false });
    expect(fsck.exitCode, fsck.stdout).toBe(0);
    expect(await payloadIn(sif)).toBe(payloadSum);
  }
  const info = await execa(CLI, ['info', sif, '--json'], { reject: false });
  expect(info.exitCode, info.stderr).toBe(0);
  expect(readdirSync(dir).filter((n) => n.includes('.ovtmp-'))).toEqual([]);
}

async function makeSif(name: string): Promise<string> {
  const sif = await sifWithOverlay(base, join(dir, name), 384); // allocated: the rewrite takes a while
  const o = (await overlayObject(sif))!;
  await execa('debugfs', ['-w', '-R', 'write /etc/services /upper/data', `${sif}?offset=${o.start}`]);
  return sif;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ov-sif-crash-'));
  base = await ensureBaseImage();
  baseContainer = await containerSha(base);
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
  console.log(`sif crash: ${JSON.stringify(stats)}`);
});

describe('SIGKILL during resize of an embedded overlay', () => {
  it('at every tool boundary and during the rewrite: the old SIF or the new one', async () => {
    const sif = join(dir, 'resize.sif');
    const fresh = async () => {
      rmSync(sif, { force: true });
      copyFileSync(await makeSif('resize-src.sif'), sif);
    };
    const { n, ms: total } = await boundaries(['resize', sif, '--size', '500M'], fresh);
    expect(n).toBeGreaterThan(2);
    for (let k = 1; k <= n; k++) {
      await fresh();
      const old = fileSha(sif);
      const ids = (await sifList(sif)).map((o) => o.id);
      const r = await run(['resize', sif, '--size', '500M'], { KILL_AT: String(k) });
      if (r.exitCode !== 0) stats.killed++;
      await assertOldOrNew(sif, old, ids, 500 * 2 ** 20);
    }
    for (const f of TIME_FRACTIONS) {
      const ms = Math.round(f * total);
      await fresh();
      const old = fileSha(sif);
      const ids = (await sifList(sif)).map((o) => o.id);
      const child = run(['resize', sif, '--size', '500M']);
      const timer = setTimeout(() => child.kill('SIGKILL'), ms);
      const r = await child;
      clearTimeout(timer);
      if (r.signal === 'SIGKILL') stats.killed++;
      await assertOldOrNew(sif, old, ids, 500 * 2 ** 20);
    }
  });
});

describe('SIGKILL during repair of an embedded overlay', () => {
  it('at every tool boundary and during the rewrite: the damaged SIF or the repaired one', async () => {
    const sif = join(dir, 'repair.sif');
    const fresh = async () => {
      rmSync(sif, { force: true });
      copyFileSync(await makeSif('repair-src.sif'), sif);
      const o = (await overlayObject(sif))!;
      await execa('debugfs', ['-w', '-f', '-', `${sif}?offset=${o.start}`], {
        input: 'set_bg 0 free_blocks_count 7\nsif /upper links_count 9\n',
      });
    };
    const { n, ms: total } = await boundaries(['check', '--repair', sif], fresh);
    expect(n).toBeGreaterThan(2);
    const trial = async (env: Record<string, string>, ms?: number) => {
      await fresh();
      const old = fileSha(sif);
      const ids = (await sifList(sif)).map((o) => o.id);
      const child = run(['check', '--repair', sif], env);
      const timer = ms ? setTimeout(() => child.kill('SIGKILL'), ms) : undefined;
      const r = await child;
      clearTimeout(timer);
      if (r.signal === 'SIGKILL' || r.exitCode === 137) stats.killed++;
      await assertOldOrNew(sif, old, ids);
      if (fileSha(sif) !== old) {
        const again = await execa(CLI, ['check', sif, '--json'], { reject: false });
        expect(JSON.parse(again.stdout).images[0].status).toBe('clean');
      }
    };
    for (let k = 1; k <= n; k++) await trial({ KILL_AT: String(k) });
    for (const f of TIME_FRACTIONS) await trial({}, Math.round(f * total));
  });
});
