import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { imageContentDigest, packedRuns } from '../../packages/core/src/cache/pack';
import { dataRuns } from '../../packages/core/src/fs/sparse';

/**
 * A deleted file's bytes stay in the image's free blocks: commit --reset must punch them out (a
 * sparse image again) and cache save must carry only the blocks the filesystem uses.
 */
const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
const MiB = 1024 * 1024;
let dir: string;
let blob: string;

async function ctl(args: string[]) {
  const r = await execa(CLI, [...args, '--json'], { reject: false });
  expect(r.exitCode, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}
const allocated = (p: string) => statSync(p).blocks * 512;
const mib = (n: number) => `${(n / MiB).toFixed(2)} MiB`;

/** An overlay holding 40 MiB of incompressible data in upper/, and a small file next to it. */
async function imageWithBlob(name: string): Promise<string> {
  const img = join(dir, name);
  await ctl(['create', img, '--size', '256']);
  await execa('debugfs', ['-w', '-f', '-', img], {
    input: `mkdir /upper/opt\nwrite ${blob} /upper/opt/blob\nwrite /etc/hostname /upper/opt/small\n`,
  });
  return img;
}

/** The archive a save wrote into a fresh store, and its size. */
async function save(img: string, key: string) {
  const store = join(dir, `store-${key}`);
  await ctl(['cache', 'save', img, '--key', key, '--store', store]);
  const archive = readdirSync(store).find((n) => n.endsWith('.ovc.zst'));
  return { store, bytes: statSync(join(store, archive!)).size };
}

async function bytesOf(runs: AsyncIterable<{ data: Buffer }>) {
  let n = 0;
  for await (const r of runs) n += r.data.length;
  return n;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ov-reset-'));
  blob = join(dir, 'blob');
  await execa('dd', ['if=/dev/urandom', `of=${blob}`, 'bs=1M', 'count=40']);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('commit --reset frees the space', () => {
  it('leaves a sparse image, and the cache archive carries none of the deleted bytes', async () => {
    const img = await imageWithBlob('reset.img');
    const before = allocated(img);
    expect(before).toBeGreaterThan(40 * MiB);
    const layer = join(dir, 'reset.sqf');
    await ctl(['commit', img, '--output', layer, '--reset']);
    const after = allocated(img);
    console.log(
      `reset: image allocated ${mib(before)} before, ${mib(after)} after (${(before / after).toFixed(0)}x)`,
    );
    expect(after).toBeLessThan(4 * MiB);
    expect((await execa('e2fsck', ['-fn', img], { reject: false })).exitCode).toBe(0);
    expect((await execa('debugfs', ['-R', 'ls /upper', img])).stdout).not.toMatch(/opt/);

    const { store, bytes } = await save(img, 'reset');
    console.log(`reset: cache archive ${mib(bytes)}`);
    expect(bytes).toBeLessThan(2 * MiB);
    const out = join(dir, 'reset-restored.img');
    expect((await ctl(['cache', 'restore', out, '--key', 'reset', '--store', store])).outcome).toBe('hit');
    expect((await execa('e2fsck', ['-fn', out], { reject: false })).exitCode).toBe(0);
  });
});

describe('cache save carries only blocks in use', () => {
  it('a file deleted in the image (bytes left in free blocks) is not packed; restore is verified and intact', async () => {
    const img = await imageWithBlob('deleted.img');
    await execa('debugfs', ['-w', '-R', 'rm /upper/opt/blob', img]);
    // the deleted bytes are still in the file: a reader of every data extent would carry them
    const everyExtent = await bytesOf(dataRuns(img));
    const inUse = await bytesOf(packedRuns(img));
    expect(everyExtent).toBeGreaterThan(40 * MiB);
    expect(inUse).toBeLessThan(2 * MiB);

    const { store, bytes } = await save(img, 'deleted');
    console.log(
      `deleted file: non-zero data extents ${mib(everyExtent)}, in use ${mib(inUse)} (${(everyExtent / inUse).toFixed(0)}x less read); archive ${mib(bytes)}`,
    );
    expect(bytes).toBeLessThan(2 * MiB);

    const out = join(dir, 'deleted-restored.img');
    const r = await ctl(['cache', 'restore', out, '--key', 'deleted', '--store', store]);
    expect(r.outcome).toBe('hit');
    expect((await execa('e2fsck', ['-fn', out], { reject: false })).exitCode).toBe(0);
    expect((await execa('debugfs', ['-R', 'cat /upper/opt/small', out])).stdout).toBe(
      (await execa('cat', ['/etc/hostname'])).stdout,
    );
    // the same digest for the original and its restore: "unchanged" saves stay a no-op
    expect(await imageContentDigest(out)).toBe(await imageContentDigest(img));
    expect((await ctl(['cache', 'save', out, '--key', 'deleted', '--store', store])).reason).toBe(
      'unchanged',
    );
    // another key is another entry: saved, whatever the digest
    expect((await ctl(['cache', 'save', out, '--key', 'other', '--store', store])).saved).toBe(true);
  });

  it('an image whose journal still holds writes is packed whole (its bitmaps may lag)', async () => {
    const img = await imageWithBlob('recovery.img');
    await execa('debugfs', ['-w', '-R', 'rm /upper/opt/blob', img]);
    await execa('debugfs', ['-w', '-R', 'feature needs_recovery', img]);
    expect(await bytesOf(packedRuns(img))).toBe(await bytesOf(dataRuns(img)));
  });
});
