import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBaseImage } from '../helpers/base-image';
import { ensureTestUser, runAs } from '../helpers/users';

const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
let dir: string;
let base: string;
const sum = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

async function ctl(args: string[], opts: { env?: Record<string, string> } = {}) {
  const r = await execa(CLI, [...args, '--json'], { reject: false, env: opts.env });
  const lines = r.stdout.trim().split('\n');
  expect(lines, `${args.join(' ')}: ${r.stdout}`).toHaveLength(1);
  return { code: r.exitCode, out: JSON.parse(lines[0]!), stderr: r.stderr };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ov-core-'));
  base = await ensureBaseImage();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('create and info', () => {
  it.each([
    ['small', 4096],
    ['default', 16384],
    ['large', 1048576],
  ])('profile %s gives %i bytes per inode, upper/ + work/, Apptainer-compatible', async (profile, ratio) => {
    const img = join(dir, `p-${profile}.img`);
    const c = await ctl(['create', img, '--size', '256M', '--profile', profile]);
    expect(c.code).toBe(0);
    expect(c.out.inodeRatio).toBe(ratio);
    expect(c.out.format).toBe('ext3');
    expect(c.out.sparse).toBe(true);
    expect(c.out.apptainerCompatible).toBe(true);
    const ls = await execa('debugfs', ['-R', 'ls -p /', img]);
    expect(ls.stdout).toMatch(/\/upper\//);
    expect(ls.stdout).toMatch(/\/work\//);
  });

  it('--allocated really allocates, --fakeroot/--uid set the owner, --create-dir makes owned dirs', async () => {
    const a = await ctl(['create', join(dir, 'alloc.img'), '--size', '64', '--allocated']);
    expect(a.out.sparse).toBe(false);
    expect(a.out.allocatedBytes).toBeGreaterThanOrEqual(64 * 2 ** 20);
    const f = await ctl(['create', join(dir, 'fr.img'), '--size', '64', '--fakeroot']);
    expect(f.out.upper).toEqual({ uid: 0, gid: 0 });
    const u = await ctl([
      'create',
      join(dir, 'u.img'),
      '--size',
      '64',
      '--uid',
      '1234',
      '--gid',
      '99',
      '--create-dir',
      '/opt/env',
    ]);
    expect(u.out.upper).toEqual({ uid: 1234, gid: 99 });
    const st = await execa('debugfs', ['-R', 'stat /upper/opt/env', join(dir, 'u.img')]);
    expect(st.stdout).toMatch(/User:\s+1234\s+Group:\s+99/);
  });

  it('error codes: E_EXISTS, E_INVALID_INPUT, E_NOT_FOUND, E_UNKNOWN_FORMAT, E_NOT_EXT3 (squashfs, ext4, ext2)', async () => {
    const img = join(dir, 'e.img');
    await ctl(['create', img, '--size', '64']);
    const before = sum(img);
    expect((await ctl(['create', img, '--size', '64'])).out.error.code).toBe('E_EXISTS');
    expect((await ctl(['create', join(dir, 'x.img'), '--size', '10'])).out.error.code).toBe(
      'E_INVALID_INPUT',
    );
    expect((await ctl(['create', join(dir, 'x.img'), '--size', '1.3G'])).out.error.code).toBe(
      'E_INVALID_INPUT',
    );
    expect(
      (await ctl(['create', join(dir, 'x.img'), '--size', '64', '--create-dir', 'rel'])).out.error.code,
    ).toBe('E_INVALID_INPUT');
    expect(
      (await ctl(['create', join(dir, 'x.img'), '--size', '64', '--fakeroot', '--uid', '1', '--gid', '1']))
        .out.error.code,
    ).toBe('E_INVALID_INPUT');
    expect(existsSync(join(dir, 'x.img'))).toBe(false);
    expect(sum(img)).toBe(before);
    expect((await ctl(['info', join(dir, 'missing.img')])).out.error.code).toBe('E_NOT_FOUND');
    writeFileSync(join(dir, 'junk.img'), 'not an image');
    expect((await ctl(['info', join(dir, 'junk.img')])).out.error.code).toBe('E_UNKNOWN_FORMAT');
    await execa('mksquashfs', ['/etc/hostname', join(dir, 's.sqf'), '-noappend', '-quiet']);
    await execa('truncate', ['-s', '64M', join(dir, 'e4.img')]);
    await execa('mkfs.ext4', ['-q', join(dir, 'e4.img')]);
    await execa('truncate', ['-s', '64M', join(dir, 'e2.img')]);
    await execa('mkfs.ext2', ['-q', join(dir, 'e2.img')]);
    for (const f of ['s.sqf', 'e4.img', 'e2.img']) {
      const p = join(dir, f);
      const h = sum(p);
      expect((await ctl(['resize', p, '--size', '128'])).out.error.code).toBe('E_NOT_EXT3');
      expect((await ctl(['chown', p, '--fakeroot'])).out.error.code).toBe('E_NOT_EXT3');
      // check examines every ext2/3/4 image (Apptainer compatibility is its own verdict)
      const c = (await ctl(['check', p])).out.images[0];
      if (f === 's.sqf') expect(c.error.code).toBe('E_NOT_EXT3');
      else expect([c.status, c.apptainerCompatible]).toEqual(['clean', false]);
      expect(sum(p)).toBe(h);
    }
    expect((await ctl(['info', join(dir, 'e4.img')])).out.format).toBe('ext4');
    expect((await ctl(['info', join(dir, 's.sqf')])).out.format).toBe('squashfs');
  });

  it('without --json an error is one line starting with its code', async () => {
    const r = await execa(CLI, ['info', join(dir, 'missing.img')], { reject: false });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^E_NOT_FOUND: /);
  });

  it('E_TOOL_MISSING names the package', async () => {
    const { runTool } = await import('../../packages/core/src/tools/run');
    await expect(runTool('no-such-tool-xyz', [])).rejects.toMatchObject({ code: 'E_TOOL_MISSING' });
  });
});

describe('resize, check, chown, lock', () => {
  it('grows and shrinks keeping content; refuses to shrink below use (file byte-identical)', async () => {
    const img = join(dir, 'r.img');
    await ctl(['create', img, '--size', '128']);
    await execa('dd', ['if=/dev/urandom', `of=${join(dir, 'rand')}`, 'bs=1M', 'count=70']);
    await execa('debugfs', ['-w', '-R', `write ${join(dir, 'rand')} /upper/rand`, img]);
    expect((await ctl(['resize', img, '--size', '256'])).out.sizeBytes).toBe(256 * 2 ** 20);
    expect((await ctl(['resize', img, '--size', '96'])).out.sizeBytes).toBe(96 * 2 ** 20);
    const before = sum(img);
    const r = await ctl(['resize', img, '--size', '64']);
    expect(r.out.error.code).toBe('E_SHRINK_TOO_SMALL');
    expect(sum(img)).toBe(before);
    const cat = await execa('debugfs', ['-R', 'cat /upper/rand', img], {
      encoding: 'buffer',
      stripFinalNewline: false,
    });
    expect(createHash('sha256').update(cat.stdout).digest('hex')).toBe(sum(join(dir, 'rand')));
    expect((await execa('e2fsck', ['-fn', img], { reject: false })).exitCode).toBe(0);
  });

  it('resize keeps an allocated image allocated', async () => {
    const img = join(dir, 'ra.img');
    await ctl(['create', img, '--size', '64', '--allocated']);
    const r = await ctl(['resize', img, '--size', '96']);
    expect(r.out.sparse).toBe(false);
  });

  it('check reports clean/corrupt without writing; --repair repairs', async () => {
    const img = join(dir, 'c.img');
    await ctl(['create', img, '--size', '64']);
    expect((await ctl(['check', img])).out.images[0].status).toBe('clean');
    await execa('debugfs', ['-w', '-f', '-', img], { input: 'freeb 300 20\n' });
    const before = sum(img);
    const c = await ctl(['check', img]);
    expect(c.code).toBe(1);
    expect(c.out.images[0].status).toBe('corrupt');
    expect(sum(img)).toBe(before);
    const r = await ctl(['check', img, '--repair']);
    expect(r.code).toBe(0);
    expect(r.out.images[0].status).toBe('repaired');
    expect((await ctl(['check', img])).out.images[0].status).toBe('clean');
  });

  it('chown rewrites every inode under upper/ and work/, names with spaces included', async () => {
    const img = join(dir, 'o.img');
    await ctl(['create', img, '--size', '64', '--create-dir', '/opt/a b']);
    await execa('debugfs', ['-w', '-R', 'write /etc/hostname "/upper/opt/a b/f g"', img]);
    const r = await ctl(['chown', img, '--uid', '4242', '--gid', '4343']);
    expect(r.out.upper).toEqual({ uid: 4242, gid: 4343 });
    const st = await execa('debugfs', ['-R', 'stat "/upper/opt/a b/f g"', img]);
    expect(st.stdout).toMatch(/User:\s+4242\s+Group:\s+4343/);
    expect((await ctl(['chown', img])).out.error.code).toBe('E_INVALID_INPUT');
  });

  it('locks exclude Apptainer both ways', async () => {
    const img = join(dir, 'l.img');
    await ctl(['create', img, '--size', '64']);
    // our lock makes Apptainer refuse the image
    const holder = execa(CLI, ['lock', img, '--', 'sleep', '4']);
    await new Promise((r) => setTimeout(r, 1000));
    const a = await execa('apptainer', ['exec', '--overlay', img, base, 'true'], { reject: false });
    expect(a.exitCode).not.toBe(0);
    expect(a.stderr).toMatch(/in use/);
    expect((await ctl(['check', img])).out.images[0].status).toBe('locked');
    await holder;
    // Apptainer's lock makes our writers fail fast
    const app = execa('apptainer', ['exec', '--overlay', img, base, 'sleep', '4'], { reject: false });
    await new Promise((r) => setTimeout(r, 1500));
    expect((await ctl(['resize', img, '--size', '96'])).out.error.code).toBe('E_LOCKED');
    expect((await ctl(['check', img, '--repair'])).out.images[0].status).toBe('locked');
    expect((await ctl(['check', img])).out.images[0].status).toBe('locked');
    await app;
    expect((await ctl(['check', img])).out.images[0].status).toBe('clean');
  });
});

describe('Apptainer interop', () => {
  it('images we create are written and read back through apptainer, as root and as a user', async () => {
    const img = join(dir, 'a.img');
    await ctl(['create', img, '--size', '64']);
    await execa('apptainer', ['exec', '--overlay', img, base, 'sh', '-c', 'echo root-wrote > /opt/x']);
    expect((await execa('apptainer', ['exec', '--overlay', `${img}:ro`, base, 'cat', '/opt/x'])).stdout).toBe(
      'root-wrote',
    );

    const user = await ensureTestUser();
    const udir = mkdtempSync(join(tmpdir(), 'ov-core-user-'));
    await execa('chown', [`${user.uid}:${user.gid}`, udir]);
    const fr = join(udir, 'fr.img');
    expect((await runAs(user, [CLI, 'create', fr, '--size', '64', '--fakeroot'])).exitCode).toBe(0);
    expect(
      (
        await runAs(user, [
          'apptainer',
          'exec',
          '--fakeroot',
          '--overlay',
          fr,
          base,
          'sh',
          '-c',
          'echo u > /opt/u',
        ])
      ).exitCode,
    ).toBe(0);
    expect(
      (await runAs(user, ['apptainer', 'exec', '--fakeroot', '--overlay', fr, base, 'cat', '/opt/u'])).stdout,
    ).toBe('u');
    const own = join(udir, 'own.img');
    expect(
      (await runAs(user, [CLI, 'create', own, '--size', '64', '--create-dir', '/opt/work'])).exitCode,
    ).toBe(0);
    expect(
      (await runAs(user, ['apptainer', 'exec', '--overlay', own, base, 'sh', '-c', 'echo w > /opt/work/w']))
        .exitCode,
    ).toBe(0);
    expect(
      (await runAs(user, ['apptainer', 'exec', '--overlay', `${own}:ro`, base, 'cat', '/opt/work/w'])).stdout,
    ).toBe('w');
    rmSync(udir, { recursive: true, force: true });
  });

  it('images made by `apptainer overlay create` pass every command', async () => {
    const img = join(dir, 'ap.img');
    await execa('apptainer', ['overlay', 'create', '--size', '64', img]);
    const info = await ctl(['info', img]);
    expect(info.out.apptainerCompatible).toBe(true);
    expect((await ctl(['check', img])).out.images[0].status).toBe('clean');
    expect((await ctl(['resize', img, '--size', '128'])).code).toBe(0);
    expect((await ctl(['chown', img, '--fakeroot'])).out.upper).toEqual({ uid: 0, gid: 0 });
    await execa('apptainer', ['exec', '--overlay', img, base, 'sh', '-c', 'echo ok > /opt/y']);
    expect((await execa('apptainer', ['exec', '--overlay', `${img}:ro`, base, 'cat', '/opt/y'])).stdout).toBe(
      'ok',
    );
  });
});
