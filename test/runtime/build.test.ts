// overlayctl build with the real Apptainer (root): the image changes only when the build succeeds.
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireLock, buildInOverlay } from '../../packages/core/src/index';
import { ensureBaseImage } from '../helpers/base-image';
import { hasApptainer, isRoot, sha256File } from '../helpers/tools';
import { lastJson, overlayctl } from './helpers';

describe.skipIf(!hasApptainer() || !isRoot())('overlayctl build (root)', () => {
  let dir: string;
  let base: string;
  beforeAll(async () => {
    base = await ensureBaseImage();
    dir = await mkdtemp('/tmp/overlay-build-');
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const files = async () => (await readdir(dir)).sort();

  it('creates a missing image with the create options, builds, checks', async () => {
    const img = join(dir, 'new.img');
    const r = await overlayctl([
      'build',
      img,
      '--base',
      base,
      '--size',
      '128M',
      '--profile',
      'small',
      '--create-dir',
      '/opt/env',
      '--json',
      '--run',
      'echo "$0" > /opt/env/shell; seq 1 200 | while read i; do echo $i > /opt/env/f$i; done',
    ]);
    expect(r.exitCode, r.stderr).toBe(0);
    const out = lastJson(r.stdout) as {
      created: boolean;
      check: { status: string };
      info: Record<string, number>;
    };
    expect(out).toMatchObject({ exitCode: 0, created: true, fakeroot: false, check: { status: 'clean' } });
    expect(out.info).toMatchObject({ sizeBytes: 128 * 1024 * 1024, inodeRatio: 4096 });
    expect(out.info.inodesUsed).toBeGreaterThan(200);
    const cat = await overlayctl([
      'exec',
      img,
      '--ro',
      '--base',
      base,
      '--',
      'cat',
      '/opt/env/f200',
      '/opt/env/shell',
    ]);
    expect(cat.stdout).toBe('200\n/bin/sh');
    expect(await files()).toEqual(['new.img']);
  });

  it('a failed build leaves an existing image byte-identical (and no temp files)', async () => {
    const img = join(dir, 'keep.img');
    await overlayctl(['create', img, '--size', '64']);
    await overlayctl(['exec', img, '--base', base, '--', 'sh', '-c', 'echo v1 > /opt/v']);
    const before = await sha256File(img);
    const r = await overlayctl([
      'build',
      img,
      '--base',
      base,
      '--run',
      'echo v2 > /opt/v; rm -rf /etc/lowerdir; exit 5',
    ]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/^E_BUILD_FAILED: the build exited 5; .* was left as it was/m);
    expect(await sha256File(img)).toBe(before);
    expect((await files()).filter((f) => f.includes('keep'))).toEqual(['keep.img']);
    // and a successful one replaces it
    const ok = await overlayctl(['build', img, '--base', base, '--run', 'echo v2 > /opt/v']);
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(await sha256File(img)).not.toBe(before);
    const v = await overlayctl(['exec', img, '--ro', '--base', base, '--', 'cat', '/opt/v']);
    expect(v.stdout).toContain('v2');
  });

  it('a missing image whose build fails leaves no file', async () => {
    const img = join(dir, 'never.img');
    const r = await overlayctl(['build', img, '--base', base, '--json', '--run', 'false']);
    expect(r.exitCode).toBe(1);
    expect(lastJson(r.stdout)).toMatchObject({ error: { code: 'E_BUILD_FAILED' } });
    expect((await files()).filter((f) => f.includes('never'))).toEqual([]);
  });

  it('--script runs a host file with /bin/sh -e, bound read-only, leaving no trace in the image', async () => {
    const img = join(dir, 'script.img');
    const script = join(dir, 'build.sh');
    await writeFile(script, 'echo one > /opt/one\necho "$0" > /opt/how\n');
    const r = await overlayctl(['build', img, '--base', base, '--size', '64', '--script', script]);
    expect(r.exitCode, r.stderr).toBe(0);
    const out = await overlayctl(['exec', img, '--ro', '--base', base, '--', 'cat', '/opt/one', '/opt/how']);
    expect(out.stdout).toBe('one\n/.overlayctl/build.sh');
    const ls = await execa('debugfs', ['-R', 'ls /upper', img]);
    expect(ls.stdout).not.toContain('.overlayctl');
    // -e: a failing command in the middle fails the build
    await writeFile(script, 'false\necho reached > /opt/reached\n');
    const before = await sha256File(img);
    const bad = await overlayctl(['build', img, '--base', base, '--script', script]);
    expect(bad.exitCode).toBe(1);
    expect(await sha256File(img)).toBe(before);
  });

  it('refuses to build in an image in use (E_LOCKED), leaving it as it was', async () => {
    const img = join(dir, 'busy.img');
    await overlayctl(['create', img, '--size', '64']);
    const before = await sha256File(img);
    const lock = await acquireLock(img, 'shared');
    try {
      const r = await overlayctl(['build', img, '--base', base, '--run', 'touch /opt/x']);
      expect(r.exitCode).toBe(75);
      expect(r.stderr).toMatch(/^E_LOCKED: /m);
    } finally {
      lock.release();
    }
    expect(await sha256File(img)).toBe(before);
  });

  it('buildInOverlay takes script text (what setup passes) and reports the build', async () => {
    const img = join(dir, 'text.img');
    const lines: string[] = [];
    const r = await buildInOverlay({
      image: img,
      base,
      script: 'echo hello from the build\necho text > /opt/text\n',
      create: {
        sizeBytes: 64 * 1024 * 1024,
        inodeRatio: 16384,
        reservedPercent: 0,
        sparse: true,
        owner: { uid: 0, gid: 0 },
        createDirs: [],
      },
      onProgress: (l) => lines.push(l),
    });
    expect(r).toMatchObject({ exitCode: 0, created: true, check: { status: 'clean' } });
    expect(lines).toContain('hello from the build');
    const out = await overlayctl(['exec', img, '--ro', '--base', base, '--', 'cat', '/opt/text']);
    expect(out.stdout).toContain('text');
  });

  it('validates before touching anything', async () => {
    const before = await files();
    for (const args of [
      ['build', join(dir, 'v.img'), '--base', base],
      ['build', join(dir, 'v.img'), '--base', base, '--run', 'true', '--script', '/etc/hostname'],
      ['build', join(dir, 'v.img'), '--base', base, '--script', join(dir, 'missing.sh')],
      ['build', join(dir, 'v.img'), '--base', join(dir, 'missing.sif'), '--run', 'true'],
      ['build', join(dir, 'v.img'), '--base', base, '--run', 'true', '--size', '10M'],
    ]) {
      const r = await overlayctl(args);
      expect(r.exitCode, args.join(' ')).not.toBe(0);
    }
    expect(await files()).toEqual(before);
  });
});
