// Damage in real overlays made by overlayctl create: a zeroed primary superblock (the backups
// hold everything: check says where, repair restores it, files intact) and a truncated file
// (every command that opens the image says so, with both sizes; nothing is touched).
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBaseImage } from '../helpers/base-image';

const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
let dir: string;
let base: string;
const sum = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

async function ctl(args: string[], env?: Record<string, string>) {
  const dash = args.indexOf('--');
  const argv = dash < 0 ? [...args, '--json'] : [...args.slice(0, dash), '--json', ...args.slice(dash)];
  const r = await execa(CLI, argv, { reject: false, env });
  const lines = r.stdout.trim().split('\n');
  expect(lines, `${args.join(' ')}: ${r.stdout} ${r.stderr}`).toHaveLength(1);
  return { code: r.exitCode, out: JSON.parse(lines[0]!), stderr: r.stderr };
}

/** An overlay holding two files; returns their contents by path inside the image. */
async function overlayWithFiles(img: string, size = '64'): Promise<Record<string, Buffer>> {
  expect((await ctl(['create', img, '--size', size])).code).toBe(0);
  const files: Record<string, Buffer> = {
    '/upper/data.bin': Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7) % 251)),
    '/upper/notes.txt': Buffer.from('kept across the repair\n'),
  };
  for (const [p, content] of Object.entries(files)) {
    const src = join(dir, `src-${p.replace(/\W/g, '_')}`);
    writeFileSync(src, content);
    await execa('debugfs', ['-w', '-R', `write ${src} ${p}`, img]);
  }
  return files;
}

async function catInImage(img: string, p: string): Promise<Buffer> {
  const r = await execa('debugfs', ['-R', `cat ${p}`, img], { encoding: 'buffer', stripFinalNewline: false });
  return Buffer.from(r.stdout);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ov-damaged-'));
  base = await ensureBaseImage();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('zeroed primary superblock', () => {
  it('info and check name the backup superblock; check --repair restores it, files intact', async () => {
    const img = join(dir, 'zero.img');
    // 256 MiB: two block groups of 128 MiB, so mke2fs wrote a backup superblock (a smaller
    // image has one group and no backup: see docs/reliability.md)
    const files = await overlayWithFiles(img, '256');
    // the reproduction: dd if=/dev/zero of=env.img bs=1024 seek=1 count=1 conv=notrunc
    await execa('dd', ['if=/dev/zero', `of=${img}`, 'bs=1024', 'seek=1', 'count=1', 'conv=notrunc']);
    const damaged = sum(img);

    const info = await ctl(['info', img]);
    expect(info.code).toBe(0);
    expect(info.out.format).toBe('ext3');
    expect(info.out.clean).toBe(false);
    expect(info.out.superblock.primary).toBe('damaged');
    expect(info.out.superblock.backup.block).toBeGreaterThan(0);
    expect(info.out.apptainerCompatible).toBe(false);
    expect(info.out.apptainerProblems.join(' ')).toMatch(/primary superblock is damaged/);
    expect((await execa(CLI, ['info', img])).stdout).toMatch(
      new RegExp(
        `PRIMARY SUPERBLOCK DAMAGED: read from the backup at block ${info.out.superblock.backup.block}`,
      ),
    );

    const check = await ctl(['check', img]);
    expect(check.code).toBe(1);
    const r = check.out.images[0];
    expect(r.status).toBe('corrupt');
    expect(r.superblock).toEqual(info.out.superblock);
    expect(r.problems[0]).toMatch(
      new RegExp(`primary superblock is damaged; a backup superblock at block ${r.superblock.backup.block}`),
    );
    expect(sum(img)).toBe(damaged); // read-only

    // a writer refuses it with the way out, instead of "unknown format"
    const resize = await ctl(['resize', img, '--size', '96']);
    expect(resize.out.error.code).toBe('E_INTEGRITY');
    expect(resize.out.error.hint).toMatch(/check --repair/);
    expect(sum(img)).toBe(damaged);

    const repair = await ctl(['check', img, '--repair']);
    expect(repair.code).toBe(0);
    expect(repair.out.images[0].status).toBe('repaired');
    expect(repair.out.images[0].apptainerCompatible).toBe(true);
    expect((await execa('e2fsck', ['-fn', img], { reject: false })).exitCode).toBe(0);
    for (const [p, content] of Object.entries(files))
      expect((await catInImage(img, p)).equals(content)).toBe(true);
    const after = await ctl(['info', img]);
    expect(after.out.clean).toBe(true);
    expect(after.out.superblock).toEqual({ primary: 'ok', backup: null });
    expect((await ctl(['check', img])).out.images[0].status).toBe('clean');
  });
});

describe('truncated image', () => {
  it('every command that opens it reports both sizes and touches nothing', async () => {
    const img = join(dir, 'trunc.img');
    await overlayWithFiles(img);
    const full = statSync(img).size;
    const short = full - 8 * 2 ** 20;
    await execa('truncate', ['-s', String(short), img]);
    const before = sum(img);
    const sizes = new RegExp(`file is ${short} bytes .* filesystem says ${full} bytes`);

    const info = await ctl(['info', img]);
    expect(info.code).toBe(0);
    expect(info.out.clean).toBe(false);
    expect(info.out.truncated).toEqual({
      fileBytes: short,
      filesystemBytes: full,
      missingBytes: full - short,
    });
    expect(info.out.apptainerCompatible).toBe(false);
    expect(info.out.apptainerProblems).toEqual(['the file is truncated']);
    expect((await execa(CLI, ['info', img])).stdout).toMatch(new RegExp(`TRUNCATED: .*${sizes.source}`));

    for (const args of [
      ['check', img],
      ['check', img, '--repair'],
    ]) {
      const c = await ctl(args);
      expect(c.code).toBe(1);
      expect(c.out.images[0].status).toBe('corrupt');
      expect(c.out.images[0].truncated).toEqual(info.out.truncated);
      expect(c.out.images[0].problems[0]).toMatch(sizes);
    }

    const store = join(dir, 'store');
    for (const args of [
      ['resize', img, '--size', '128'],
      ['exec', img, '--base', base, '--', 'true'],
      ['exec', img, '--ro', '--base', base, '--', 'true'],
      ['cache', 'save', img, '--key', 'k1', '--store', store],
    ]) {
      const r = await ctl(args);
      expect(r.code, args.join(' ')).not.toBe(0);
      expect(r.out.error.code, args.join(' ')).toBe('E_TRUNCATED');
      expect(r.out.error.message).toMatch(sizes);
    }
    expect(sum(img)).toBe(before);
  });

  it('a truncated SquashFS layer is refused by exec with both sizes', async () => {
    const img = join(dir, 'top.img');
    await ctl(['create', img, '--size', '64']);
    const layer = join(dir, 'layer.sqf');
    await execa('mksquashfs', ['/usr/share/common-licenses', layer, '-noappend', '-quiet', '-no-progress']);
    const full = statSync(layer).size;
    await execa('truncate', ['-s', String(Math.floor(full / 2)), layer]);
    const info = await ctl(['info', layer]);
    expect(info.out.truncated.fileBytes).toBe(Math.floor(full / 2));
    const r = await ctl(['exec', img, '--layer', layer, '--base', base, '--', 'true']);
    expect(r.out.error.code).toBe('E_TRUNCATED');
  });
});

describe('filesystem verdict and Apptainer verdict are separate', () => {
  it('ext4 and ext2 are examined (clean), not usable by Apptainer; --require-apptainer makes that fail', async () => {
    for (const [mkfs, reason] of [
      ['mkfs.ext4', /incompatible features|read-only-compatible/],
      ['mkfs.ext2', /no journal/],
    ] as const) {
      const img = join(dir, `${mkfs}.img`);
      await execa('truncate', ['-s', '64M', img]);
      await execa(mkfs, ['-q', img]);
      const before = sum(img);
      const c = await ctl(['check', img]);
      expect(c.code).toBe(0);
      const r = c.out.images[0];
      expect(r.status).toBe('clean');
      expect(r.apptainerCompatible).toBe(false);
      expect(r.apptainerProblems.join('; ')).toMatch(reason);
      expect(r.apptainerProblems.join('; ')).toMatch(/no upper\/ directory/);
      const strict = await ctl(['check', img, '--require-apptainer']);
      expect(strict.code).toBe(1);
      expect(strict.out.images[0].status).toBe('clean');
      expect(sum(img)).toBe(before);
    }
  });

  it('a damaged ext4 image is corrupt (not an error), and repaired', async () => {
    const img = join(dir, 'e4-damaged.img');
    await execa('truncate', ['-s', '64M', img]);
    await execa('mkfs.ext4', ['-q', img]);
    await execa('debugfs', ['-w', '-f', '-', img], { input: 'freeb 3000 20\n' });
    const c = await ctl(['check', img]);
    expect(c.out.images[0].status).toBe('corrupt');
    expect(c.out.images[0].problems.join('\n')).toMatch(/Block bitmap differences.*\(repair: fix/);
    expect((await ctl(['check', img, '--repair'])).out.images[0].status).toBe('repaired');
    expect((await execa('e2fsck', ['-fn', img], { reject: false })).exitCode).toBe(0);
  });
});

describe('damage e2fsck cannot get past', () => {
  it('garbage group descriptors (one group, no backup): corrupt, not error; repair refuses, untouched', async () => {
    const img = join(dir, 'gd.img');
    await ctl(['create', img, '--size', '64']);
    const buf = readFileSync(img);
    buf.fill(0xff, 4096, 8192); // block 1: the group descriptors
    writeFileSync(img, buf);
    const before = sum(img);
    const c = await ctl(['check', img]);
    expect(c.code).toBe(1);
    expect(c.out.images[0].status).toBe('corrupt');
    expect(c.out.images[0].problems.join('\n')).toMatch(/e2fsck cannot repair this filesystem/);
    const r = await ctl(['check', img, '--repair']);
    expect(r.out.images[0].status).toBe('corrupt');
    expect(r.out.images[0].error.code).toBe('E_INTEGRITY');
    expect(sum(img)).toBe(before);
  });
});

describe('bounded', () => {
  it('an e2fsck that never finishes is killed at --timeout: error E_TIMEOUT, image untouched', async () => {
    const img = join(dir, 'hang.img');
    await ctl(['create', img, '--size', '64']);
    const before = sum(img);
    // the seam: an e2fsck that hangs (as the real one does on some damaged images: see corpus.test.ts)
    const bin = join(dir, 'hang-bin');
    mkdirSync(bin);
    writeFileSync(join(bin, 'e2fsck'), '#!/bin/sh\nexec sleep 600\n', { mode: 0o755 });
    const c = await ctl(['check', img, '--timeout', '2'], { PATH: `${bin}:${process.env.PATH}` });
    expect(c.code).toBe(1);
    expect(c.out.images[0].status).toBe('error');
    expect(c.out.images[0].error.code).toBe('E_TIMEOUT');
    expect(c.out.images[0].error.message).toMatch(/2s time bound.*not modified/);
    expect(sum(img)).toBe(before);
  });
});

describe('no litter', () => {
  it("a killed check's scratch copy in $TMPDIR is removed by the next check", async () => {
    const img = join(dir, 'litter.img');
    await ctl(['create', img, '--size', '64']);
    const tmp = join(dir, 'tmpdir');
    mkdirSync(tmp);
    const dead = (await execa('sh', ['-c', 'echo $$'])).stdout.trim(); // a pid that has exited
    const host = hostname().replace(/[^A-Za-z0-9_.]/g, '_');
    const stale = join(tmp, `overlay-check-${dead}-${host}-AbC123`);
    const foreign = join(tmp, `overlay-check-${dead}-other_host-AbC123`);
    for (const d of [stale, foreign]) {
      mkdirSync(d);
      writeFileSync(join(d, 'copy.img'), 'left by a killed check');
    }
    const c = await ctl(['check', img], { TMPDIR: tmp });
    expect(c.out.images[0].status).toBe('clean');
    expect(readdirSync(tmp).filter((n) => n.startsWith('overlay-'))).toEqual([basename(foreign)]); // another host's is not ours to judge
  });
});
