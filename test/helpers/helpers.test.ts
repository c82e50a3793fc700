import { readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { BASE_IMAGE_FILES, ensureBaseImage } from './base-image';
import { apptainerCommand, hasApptainer, isRoot, sha256File } from './tools';
import { ensureTestUser, makeUserDir, runAs } from './users';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

describe('scripts/setup-host.sh', () => {
  it('succeeds on a second run (everything already present)', async () => {
    const script = join(repoRoot, 'scripts/setup-host.sh');
    await execa('bash', [script], { reject: false });
    const second = await execa('bash', [script], { reject: false, all: true });
    expect(second.exitCode, second.all).toBe(0);
    expect(second.stdout).toMatch(/^\[setup-host\] ok: /m);
  });
});

describe('sha256File', () => {
  it('agrees with sha256sum', async () => {
    const file = fileURLToPath(import.meta.url);
    const expected = (await execa('sha256sum', [file])).stdout.split(' ')[0];
    expect(await sha256File(file)).toBe(expected);
  });
});

describe.skipIf(!hasApptainer() || !isRoot())('test user and base image', () => {
  const runtime = apptainerCommand()!;
  const dirs: string[] = [];
  afterAll(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  it('ensureTestUser is idempotent and gives subordinate ids', async () => {
    const [a, b] = await Promise.all([ensureTestUser(), ensureTestUser()]);
    expect(b).toEqual(a);
    expect(a.uid).toBeGreaterThan(0);
    expect((await stat(a.home)).uid).toBe(a.uid);
    for (const file of ['/etc/subuid', '/etc/subgid']) {
      const lines = (await readFile(file, 'utf8')).split('\n').filter((l) => l.startsWith(`${a.name}:`));
      expect(lines, file).toHaveLength(1);
    }
    const again = await ensureTestUser();
    expect(again).toEqual(a);
  });

  it('makeUserDir gives the user a 0755 directory', async () => {
    const user = await ensureTestUser();
    const dir = await makeUserDir(user);
    dirs.push(dir);
    const st = await stat(dir);
    expect(st.uid).toBe(user.uid);
    expect(st.mode & 0o777).toBe(0o755);
    const touch = await runAs(user, ['touch', join(dir, 'x')]);
    expect(touch.exitCode, touch.stderr).toBe(0);
  });

  it('builds base.sif once, world-readable', async () => {
    const [p1, p2] = await Promise.all([ensureBaseImage(), ensureBaseImage()]);
    expect(p2).toBe(p1);
    expect((await stat(p1)).mode & 0o777).toBe(0o644);
    const r = await execa(runtime, ['exec', p1, 'cat', '/opt/lower/file.txt', '/etc/lowerdir/a']);
    expect(r.stdout).toBe(
      `${BASE_IMAGE_FILES['/opt/lower/file.txt']}${BASE_IMAGE_FILES['/etc/lowerdir/a']}`.trim(),
    );
  });

  it('root gets uid 0 in the container', async () => {
    const sif = await ensureBaseImage();
    const r = await execa(runtime, ['exec', sif, 'id', '-u'], { reject: false, all: true });
    expect(r.exitCode, r.all).toBe(0);
    expect(r.stdout.trim()).toBe('0');
  });

  it('the test user gets its own uid, and 0 with --fakeroot', async () => {
    const [user, sif] = await Promise.all([ensureTestUser(), ensureBaseImage()]);
    const plain = await runAs(user, [runtime, 'exec', sif, 'id', '-u']);
    expect(plain.exitCode, plain.stderr).toBe(0);
    expect(plain.stdout.trim()).toBe(String(user.uid));
    const fake = await runAs(user, [runtime, 'exec', '--fakeroot', sif, 'id', '-u']);
    expect(fake.exitCode, fake.stderr).toBe(0);
    expect(fake.stdout.trim()).toBe('0');
  });
});
