// overlayctl exec with the real Apptainer, as root: persistence, :ro, exit codes, env/binds/pwd,
// layer stacking, fakeroot choice, locks and a missing runtime.
import { accessSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  acquireLock,
  chooseFakeroot,
  createImage,
  diagnoseRuntimeFailure,
  findRuntime,
  isOverlayError,
  PROFILES,
  runInContainer,
} from '../../packages/core/src/index';
import { ensureBaseImage } from '../helpers/base-image';
import { apptainerCommand, hasApptainer, isRoot } from '../helpers/tools';
import { lastJson, makeLayer, overlayctl } from './helpers';

async function newImage(path: string, owner = { uid: 0, gid: 0 }): Promise<string> {
  await createImage({
    path,
    sizeBytes: 64 * 1024 * 1024,
    inodeRatio: PROFILES.default.inodeRatio,
    reservedPercent: 0,
    sparse: true,
    owner,
    createDirs: [],
    force: false,
  });
  return path;
}

describe.skipIf(!hasApptainer() || !isRoot())('overlayctl exec (root)', () => {
  let dir: string;
  let base: string;
  beforeAll(async () => {
    base = await ensureBaseImage();
    dir = await mkdtemp('/tmp/overlay-runtime-');
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes in one exec and reads back in the next', async () => {
    const img = await newImage(join(dir, 'rw.img'));
    const w = await overlayctl(['exec', img, '--base', base, '--', 'sh', '-c', 'echo persisted > /opt/p']);
    expect(w.exitCode, w.stderr).toBe(0);
    const r = await overlayctl(['exec', img, '--base', base, '--', 'cat', '/opt/p', '/opt/lower/file.txt']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toBe('persisted\nlower file');
    const dbg = await execa('debugfs', ['-R', 'cat /upper/opt/p', img]);
    expect(dbg.stdout.trim()).toBe('persisted');
  });

  it('--ro reads but refuses writes, and two readers may share the image', async () => {
    const img = await newImage(join(dir, 'ro.img'));
    await overlayctl(['exec', img, '--base', base, '--', 'sh', '-c', 'echo keep > /opt/k']);
    const w = await overlayctl(['exec', img, '--ro', '--base', base, '--', 'sh', '-c', 'echo no > /opt/k']);
    expect(w.exitCode).not.toBe(0);
    expect(w.stderr).toMatch(/Read-only file system/);
    const reader = execa('apptainer', ['exec', '--overlay', `${img}:ro`, base, 'sleep', '3']);
    await new Promise((r) => setTimeout(r, 1000));
    const r = await overlayctl(['exec', img, '--ro', '--base', base, '--', 'cat', '/opt/k']);
    await reader;
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toContain('keep');
  });

  it('propagates the exit status of the command (CLI and core)', async () => {
    const img = await newImage(join(dir, 'exit.img'));
    for (const code of [0, 1, 7, 42, 255]) {
      const r = await overlayctl(['exec', img, '--base', base, '--', 'sh', '-c', `exit ${code}`]);
      expect(r.exitCode, r.stderr).toBe(code);
    }
    const res = await runInContainer({
      image: img,
      base,
      command: ['sh', '-c', 'exit 9'],
      stdout: 'capture',
    });
    expect(res.exitCode).toBe(9);
    const json = await overlayctl(['exec', img, '--base', base, '--json', '--', 'sh', '-c', 'exit 5']);
    expect(json.exitCode).toBe(5);
    expect(lastJson(json.stdout)).toMatchObject({ exitCode: 5, fakeroot: false });
  });

  it('passes environment variables, binds and the working directory', async () => {
    const img = await newImage(join(dir, 'env.img'));
    const data = join(dir, 'data');
    await mkdir(data);
    await writeFile(join(data, 'in.txt'), 'from the host\n');
    const r = await overlayctl([
      'exec',
      img,
      '--base',
      base,
      '--env',
      'GREETING=hello world',
      '--env',
      'LIST=a,b,c',
      '--bind',
      `${data}:/mnt/data:ro`,
      '--pwd',
      '/mnt/data',
      '--',
      'sh',
      '-c',
      'echo "$GREETING|$LIST|$(pwd)|$(cat in.txt)"; touch /mnt/data/x 2>/dev/null || echo bind-ro',
    ]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toContain('hello world|a,b,c|/mnt/data|from the host\nbind-ro');
  });

  it('stacks layers: later --layer over earlier, the overlay on top of all', async () => {
    const img = await newImage(join(dir, 'stack.img'));
    const a = await makeLayer(join(dir, 'a.sqf'), { '/opt/who': 'A\n', '/opt/only-a': 'a\n' });
    const b = await makeLayer(join(dir, 'b.sqf'), { '/opt/who': 'B\n', '/opt/lower/file.txt': 'B file\n' });
    const cat = ['--', 'sh', '-c', 'echo $(cat /opt/who /opt/only-a /opt/lower/file.txt)'];
    const ab = await overlayctl(['exec', img, '--base', base, '--layer', a, '--layer', b, ...cat]);
    expect(ab.stdout.trim(), ab.stderr).toBe('B a B file');
    const ba = await overlayctl(['exec', img, '--base', base, '--layer', b, '--layer', a, ...cat]);
    expect(ba.stdout.trim(), ba.stderr).toBe('A a B file');
    // a write through the stack lands in the overlay and covers every layer
    const w = await overlayctl([
      'exec',
      img,
      '--base',
      base,
      '--layer',
      a,
      '--layer',
      b,
      '--',
      'sh',
      '-c',
      'echo W > /opt/who',
    ]);
    expect(w.exitCode, w.stderr).toBe(0);
    for (const ro of [[], ['--ro']]) {
      const r = await overlayctl(['exec', img, ...ro, '--base', base, '--layer', a, '--layer', b, ...cat]);
      expect(r.stdout.trim(), r.stderr).toBe('W a B file');
    }
  });

  it('chooses --fakeroot from the owner of upper/ (condatainer rule)', async () => {
    const rootImg = await newImage(join(dir, 'own-root.img'));
    const userImg = await newImage(join(dir, 'own-user.img'), { uid: 1234, gid: 1234 });
    // as root: never needed
    expect((await chooseFakeroot(rootImg)).fakeroot).toBe(false);
    expect((await chooseFakeroot(userImg)).fakeroot).toBe(false);
    // for an unprivileged caller: needed unless upper/ is the caller's own
    expect(await chooseFakeroot(rootImg, { uid: 1234 })).toEqual({ fakeroot: true, upperUid: 0 });
    expect(await chooseFakeroot(userImg, { uid: 1234 })).toEqual({ fakeroot: false, upperUid: 1234 });
    expect(await chooseFakeroot(userImg, { uid: 1235 })).toEqual({ fakeroot: true, upperUid: 1234 });
    // read-only mounts never need it
    expect((await chooseFakeroot(rootImg, { uid: 1234, ro: true })).fakeroot).toBe(false);
    // forced either way from the CLI
    const forced = await overlayctl(['exec', rootImg, '--base', base, '--fakeroot', '--json', '--', 'true']);
    expect(lastJson(forced.stdout), forced.stderr).toMatchObject({ exitCode: 0, fakeroot: true });
    const auto = await overlayctl(['exec', rootImg, '--base', base, '--json', '--', 'true']);
    expect(lastJson(auto.stdout), auto.stderr).toMatchObject({ exitCode: 0, fakeroot: false });
  });

  it('gives E_LOCKED for an image in use (by overlayctl or by Apptainer)', async () => {
    const img = await newImage(join(dir, 'busy.img'));
    const lock = await acquireLock(img, 'exclusive');
    try {
      const r = await overlayctl(['exec', img, '--base', base, '--ro', '--', 'true']);
      expect(r.exitCode).toBe(125);
      expect(r.stderr).toMatch(/^E_LOCKED: /m);
    } finally {
      lock.release();
    }
    const writer = execa('apptainer', ['exec', '--overlay', img, base, 'sleep', '4']);
    try {
      await new Promise((r) => setTimeout(r, 1500));
      const r = await overlayctl(['exec', img, '--base', base, '--json', '--', 'true']);
      expect(r.exitCode).toBe(125);
      expect(lastJson(r.stdout)).toMatchObject({ error: { code: 'E_LOCKED' } });
      // Apptainer's own refusal, when it gets that far, maps to the same code
      const raw = await execa('apptainer', ['exec', '--overlay', img, base, 'true'], { reject: false });
      expect(raw.exitCode).toBe(255);
      expect(diagnoseRuntimeFailure(raw.stderr, { image: img })?.code).toBe('E_LOCKED');
    } finally {
      await writer;
    }
  });

  it('exec --wait waits while Apptainer holds the image, then runs', async () => {
    const img = await newImage(join(dir, 'wait.img'));
    const writer = execa('apptainer', ['exec', '--overlay', img, base, 'sleep', '3']);
    try {
      await new Promise((r) => setTimeout(r, 1500));
      const r = await overlayctl(['exec', img, '--base', base, '--wait', '120', '--json', '--', 'true']);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ exitCode: 0 });
    } finally {
      await writer;
    }
  });

  it('exec --json: stdout is exactly one object; the command output goes to stderr unchanged', async () => {
    const img = await newImage(join(dir, 'json.img'));
    const r = await overlayctl([
      'exec',
      img,
      '--base',
      base,
      '--json',
      '--',
      'sh',
      '-c',
      'printf "a b\\n\\n  c"; echo err >&2; exit 3',
    ]);
    expect(r.exitCode).toBe(3);
    expect(JSON.parse(r.stdout)).toMatchObject({ exitCode: 3 });
    expect(r.stderr).toContain('a b\n\n  c');
    expect(r.stderr).toContain('err');
  });

  it('gives E_RUNTIME_MISSING when no runtime is on PATH', async () => {
    const img = await newImage(join(dir, 'missing.img'));
    const empty = await mkdtemp(join(dir, 'empty-path-'));
    // findTool also looks in the sbin directories: the runtime must not be there either
    for (const d of ['/usr/local/sbin', '/usr/sbin', '/sbin'])
      for (const n of ['apptainer', 'singularity']) expect(() => accessSync(join(d, n))).toThrow();
    const r = await overlayctl(['exec', img, '--base', base, '--json', '--', 'true'], {
      env: { PATH: empty },
    });
    expect(r.exitCode).toBe(125);
    expect(lastJson(r.stdout)).toMatchObject({ error: { code: 'E_RUNTIME_MISSING' } });
    expect(String((lastJson(r.stdout).error as { hint: string }).hint)).toMatch(/setup-host\.sh/);
    let err: unknown;
    try {
      findRuntime({ PATH: empty });
    } catch (e) {
      err = e;
    }
    expect(isOverlayError(err, 'E_RUNTIME_MISSING')).toBe(true);
    expect(findRuntime().name).toBe(apptainerCommand());
  });

  it('rejects bad input before touching anything', async () => {
    const img = await newImage(join(dir, 'bad.img'));
    const cases = [
      ['exec', img, '--base', base, '--env', 'NOEQUALS', '--', 'true'],
      ['exec', img, '--base', join(dir, 'no-such.sif'), '--', 'true'],
      ['exec', join(dir, 'no-such.img'), '--base', base, '--', 'true'],
      ['exec', img, '--base', 'ftp://example.org/x.sif', '--', 'true'],
    ];
    const codes = [];
    for (const [cmd, ...args] of cases)
      codes.push(lastJson((await overlayctl([cmd!, '--json', ...args])).stdout));
    expect(codes.map((c) => (c.error as { code: string }).code)).toEqual([
      'E_INVALID_INPUT',
      'E_NOT_FOUND',
      'E_NOT_FOUND',
      'E_INVALID_INPUT',
    ]);
  });
});
