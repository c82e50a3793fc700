// What a user sees when something is off: coded errors naming the flag or path, the one table of
// exit statuses, --wait on every writer, and --json keeping stdout to one object. Real CLI bundle,
// real e2fsprogs/squashfs-tools; locks are real OFD locks held by this process.
import { existsSync, statSync } from 'node:fs';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireLock, ERROR_CODES, EXIT_STATUS, TASKS, taskFields } from '../../packages/core/src/index';
import { ensureTestUser, makeUserDir, runAs } from '../helpers/users';

const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
let dir: string;

async function ctl(args: string[], opts: { shell?: string } = {}) {
  const r = opts.shell
    ? await execa('bash', ['-c', `${opts.shell}; exec "$0" "$@"`, process.execPath, CLI, ...args], {
        reject: false,
      })
    : await execa(process.execPath, [CLI, ...args], { reject: false, env: { OVERLAYCTL_QUIET: '1' } });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

async function image(name: string, size = '64'): Promise<string> {
  const p = join(dir, name);
  const r = await ctl(['create', p, '--size', size]);
  expect(r.exitCode, r.stderr).toBe(0);
  return p;
}

/** Hold the image's write lock (as Apptainer would) for `ms`, then let go (`done`). */
async function lockFor(path: string, ms: number): Promise<{ done: Promise<void> }> {
  const lock = await acquireLock(path, 'exclusive');
  const done = new Promise<void>((res) =>
    setTimeout(() => {
      lock.release();
      res();
    }, ms),
  );
  return { done };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ov-usability-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('input errors name the flag and what it wants', () => {
  it.each([
    [['create', 'x.img'], /--size is required: Image size/],
    [['resize', 'x.img'], /--size is required: New size/],
    [['build', 'x.img', '--run', 'true'], /--base is required: Base container/],
    [['commit', 'x.img'], /--output is required: The SquashFS layer/],
  ])('%j', async (args, message) => {
    const r = await ctl(args.map((a) => (a.endsWith('.img') ? join(dir, a) : a)));
    expect(r.exitCode).toBe(ERROR_CODES.E_INVALID_INPUT.exit);
    expect(r.stderr).toMatch(/^E_INVALID_INPUT: /);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toMatch(/expected string|received undefined/);
  });
});

describe('sizes', () => {
  it('1.5G makes a 1536 MiB image', async () => {
    const p = await image('dec.img', '1.5G');
    expect(statSync(p).size).toBe(1536 * 2 ** 20);
  });

  it('100T is refused up front with the ext3 limit, and nothing is created', async () => {
    const p = join(dir, 'huge.img');
    const r = await ctl(['create', p, '--size', '100T']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/^E_INVALID_INPUT: --size: 100T is above what an ext3 image can hold/);
    expect(existsSync(p)).toBe(false);
  });

  it('a size the host refuses for one file (EFBIG) is a coded input error, not E_INTERNAL', async () => {
    const p = join(dir, 'efbig.img');
    const r = await ctl(['create', p, '--size', '1G'], { shell: 'ulimit -f 100000' });
    expect(r.stderr).toMatch(/^E_INVALID_INPUT: .*larger than the host allows/m);
    expect(r.exitCode).toBe(2);
    expect(existsSync(p)).toBe(false);
  });
});

describe('codes for files that are missing or of the wrong kind', () => {
  it('squash of a missing layer is E_NOT_FOUND', async () => {
    const r = await ctl(['squash', join(dir, 'nope.sqf'), '--output', join(dir, 'o.sqf')]);
    expect(r.stderr).toMatch(/^E_NOT_FOUND: .*nope\.sqf/);
    expect(r.exitCode).toBe(2);
  });

  it('squash of an ext3 image is E_NOT_SQUASHFS with a hint to commit it', async () => {
    const p = await image('ext.img');
    const r = await ctl(['squash', p, '--output', join(dir, 'o.sqf')]);
    expect(r.stderr).toMatch(/^E_NOT_SQUASHFS: .*ext\.img is an ext3 image.*overlayctl commit/);
    expect(r.exitCode).toBe(2);
  });

  it('squash of a file of no known format is E_UNKNOWN_FORMAT', async () => {
    const junk = join(dir, 'junk.sqf');
    await writeFile(junk, 'not a layer\n');
    const r = await ctl(['squash', junk, '--output', join(dir, 'o.sqf')]);
    expect(r.stderr).toMatch(/^E_UNKNOWN_FORMAT: /);
  });

  it('commit into a missing directory names the user path, not a temp file', async () => {
    const p = await image('c.img');
    const r = await ctl(['commit', p, '--output', join(dir, 'missing/dir/x.sqf')]);
    expect(r.stderr).toMatch(/^E_NOT_FOUND: .*missing\/dir\/x\.sqf: directory .*missing\/dir does not exist/);
    expect(r.stderr).not.toMatch(/ovtmp/);
    expect(r.exitCode).toBe(2);
  });
});

describe('check exit statuses follow the one table', () => {
  it('clean 0, locked only 75 (retryable), corrupt 1 even next to a locked one', async () => {
    const clean = await image('clean.img');
    const locked = await image('locked.img');
    const corrupt = await image('corrupt.img');
    await execa('debugfs', ['-w', '-f', '-', corrupt], { input: 'freeb 300 20\n' });
    expect((await ctl(['check', clean])).exitCode).toBe(EXIT_STATUS.ok);
    const held = await lockFor(locked, 4000);
    const onlyLocked = await ctl(['check', clean, locked, '--json']);
    expect(JSON.parse(onlyLocked.stdout).counts).toMatchObject({ clean: 1, locked: 1 });
    expect(onlyLocked.exitCode).toBe(EXIT_STATUS.retryable);
    const both = await ctl(['check', locked, corrupt]);
    expect(both.exitCode).toBe(EXIT_STATUS.findings);
    await held.done;
  });
});

describe('--wait on every writer', () => {
  const writers = [
    'create',
    'check',
    'resize',
    'chown',
    'lock',
    'exec',
    'build',
    'commit',
    'normalize',
    'setup',
    'cache save',
    'cache restore',
  ];
  it.each(writers)('%s has --wait', (name) => {
    const task = TASKS.find((t) => t.name === name)!;
    const wait = taskFields(task).find((f) => f.name === 'wait');
    expect(wait?.kind).toBe('number');
  });

  it.each([
    ['resize', (p: string) => ['resize', p, '--size', '96']],
    ['chown', (p: string) => ['chown', p, '--uid', '1234', '--gid', '1234']],
    ['check --repair', (p: string) => ['check', p, '--repair']],
    ['normalize', (p: string) => ['normalize', p]],
  ])('%s fails at once with E_LOCKED, and with --wait waits for the lock', async (name, argv) => {
    const p = await image(`${name.replace(/\W/g, '')}.img`);
    let held = await lockFor(p, 3000);
    const now = await ctl([...argv(p), '--json']);
    const out = JSON.parse(now.stdout);
    if (name === 'check --repair') expect(out.images[0].status).toBe('locked');
    else {
      expect(out.error.code).toBe('E_LOCKED');
      expect(out.error.hint).toMatch(/--wait SECONDS/);
      expect(now.exitCode).toBe(EXIT_STATUS.retryable);
    }
    await held.done;
    held = await lockFor(p, 1500);
    const waited = await ctl([...argv(p), '--wait', '120', '--json']);
    expect(waited.exitCode, waited.stdout + waited.stderr).toBe(0);
    await held.done;
  });
});

describe('--json is exactly one object on stdout', () => {
  it('lock --json sends the command output to stderr', async () => {
    const p = await image('lockjson.img');
    const r = await ctl(['lock', p, '--json', '--', 'sh', '-c', 'echo from-command; exit 3']);
    expect(JSON.parse(r.stdout)).toEqual({ exitCode: 3 });
    expect(r.stderr).toMatch(/from-command/);
    expect(r.exitCode).toBe(3);
  });
});

describe('progress on long operations', () => {
  it('commit and squash report phases and the percentage mksquashfs/unsquashfs reach', async () => {
    const p = await image('progress.img', '256');
    const blob = join(dir, 'blob');
    await execa('head', ['-c', String(40 * 2 ** 20), '/dev/urandom'], { stdout: { file: blob } });
    await execa('debugfs', ['-w', '-R', `write ${blob} /upper/blob`, p]);
    const layer = join(dir, 'progress.sqf');
    const env = { OVERLAYCTL_QUIET: '' };
    const c = await execa(process.execPath, [CLI, 'commit', p, '--output', layer], { env, reject: false });
    expect(c.exitCode, c.stderr).toBe(0);
    expect(c.stderr).toMatch(/… e2fsck -fn .* \(it must be clean to be read\)/);
    expect(c.stderr).toMatch(/… mksquashfs \(zstd\)/);
    expect(c.stderr).toMatch(/… mksquashfs 100% \(\d+\/\d+ blocks\)/);
    expect(c.stderr).toMatch(/… sha256 of /);
    // the redrawn bar is not passed on as it is
    expect(c.stderr).not.toMatch(/\[=+/);
    const q = await execa(process.execPath, [CLI, 'squash', layer, '--output', join(dir, 'squashed.sqf')], {
      env,
      reject: false,
    });
    expect(q.exitCode, q.stderr).toBe(0);
    expect(q.stderr).toMatch(/… unsquashfs 100% \(\d+\/\d+ blocks\)/);
    expect(q.stderr).toMatch(/… mksquashfs 100% /);
  });

  it('check --repair and normalize name their phases', async () => {
    const p = await image('phases.img');
    await execa('debugfs', ['-w', '-f', '-', p], {
      input: 'freeb 300 20\nea_set /upper trusted.overlay.impure y\n',
    });
    const env = { OVERLAYCTL_QUIET: '' };
    const c = await execa(process.execPath, [CLI, 'check', p, '--repair'], { env, reject: false });
    expect(c.stderr).toMatch(/… .*phases\.img: metadata copy \(e2image -r\)/);
    expect(c.stderr).toMatch(/… .*phases\.img: e2fsck -fy on the copy/);
    expect(c.stderr).toMatch(/… .*phases\.img: repair: e2fsck -fy on the copy/);
    const n = await execa(process.execPath, [CLI, 'normalize', p], { env, reject: false });
    expect(n.stderr).toMatch(/… normalize: scanning /);
    expect(n.stderr).toMatch(/… normalize: 1 edits, in place/);
  });
});

describe('a file this user may not read or write', () => {
  it('is E_PERMISSION naming it (exit 77), never E_INTERNAL, and nothing is touched', async () => {
    if (process.getuid?.() !== 0) return; // needs root to make the file and run as the test user
    const user = await ensureTestUser();
    const home = await makeUserDir(user, 'ov-perm-');
    try {
      const img = join(home, 'root-only.img');
      expect((await ctl(['create', img, '--size', '64'])).exitCode).toBe(0);
      await chmod(img, 0o600); // root's, unreadable to the user
      const before = statSync(img).mtimeMs;
      for (const args of [
        ['cache', 'save', img, '--key', 'k', '--store', join(home, 'store')],
        ['info', img],
        ['resize', img, '--size', '128'],
      ]) {
        const r = await runAs(user, [process.execPath, CLI, ...args, '--json']);
        expect(r.exitCode, `${args.join(' ')}: ${r.stderr}`).toBe(ERROR_CODES.E_PERMISSION.exit);
        expect(JSON.parse(r.stdout.trim().split('\n').at(-1)!)).toMatchObject({
          error: { code: 'E_PERMISSION', message: expect.stringContaining('root-only.img') },
        });
      }
      expect(statSync(img).mtimeMs).toBe(before);
    } finally {
      await rm(home, { recursive: true, force: true });
    }
  });
});
