// overlayctl exec and build as an unprivileged user (the GitHub runner's situation): the user's
// own overlay without --fakeroot, a root-owned one with --fakeroot chosen automatically.
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireLock } from '../../packages/core/src/index';
import { ensureBaseImage } from '../helpers/base-image';
import { hasApptainer, isRoot, sha256File } from '../helpers/tools';
import { ensureTestUser, makeUserDir, runAs, type TestUser } from '../helpers/users';
import { lastJson, makeLayer, overlayctlAs } from './helpers';

describe.skipIf(!hasApptainer() || !isRoot())('overlayctl exec/build as an unprivileged user', () => {
  let user: TestUser;
  let dir: string;
  let base: string;
  let own: string; // upper/ owned by the user, with /opt/work
  let rooted: string; // upper/ owned by root (create --fakeroot)
  const as = (args: string[]) => overlayctlAs(user, args, dir);

  beforeAll(async () => {
    [user, base] = await Promise.all([ensureTestUser(), ensureBaseImage()]);
    dir = await makeUserDir(user, 'overlay-runtime-');
    own = join(dir, 'own.img');
    rooted = join(dir, 'rooted.img');
    for (const args of [
      ['create', own, '--size', '64', '--create-dir', '/opt/work'],
      ['create', rooted, '--size', '64', '--fakeroot'],
    ]) {
      const r = await as(args);
      expect(r.exitCode, r.stderr).toBe(0);
    }
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('own overlay: no --fakeroot, writes persist across execs', async () => {
    const w = await as([
      'exec',
      own,
      '--base',
      base,
      '--json',
      '--',
      'sh',
      '-c',
      'echo mine > /opt/work/x; id -u',
    ]);
    expect(w.exitCode, w.stderr).toBe(0);
    expect(w.stderr).toMatch(new RegExp(`^${user.uid}$`, 'm')); // --json: the command's stdout goes to stderr
    expect(lastJson(w.stdout)).toMatchObject({ exitCode: 0, fakeroot: false });
    const r = await as(['exec', own, '--base', base, '--', 'cat', '/opt/work/x']);
    expect(r.stdout).toContain('mine');
  });

  it('root-owned overlay: --fakeroot chosen automatically, writes persist, --ro reads', async () => {
    const w = await as([
      'exec',
      rooted,
      '--base',
      base,
      '--json',
      '--',
      'sh',
      '-c',
      'echo fake > /opt/x; id -u',
    ]);
    expect(w.exitCode, w.stderr).toBe(0);
    expect(w.stderr).toMatch(/^0$/m); // --json: the command's stdout goes to stderr
    expect(lastJson(w.stdout)).toMatchObject({ exitCode: 0, fakeroot: true });
    const r = await as(['exec', rooted, '--base', base, '--', 'cat', '/opt/x']);
    expect(r.stdout).toContain('fake');
    const ro = await as(['exec', rooted, '--ro', '--base', base, '--json', '--', 'cat', '/opt/x']);
    expect(ro.stderr).toContain('fake');
    expect(lastJson(ro.stdout)).toMatchObject({ exitCode: 0, fakeroot: false });
    const refused = await as(['exec', rooted, '--ro', '--base', base, '--', 'sh', '-c', 'echo n > /opt/x']);
    expect(refused.exitCode).not.toBe(0);
  });

  it('--no-fakeroot forces it off: Apptainer then refuses the root-owned upper/, with a hint', async () => {
    const r = await as(['exec', rooted, '--no-fakeroot', '--base', base, '--json', '--', 'true']);
    expect(r.exitCode).toBe(125);
    const { error } = lastJson(r.stdout) as { error: { code: string; message: string; hint: string } };
    expect(error.code).toBe('E_RUNTIME_FAILED');
    expect(error.message).toMatch(/upper\/ directory .* is not writable by you/);
    expect(error.hint).toMatch(/--fakeroot/);
  });

  it('propagates exit codes and stacks layers as the user too', async () => {
    const code = await as(['exec', own, '--base', base, '--', 'sh', '-c', 'exit 13']);
    expect(code.exitCode, code.stderr).toBe(13);
    const a = await makeLayer(join(dir, 'ua.sqf'), { '/opt/who': 'A\n' }, user);
    const b = await makeLayer(join(dir, 'ub.sqf'), { '/opt/who': 'B\n' }, user);
    for (const [layers, want] of [
      [[a, b], 'B'],
      [[b, a], 'A'],
    ] as const) {
      const r = await as([
        'exec',
        rooted,
        '--base',
        base,
        ...layers.flatMap((l) => ['--layer', l]),
        '--',
        'cat',
        '/opt/who',
      ]);
      expect(r.stdout.trim(), r.stderr).toBe(want);
    }
    const w = await as([
      'exec',
      rooted,
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
    const top = await as([
      'exec',
      rooted,
      '--base',
      base,
      '--layer',
      a,
      '--layer',
      b,
      '--',
      'cat',
      '/opt/who',
    ]);
    expect(top.stdout.trim(), top.stderr).toBe('W');
  });

  it('gives E_LOCKED when the image is in use', async () => {
    const lock = await acquireLock(own, 'shared');
    try {
      const r = await as(['exec', own, '--base', base, '--json', '--', 'true']);
      expect(r.exitCode).toBe(125);
      expect(lastJson(r.stdout)).toMatchObject({ error: { code: 'E_LOCKED' } });
      // readers may share it
      const ro = await as(['exec', own, '--ro', '--base', base, '--', 'true']);
      expect(ro.exitCode, ro.stderr).toBe(0);
    } finally {
      lock.release();
    }
  });

  it('build: fakeroot follows upper/, a failed build leaves the image byte-identical', async () => {
    const before = await sha256File(rooted);
    const bad = await as(['build', rooted, '--base', base, '--run', 'echo half > /opt/half; exit 3']);
    expect(bad.exitCode).toBe(1);
    expect(bad.stderr).toMatch(/^E_BUILD_FAILED: the build exited 3/m);
    expect(await sha256File(rooted)).toBe(before);
    const good = await as([
      'build',
      rooted,
      '--base',
      base,
      '--json',
      '--run',
      'echo built > /opt/built; id -u > /opt/uid',
    ]);
    expect(good.exitCode, good.stderr).toBe(0);
    expect(lastJson(good.stdout)).toMatchObject({ exitCode: 0, created: false, fakeroot: true });
    const r = await as(['exec', rooted, '--ro', '--base', base, '--', 'cat', '/opt/built', '/opt/uid']);
    expect(r.stdout).toBe('built\n0');
    // the replaced image still belongs to the user
    const owner = await runAs(user, ['stat', '-c', '%U', rooted]);
    expect(owner.stdout.trim()).toBe(user.name);
  });
});
