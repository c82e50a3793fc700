// `overlayctl setup` as users walk it: create or restore, build, save, reuse — with a directory
// store. A fallback restore ends up with the settings asked for (or is not used), the CLI saves
// like the action's post step, `cache key` derives setup's key, a failed build leaves nothing.
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBaseImage } from '../helpers/base-image';
import { hasApptainer } from '../helpers/tools';

const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
let dir: string;

async function ctl(args: string[], env: Record<string, string> = {}) {
  const r = await execa(CLI, [...args, '--json'], { reject: false, env, cwd: dir });
  return { code: r.exitCode, out: JSON.parse(r.stdout.trim().split('\n').at(-1) || '{}'), stderr: r.stderr };
}
const info = async (img: string) => (await ctl(['info', img])).out;
const MiB = 2 ** 20;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ov-setup-cli-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('setup with a directory store', () => {
  it('saves right away (the save half), and `cache key` with the same options derives the same key', async () => {
    const store = join(dir, 's1');
    const a = await ctl([
      'setup',
      join(dir, 'a.img'),
      '--size',
      '96M',
      '--cache-key',
      'k1',
      '--store',
      store,
    ]);
    expect(a.code, a.stderr).toBe(0);
    expect(a.out).toMatchObject({ cacheOutcome: 'miss', created: true, saved: { saved: true } });
    const key = await ctl(['cache', 'key', '--size', '96M', '--cache-key', 'k1']);
    expect(key.out.key).toBe(a.out.cacheKey);
    const b = await ctl([
      'setup',
      join(dir, 'b.img'),
      '--size',
      '96M',
      '--cache-key',
      'k1',
      '--store',
      store,
    ]);
    expect(b.out).toMatchObject({ cacheOutcome: 'hit', saved: { saved: false, reason: 'hit' } });
    // the pair setup + cache save reaches the same entry
    const c = await ctl(['cache', 'restore', join(dir, 'c.img'), '--key', key.out.key, '--store', store]);
    expect(c.out.outcome).toBe('hit');
  });

  it('honours OVERLAY_CACHE_STORE, and without any store says so in CLI syntax', async () => {
    const store = join(dir, 'env-store');
    const r = await ctl(['setup', join(dir, 'e.img'), '--size', '64M', '--cache-key', 'envk'], {
      OVERLAY_CACHE_STORE: store,
    });
    expect(r.out.saved?.saved).toBe(true);
    expect(readdirSync(store).some((n) => n.endsWith('.json'))).toBe(true);
    const none = await execa(CLI, ['setup', join(dir, 'n.img'), '--size', '64M'], {
      reject: false,
      env: { OVERLAY_CACHE_STORE: '' },
    });
    expect(none.stderr).toMatch(/--store DIR/);
    expect(none.stderr).not.toMatch(/store: DIR/);
  });

  it('a fallback from a smaller image is grown to the requested size and saved under the new key with it', async () => {
    const store = join(dir, 's2');
    await ctl(['setup', join(dir, 'small.img'), '--size', '96M', '--cache-key', 'grow', '--store', store]);
    const big = join(dir, 'big.img');
    const r = await ctl(['setup', big, '--size', '160M', '--cache-key', 'grow', '--store', store]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.out.cacheOutcome).toBe('partial');
    expect(r.out.reconciled.join(' ')).toMatch(/resized/);
    expect(statSync(big).size).toBe(160 * MiB);
    expect(r.out.saved.saved).toBe(true);
    // what was saved under the 160M key restores as 160 MiB
    const back = join(dir, 'big-back.img');
    await ctl(['cache', 'restore', back, '--key', r.out.cacheKey, '--store', store]);
    expect(statSync(back).size).toBe(160 * MiB);
  });

  it('a fallback gets the owner asked for', async () => {
    const store = join(dir, 's3');
    await ctl(['setup', join(dir, 'o1.img'), '--size', '64M', '--cache-key', 'own', '--store', store]);
    const img = join(dir, 'o2.img');
    const r = await ctl([
      'setup',
      img,
      '--size',
      '64M',
      '--cache-key',
      'own',
      '--uid',
      '4321',
      '--gid',
      '4321',
      '--store',
      store,
    ]);
    expect(r.out.cacheOutcome).toBe('partial');
    expect((await info(img)).upper).toEqual({ uid: 4321, gid: 4321 });
  });

  it('another profile is never a fallback (not even through a restore-key), nor data larger than the size asked for', async () => {
    const store = join(dir, 's4');
    await ctl(['setup', join(dir, 'p1.img'), '--size', '128M', '--cache-key', 'prof', '--store', store]);
    const large = join(dir, 'p2.img');
    const r = await ctl([
      'setup',
      large,
      '--size',
      '256M',
      '--profile',
      'large',
      '--cache-key',
      'prof',
      '--restore-keys',
      'prof-',
      '--store',
      store,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.out.cacheOutcome).toBe('miss');
    expect(r.stderr).toMatch(/inode ratio/);
    expect((await info(large)).inodeRatio).toBeGreaterThan(512 * 1024);
    expect(r.out.saved.saved).toBe(true);

    // 100 MiB of data cannot shrink into the 64 MiB asked for: not a candidate
    const full = join(dir, 'full.img');
    await ctl(['create', full, '--size', '256M']);
    await execa('dd', ['if=/dev/urandom', `of=${join(dir, 'blob')}`, 'bs=1M', 'count=100']);
    await execa('debugfs', ['-w', '-R', `write ${join(dir, 'blob')} /upper/blob`, full]);
    await ctl(['cache', 'save', full, '--key', 'fit-linux-big', '--store', store]);
    const small = join(dir, 'fit.img');
    const s = await ctl([
      'setup',
      small,
      '--size',
      '64M',
      '--cache-key',
      'fit',
      '--restore-keys',
      'fit-linux-',
      '--store',
      store,
    ]);
    expect(s.out.cacheOutcome).toBe('miss');
    expect(s.stderr).toMatch(/does not fit/);
    expect(statSync(small).size).toBe(64 * MiB);
  });
});

describe.skipIf(!hasApptainer())('setup with a build', () => {
  let base: string;
  beforeAll(async () => {
    base = await ensureBaseImage();
  });

  it('a failed build leaves no image behind, and the rerun works', async () => {
    const q = join(dir, 'q.img');
    const bad = await ctl(['setup', q, '--size', '64M', '--base', base, '--build', 'exit 1', '--no-cache']);
    expect(bad.code).not.toBe(0);
    expect(bad.out.error.code).toBe('E_BUILD_FAILED');
    expect(existsSync(q)).toBe(false);
    expect(readdirSync(dir).filter((n) => n.startsWith('.q.img'))).toEqual([]);
    const good = await ctl(['setup', q, '--size', '64M', '--base', base, '--build', 'true', '--no-cache']);
    expect(good.code, good.stderr).toBe(0);
    expect(good.out).toMatchObject({ built: true, basePath: base });
  });

  it('a failed build on a restored image removes it too (nothing half-built is kept or saved)', async () => {
    const store = join(dir, 's5');
    await ctl(['setup', join(dir, 'r1.img'), '--size', '64M', '--cache-key', 'rb', '--store', store]);
    const r2 = join(dir, 'r2.img');
    const bad = await ctl([
      'setup',
      r2,
      '--size',
      '64M',
      '--cache-key',
      'rb',
      '--base',
      base,
      '--build',
      'exit 3',
      '--store',
      store,
    ]);
    expect(bad.out.error.code).toBe('E_BUILD_FAILED');
    expect(existsSync(r2)).toBe(false);
    expect(readdirSync(store).filter((n) => n.endsWith('.json'))).toHaveLength(1);
  });
});
