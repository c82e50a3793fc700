import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { probeLock } from '../../packages/core/src/lock/ofd';
import { makeKillPointDir } from './killpoints';

/**
 * SIGKILL at every external-tool boundary and at several moments of each rewriting operation,
 * then the invariant: the original or the complete result is in place, e2fsck -fn passes, the
 * content checksum matches, the next operation leaves no stray temp file, and the lock is free.
 */
const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
const MAX_BOUNDARIES = Number(process.env.FAULT_MAX_BOUNDARIES ?? 10);
const TIME_POINTS_MS = (process.env.FAULT_TIME_POINTS ?? '30,120,400').split(',').map(Number);
const PAYLOAD = '/etc/services';
const payloadSum = sha(readFileSync(PAYLOAD));
const killPoints = makeKillPointDir();
const stats = { trials: 0, faultsInjected: 0, invariantsChecked: 0 };

function sha(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}
const fileSum = (p: string) => sha(readFileSync(p));

async function overlayctl(args: string[], env: Record<string, string> = {}) {
  return execa(CLI, args, { reject: false, env: { PATH: `${killPoints.bin}:${process.env.PATH}`, ...env } });
}

async function fsckClean(image: string): Promise<boolean> {
  return (await execa('e2fsck', ['-fn', image], { reject: false })).exitCode === 0;
}

async function payloadIntact(image: string): Promise<boolean> {
  const r = await execa('debugfs', ['-R', 'cat /upper/data', image], {
    reject: false,
    encoding: 'buffer',
    stripFinalNewline: false,
  });
  return sha(Buffer.from(r.stdout)) === payloadSum;
}

async function makeImage(path: string, size = '128'): Promise<void> {
  await execa(CLI, ['create', path, '--size', size]);
  await execa('debugfs', ['-w', '-R', `write ${PAYLOAD} /upper/data`, path]);
}

/** Mounts our commit made (overlay-mnt-PID-...) whose process is gone. */
function strayMounts(): string[] {
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => {
      const m = /\/overlay-mnt-(\d+)-/.exec(p);
      return m && !alive(Number(m[1]));
    });
}

function strayTemps(dir: string): string[] {
  return readdirSync(dir).filter((n) => n.includes('.ovtmp-'));
}

interface Scenario {
  name: string;
  setup(dir: string): Promise<void>;
  argv(dir: string): string[];
  /** The complete result is in place (called when the original is not). */
  isComplete(dir: string): Promise<boolean>;
  /** The original is in place. */
  isOriginal(dir: string, before: Record<string, string>): Promise<boolean>;
  snapshot(dir: string): Record<string, string>;
}

const img = (d: string) => join(d, 'env.img');
const snapImg = (d: string): Record<string, string> => (existsSync(img(d)) ? { img: fileSum(img(d)) } : {});
const sameImg = async (d: string, b: Record<string, string>) =>
  b.img === undefined ? !existsSync(img(d)) : existsSync(img(d)) && fileSum(img(d)) === b.img;

const scenarios: Scenario[] = [
  {
    name: 'create',
    setup: async () => {},
    argv: (d) => ['create', img(d), '--size', '128', '--allocated'],
    snapshot: snapImg,
    isOriginal: sameImg,
    isComplete: async (d) =>
      existsSync(img(d)) && statSync(img(d)).size === 128 * 2 ** 20 && (await fsckClean(img(d))),
  },
  {
    name: 'resize grow',
    setup: (d) => makeImage(img(d)),
    argv: (d) => ['resize', img(d), '--size', '256'],
    snapshot: snapImg,
    isOriginal: sameImg,
    isComplete: async (d) =>
      statSync(img(d)).size === 256 * 2 ** 20 && (await fsckClean(img(d))) && (await payloadIntact(img(d))),
  },
  {
    name: 'resize shrink',
    setup: (d) => makeImage(img(d), '256'),
    argv: (d) => ['resize', img(d), '--size', '96'],
    snapshot: snapImg,
    isOriginal: sameImg,
    isComplete: async (d) =>
      statSync(img(d)).size === 96 * 2 ** 20 && (await fsckClean(img(d))) && (await payloadIntact(img(d))),
  },
  {
    name: 'check --repair',
    setup: async (d) => {
      await makeImage(img(d));
      // mark in-use blocks and an inode free: a bitmap inconsistency e2fsck repairs
      await execa('debugfs', ['-w', '-f', '-', img(d)], { input: 'freeb 300 20\nfreei /upper/data\n' });
    },
    argv: (d) => ['check', img(d), '--repair'],
    snapshot: snapImg,
    isOriginal: sameImg,
    isComplete: async (d) => (await fsckClean(img(d))) && (await payloadIntact(img(d))),
  },
  {
    name: 'chown',
    setup: (d) => makeImage(img(d)),
    argv: (d) => ['chown', img(d), '--uid', '4321', '--gid', '4321'],
    snapshot: snapImg,
    isOriginal: sameImg,
    isComplete: async (d) => {
      const r = await execa('debugfs', ['-R', 'stat /upper/data', img(d)]);
      return (
        /User:\s+4321\s+Group:\s+4321/.test(r.stdout) &&
        (await fsckClean(img(d))) &&
        (await payloadIntact(img(d)))
      );
    },
  },
  {
    name: 'commit --reset',
    setup: (d) => makeImage(img(d)),
    argv: (d) => ['commit', img(d), '--output', join(d, 'layer.sqf'), '--reset'],
    snapshot: (d) => ({ ...snapImg(d), layer: existsSync(join(d, 'layer.sqf')) ? 'yes' : 'no' }),
    // original: image untouched (a complete layer may already be published before the reset)
    isOriginal: async (d, b) =>
      (await sameImg(d, b)) && (!existsSync(join(d, 'layer.sqf')) || (await layerOk(d))),
    isComplete: async (d) => {
      if (!(await layerOk(d)) || !(await fsckClean(img(d)))) return false;
      const ls = await execa('debugfs', ['-R', 'ls /upper', img(d)]);
      return !/\bdata\b/.test(ls.stdout);
    },
  },
  {
    name: 'cache save',
    setup: async (d) => {
      await makeImage(img(d));
      mkdirSync(join(d, 'store'), { mode: 0o755 });
    },
    argv: (d) => ['cache', 'save', img(d), '--key', 'k1', '--store', join(d, 'store')],
    snapshot: snapImg,
    // either no entry or a complete one: restoring the key must give a miss or the exact image
    isOriginal: async (d) => (await restoreProbe(d)) === 'miss',
    isComplete: async (d) => (await restoreProbe(d)) === 'hit',
  },
  {
    name: 'cache restore',
    setup: async (d) => {
      const source = join(d, 'source.img');
      await makeImage(source);
      await execa(CLI, ['cache', 'save', source, '--key', 'k1', '--store', join(d, 'store')]);
      writeFileSync(join(d, 'source.sum'), fileSum(source));
      await execa(CLI, ['create', img(d), '--size', '64']); // the previous image
    },
    argv: (d) => ['cache', 'restore', img(d), '--key', 'k1', '--store', join(d, 'store'), '--force'],
    snapshot: snapImg,
    isOriginal: sameImg,
    isComplete: async (d) => fileSum(img(d)) === readFileSync(join(d, 'source.sum'), 'utf8'),
  },
];

async function layerOk(d: string): Promise<boolean> {
  const layer = join(d, 'layer.sqf');
  if (!existsSync(layer)) return false;
  const r = await execa('unsquashfs', ['-l', layer], { reject: false });
  return r.exitCode === 0 && /squashfs-root\/data$/m.test(r.stdout);
}

async function restoreProbe(d: string): Promise<string> {
  const probe = join(d, 'probe.img');
  rmSync(probe, { force: true });
  const r = await execa(
    CLI,
    ['cache', 'restore', probe, '--key', 'k1', '--store', join(d, 'store'), '--json'],
    {
      reject: false,
    },
  );
  const out = JSON.parse(r.stdout || '{}');
  if (out.outcome !== 'hit') return 'miss';
  return fileSum(probe) === fileSum(img(d)) && (await fsckClean(probe)) ? 'hit' : 'corrupt';
}

async function assertInvariant(s: Scenario, d: string, before: Record<string, string>, label: string) {
  const original = await s.isOriginal(d, before);
  const complete = original ? false : await s.isComplete(d);
  expect(original || complete, `${s.name} ${label}: neither the original nor the complete result`).toBe(true);
  if (existsSync(img(d))) {
    expect((await fsckClean(img(d))) || s.name === 'check --repair', `${s.name} ${label}: e2fsck -fn`).toBe(
      true,
    );
    expect(probeLock(img(d)), `${s.name} ${label}: lock released`).toBe('free');
  }
  // the next operation clears what the killed one left behind
  if (existsSync(img(d))) await overlayctl(['info', img(d)]);
  else await overlayctl(['create', img(d), '--size', '64']);
  await overlayctl(['info', join(d, 'layer.sqf')]); // the layer's own leftovers, if any
  expect(strayTemps(d), `${s.name} ${label}: stray temp files`).toEqual([]);
  expect(strayMounts(), `${s.name} ${label}: mounts left by the killed process`).toEqual([]);
  stats.invariantsChecked++;
}

afterAll(() => {
  process.stdout.write(
    `\nfault suite: ${stats.trials} trials, ${stats.faultsInjected} faults injected, ${stats.invariantsChecked} invariants checked\n`,
  );
});

describe.each(scenarios.map((s) => [s.name, s] as const))('SIGKILL during %s', (_n, s) => {
  const fresh = async () => {
    const d = mkdtempSync(join(tmpdir(), 'ov-fault-'));
    await s.setup(d);
    return d;
  };

  it('completes without faults, and survives a kill at each tool boundary', async () => {
    const d0 = await fresh();
    writeFileSync(killPoints.counter, '');
    const ok = await overlayctl(s.argv(d0));
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(await s.isComplete(d0)).toBe(true);
    const boundaries = readFileSync(killPoints.counter, 'utf8').split('\n').filter(Boolean).length;
    expect(boundaries).toBeGreaterThan(0);
    rmSync(d0, { recursive: true, force: true });

    for (let k = 1; k <= Math.min(boundaries, MAX_BOUNDARIES); k++) {
      const d = await fresh();
      const before = s.snapshot(d);
      writeFileSync(killPoints.counter, '');
      const r = await overlayctl(s.argv(d), { KILL_AT: String(k) });
      stats.trials++;
      if (r.signal === 'SIGKILL') stats.faultsInjected++;
      await new Promise((res) => setTimeout(res, 300)); // let an orphaned tool finish or die
      await assertInvariant(s, d, before, `killed at tool call ${k}`);
      rmSync(d, { recursive: true, force: true });
    }
  });

  it.each(TIME_POINTS_MS)('survives a kill after %i ms', async (ms) => {
    const d = await fresh();
    const before = s.snapshot(d);
    const child = execa(CLI, s.argv(d), { reject: false });
    setTimeout(() => child.kill('SIGKILL'), ms);
    const r = await child;
    stats.trials++;
    if (r.signal === 'SIGKILL') stats.faultsInjected++;
    await new Promise((res) => setTimeout(res, 300));
    await assertInvariant(s, d, before, `killed after ${ms} ms`);
    rmSync(d, { recursive: true, force: true });
  });
});
