import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';

/**
 * A real full disk: a small ext4 filesystem on a loop device, filled to the brim. Every operation
 * that needs space must fail with a clear error and lose nothing.
 */
const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
const isRoot = process.getuid?.() === 0;
let root: string;
let mnt: string;
const sum = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

async function cli(args: string[]) {
  const r = await execa(CLI, [...args, '--json'], { reject: false });
  return { exitCode: r.exitCode, out: JSON.parse(r.stdout.trim().split('\n').at(-1) || '{}') };
}

/** Fill the filesystem to the last block: dd writes zeros until ENOSPC. */
async function fill() {
  await execa('dd', ['if=/dev/zero', `of=${join(mnt, `filler-${Date.now()}`)}`, 'bs=64k'], { reject: false });
  await execa('sync', [], { reject: false });
}

const temps = () => readdirSync(mnt, { recursive: true }).filter((n) => String(n).includes('.ovtmp-'));

describe.runIf(isRoot)('full disk', () => {
  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'ov-full-'));
    mnt = join(root, 'mnt');
    mkdirSync(mnt);
    await execa('truncate', ['-s', '160M', join(root, 'fs.img')]);
    await execa('mkfs.ext4', ['-q', '-F', '-m', '0', join(root, 'fs.img')]); // no root reserve: full is full
    await execa('mount', ['-o', 'loop', join(root, 'fs.img'), mnt]);
    await execa(CLI, ['create', join(mnt, 'env.img'), '--size', '64']);
    await execa('debugfs', ['-w', '-R', 'write /etc/services /upper/data', join(mnt, 'env.img')]);
    // incompressible content, so a committed layer needs more room than is left
    await execa('dd', ['if=/dev/urandom', `of=${join(root, 'rand')}`, 'bs=1M', 'count=4']);
    await execa('debugfs', ['-w', '-R', `write ${join(root, 'rand')} /upper/rand`, join(mnt, 'env.img')]);
    // a repairable inconsistency for check --repair
    await execa(CLI, ['create', join(mnt, 'bad.img'), '--size', '64']);
    await execa('debugfs', ['-w', '-f', '-', join(mnt, 'bad.img')], {
      input: `write ${join(root, 'rand')} /upper/rand\nwrite /etc/services /upper/data\nfreei /upper/data\n`,
    });
    mkdirSync(join(mnt, 'store'));
    await fill();
  });
  afterAll(async () => {
    await execa('umount', [mnt], { reject: false });
    rmSync(root, { recursive: true, force: true });
  });

  beforeEach(fill);

  it('create fails with E_NO_SPACE and leaves nothing', async () => {
    const r = await cli(['create', join(mnt, 'new.img'), '--size', '256', '--allocated']);
    expect(r.exitCode).not.toBe(0);
    expect(r.out.error.code).toBe('E_NO_SPACE');
    expect(readdirSync(mnt)).not.toContain('new.img');
    expect(temps()).toEqual([]);
  });

  it('resize fails clearly and the image is byte-identical', async () => {
    const before = sum(join(mnt, 'env.img'));
    const r = await cli(['resize', join(mnt, 'env.img'), '--size', '512']);
    expect(r.exitCode, JSON.stringify(r.out)).not.toBe(0);
    expect(r.out.error.code).toBe('E_NO_SPACE');
    expect(sum(join(mnt, 'env.img'))).toBe(before);
    expect(temps()).toEqual([]);
  });

  it('check --repair reports an error and leaves the image as it was', async () => {
    const before = sum(join(mnt, 'bad.img'));
    const r = await cli(['check', join(mnt, 'bad.img'), '--repair']);
    expect(r.exitCode, JSON.stringify(r.out)).not.toBe(0);
    expect(['error', 'corrupt']).toContain(r.out.images[0].status);
    expect(sum(join(mnt, 'bad.img'))).toBe(before);
    expect(temps()).toEqual([]);
  });

  it('commit fails clearly, no partial layer, image untouched', async () => {
    const withRand = sum(join(mnt, 'env.img'));
    const r = await cli(['commit', join(mnt, 'env.img'), '--output', join(mnt, 'layer.sqf')]);
    expect(r.exitCode, JSON.stringify(r.out)).not.toBe(0);
    expect(r.out.error.code).toBe('E_NO_SPACE');
    expect(readdirSync(mnt)).not.toContain('layer.sqf');
    expect(sum(join(mnt, 'env.img'))).toBe(withRand);
    expect(temps()).toEqual([]);
  });

  it('cache restore onto a full disk fails with E_NO_SPACE and leaves the old image', async () => {
    // the entry lives outside the full filesystem; the target is on it
    const store = join(root, 'store-outside');
    const source = join(root, 'source.img');
    await execa(CLI, ['create', source, '--size', '64']);
    await execa('debugfs', ['-w', '-R', `write ${join(root, 'rand')} /upper/rand`, source]);
    await execa(CLI, ['cache', 'save', source, '--key', 'big', '--store', store]);
    await fill();
    const before = sum(join(mnt, 'env.img'));
    const r = await cli([
      'cache',
      'restore',
      join(mnt, 'env.img'),
      '--key',
      'big',
      '--store',
      store,
      '--force',
    ]);
    expect(r.exitCode, JSON.stringify(r.out)).not.toBe(0);
    expect(r.out.error.code).toBe('E_NO_SPACE');
    expect(sum(join(mnt, 'env.img'))).toBe(before);
    expect(temps()).toEqual([]);
  });

  it('cache save into a full store fails clearly and publishes no entry', async () => {
    const r = await cli(['cache', 'save', join(mnt, 'env.img'), '--key', 'k', '--store', join(mnt, 'store')]);
    expect(r.exitCode).not.toBe(0);
    expect(r.out.error.code).toMatch(/^E_(NO_SPACE|CACHE)$/);
    const probe = join(root, 'probe.img');
    const restored = await cli(['cache', 'restore', probe, '--key', 'k', '--store', join(mnt, 'store')]);
    expect(restored.out.outcome).toBe('miss');
    expect(temps()).toEqual([]);
  });
});
