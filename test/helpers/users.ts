// An unprivileged user for integration tests: the GitHub runner's situation (no root inside
// Apptainer unless --fakeroot), reproduced on a machine where the tests run as root.
import { chmod, chown, mkdir, mkdtemp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa, type Result } from 'execa';
import { isRoot, SYSTEM_PATH, TEST_CACHE_DIR, withDirLock } from './tools';

export interface TestUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

/** Size of the subordinate uid/gid range given to the test user (what useradd gives by default). */
const SUBID_COUNT = 65_536;
const SUBID_MIN = 100_000;

async function lookupUser(name: string): Promise<TestUser | undefined> {
  const r = await execa('getent', ['passwd', name], { reject: false });
  if (r.exitCode !== 0) return undefined;
  const [, , uid, gid, , home] = r.stdout.trim().split(':');
  return { name, uid: Number(uid), gid: Number(gid), home: home ?? `/home/${name}` };
}

interface SubIdRange {
  owner: string;
  first: number;
  count: number;
}

async function readSubIds(file: string): Promise<SubIdRange[]> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text
    .split('\n')
    .map((line) => line.trim().split(':'))
    .filter((f) => f.length === 3 && f[0] !== '' && !f[0]!.startsWith('#'))
    .map(([owner, first, count]) => ({ owner: owner!, first: Number(first), count: Number(count) }));
}

/** Lowest SUBID_COUNT-sized range from SUBID_MIN up that overlaps no range in either file. */
function freeRange(taken: SubIdRange[]): number {
  let first = SUBID_MIN;
  for (;;) {
    const clash = taken.find((r) => first < r.first + r.count && r.first < first + SUBID_COUNT);
    if (!clash) return first;
    first = Math.max(first + SUBID_COUNT, Math.ceil((clash.first + clash.count) / SUBID_COUNT) * SUBID_COUNT);
  }
}

async function ensureSubIds(user: TestUser): Promise<void> {
  const uids = await readSubIds('/etc/subuid');
  const gids = await readSubIds('/etc/subgid');
  const hasUid = uids.some((r) => r.owner === user.name || r.owner === String(user.uid));
  const hasGid = gids.some((r) => r.owner === user.name || r.owner === String(user.uid));
  if (hasUid && hasGid) return;
  const first = freeRange([...uids, ...gids]);
  const range = `${first}-${first + SUBID_COUNT - 1}`;
  const args = [
    ...(hasUid ? [] : ['--add-subuids', range]),
    ...(hasGid ? [] : ['--add-subgids', range]),
    user.name,
  ];
  await execa('usermod', args);
}

/**
 * Creates (once) an unprivileged user with a home directory and /etc/subuid + /etc/subgid ranges
 * (needed by `apptainer --fakeroot`). Idempotent and safe to call from concurrent test files.
 * Needs root unless the user is already complete.
 */
export async function ensureTestUser(name = 'ovtest'): Promise<TestUser> {
  if (!isRoot()) {
    const user = await lookupUser(name);
    const complete =
      user &&
      (await readSubIds('/etc/subuid')).some((r) => r.owner === name) &&
      (await readSubIds('/etc/subgid')).some((r) => r.owner === name);
    if (!user || !complete)
      throw new Error(`test user ${name} is missing or incomplete; creating it needs root`);
    return user;
  }
  await mkdir(TEST_CACHE_DIR, { recursive: true, mode: 0o755 });
  return withDirLock(join(TEST_CACHE_DIR, `user-${name}.lock`), async () => {
    let user = await lookupUser(name);
    if (!user) {
      // Debian's useradd also allocates subordinate ids (login.defs SUB_UID_*); checked below anyway
      await execa('useradd', ['--create-home', '--user-group', '--shell', '/bin/sh', name]);
      user = await lookupUser(name);
      if (!user) throw new Error(`useradd ${name} succeeded but getent does not see the user`);
    }
    await mkdir(user.home, { recursive: true, mode: 0o755 });
    await chown(user.home, user.uid, user.gid);
    await ensureSubIds(user);
    return user;
  });
}

export interface RunAsOptions {
  /** Working directory (must be reachable by the user); default: the user's home. */
  cwd?: string;
  /** Added to the clean environment (HOME, PATH, USER, LOGNAME, LANG). */
  env?: Record<string, string>;
  input?: string;
  timeout?: number;
}

export type RunAsResult = Result<{ reject: false }>;

/**
 * Runs argv as `user` in a clean environment (`runuser -u NAME -- env -i HOME=... PATH=...`), so
 * nothing of root's environment (XDG_RUNTIME_DIR, APPTAINER_*, TMPDIR, ...) leaks in. Never
 * rejects: inspect exitCode/stdout/stderr.
 */
export async function runAs(user: TestUser, argv: string[], opts: RunAsOptions = {}): Promise<RunAsResult> {
  const env: Record<string, string> = {
    HOME: user.home,
    PATH: SYSTEM_PATH,
    USER: user.name,
    LOGNAME: user.name,
    LANG: 'C.UTF-8',
    ...opts.env,
  };
  const assignments = Object.entries(env).map(([k, v]) => `${k}=${v}`);
  const wrapped = ['env', '-i', ...assignments, ...argv];
  // Already that user (tests run unprivileged): no runuser, which needs root.
  const [file, ...args] =
    process.getuid?.() === user.uid ? wrapped : ['runuser', '-u', user.name, '--', ...wrapped];
  return execa(file!, args, {
    reject: false,
    cwd: opts.cwd ?? user.home,
    input: opts.input,
    timeout: opts.timeout,
  });
}

/** A fresh directory under /tmp owned by `user`, mode 0755 (readable by root and other users). */
export async function makeUserDir(user: TestUser, prefix = 'overlay-test-'): Promise<string> {
  const dir = await mkdtemp(join('/tmp', `${prefix}${user.name}-`));
  await chown(dir, user.uid, user.gid);
  await chmod(dir, 0o755);
  return dir;
}
