import { randomBytes } from 'node:crypto';
import { constants, promises as fsp } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fromFsError, OverlayError } from '../errors';
import { findTool, runTool } from '../tools/run';

const TEMP_MARK = '.ovtmp-';

// Host names go into temp names: on a shared filesystem only this host can tell whether a pid is dead.
export const HOST = hostname().replace(/[^A-Za-z0-9_.]/g, '_');

/** `dir/.NAME.ovtmp-PID-HOST-RANDOM`: hidden, same directory (same filesystem, so rename is atomic). */
export function tempPathFor(target: string): string {
  const suffix = `${process.pid}-${HOST}-${randomBytes(4).toString('hex')}`;
  return join(dirname(target), `.${basename(target)}${TEMP_MARK}${suffix}`);
}

/**
 * Create an empty file exclusively (O_CREAT|O_EXCL|O_NOFOLLOW): never follows a symlink that
 * someone planted in a shared directory, never reuses an existing file.
 */
export async function createExclusive(path: string, mode = 0o644): Promise<void> {
  const fh = await fsp
    .open(path, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY | constants.O_NOFOLLOW, mode)
    .catch((e) => {
      throw fromFsError(e, path);
    });
  await fh.close();
}

export async function fsyncPath(path: string): Promise<void> {
  const fh = await fsp.open(path, constants.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** The directory `target` goes into must exist: say so with the user's path (not a temp name). */
export async function requireParentDir(target: string): Promise<void> {
  const dir = dirname(target);
  const st = await fsp.stat(dir).catch(() => null);
  if (!st?.isDirectory())
    throw new OverlayError('E_NOT_FOUND', `${target}: directory ${dir} does not exist`, {
      hint: `create it first (mkdir -p ${dir}) or choose another path`,
    });
}

/**
 * The crash-safety primitive: `build` fills a fresh temp file next to `target`, which is then
 * fsynced and renamed over `target` (fsync of the directory makes the rename durable). On any
 * failure the temp file is removed and `target` is untouched. A SIGKILL leaves at most a stale
 * temp file, which `removeStaleTemps` clears on the next operation.
 */
export async function replaceAtomically<T>(
  target: string,
  build: (tmpPath: string) => Promise<T>,
  opts: { mode?: number; precreate?: boolean } = {},
): Promise<T> {
  await requireParentDir(target);
  await removeStaleTemps(target);
  const tmp = tempPathFor(target);
  if (opts.precreate !== false) await createExclusive(tmp, opts.mode ?? 0o644);
  try {
    const result = await build(tmp);
    await fsyncPath(tmp);
    await fsp.rename(tmp, target).catch((e) => {
      throw fromFsError(e, target);
    });
    await fsyncPath(dirname(target)).catch(() => {});
    return result;
  } catch (e) {
    await fsp.rm(tmp, { force: true, recursive: true }).catch(() => {});
    throw fromFsError(e, target);
  }
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Where withMountedImage mounts: `TMPDIR/overlay-mnt-PID-HOST-XXXXXX`, so a janitor can tell whose it is. */
export const mountDirPrefix = () => join(tmpdir(), `overlay-mnt-${process.pid}-${HOST}-`);

let mountsCleared = false;
/**
 * Detach mounts that a killed operation left behind (a SIGKILL while commit had the image
 * mounted): ours by name, owned by a process that no longer exists. Once per process; failures
 * (e.g. another user's mount) are left alone.
 */
export async function clearStaleMounts(): Promise<string[]> {
  if (mountsCleared) return [];
  mountsCleared = true;
  let info: string;
  try {
    info = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const cleared: string[] = [];
  for (const line of info.split('\n')) {
    const fields = line.split(' ');
    const point = fields[4]?.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(Number.parseInt(o, 8)));
    const m = point && /\/overlay-mnt-(\d+)-([^/]+)-[^-/]+$/.exec(point);
    if (!m || m[2] !== HOST || pidAlive(Number(m[1]))) continue;
    const fuse = line.split(' - ')[1]?.startsWith('fuse');
    const r = fuse
      ? await runTool(findTool('fusermount3') ? 'fusermount3' : 'fusermount', ['-uz', point]).catch(
          () => null,
        )
      : await runTool('umount', ['-l', point]).catch(() => null);
    if (r) {
      await fsp.rmdir(point).catch(() => {});
      cleared.push(point);
    }
  }
  return cleared;
}

/**
 * Remove temp files of `target` left by processes that no longer exist (killed mid-operation),
 * and any mount such a process left.
 */
export async function removeStaleTemps(target: string): Promise<string[]> {
  await clearStaleMounts();
  const dir = dirname(target);
  const prefix = `.${basename(target)}${TEMP_MARK}`;
  const removed: string[] = [];
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch {
    return removed;
  }
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const [pidText, host] = name.slice(prefix.length).split('-');
    const pid = Number(pidText);
    if (!Number.isInteger(pid) || host !== HOST || pidAlive(pid)) continue;
    await fsp.rm(join(dir, name), { force: true, recursive: true }).catch(() => {});
    removed.push(join(dir, name));
  }
  return removed;
}

export async function exists(path: string): Promise<boolean> {
  return fsp.lstat(path).then(
    () => true,
    () => false,
  );
}

/**
 * A private directory in $TMPDIR for the length of `fn`, then removed. Named
 * `overlayctl-TAG-PID-HOST-…`, so a later run removes those a killed process left.
 */
export async function withScratchDir<T>(tag: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const base = process.env.TMPDIR || tmpdir();
  const prefix = `overlayctl-${tag}-`;
  for (const name of await fsp.readdir(base).catch(() => [] as string[])) {
    if (!name.startsWith(prefix)) continue;
    const [pidText, host] = name.slice(prefix.length).split('-');
    const pid = Number(pidText);
    if (!Number.isInteger(pid) || host !== HOST || pidAlive(pid)) continue;
    await fsp.rm(join(base, name), { recursive: true, force: true }).catch(() => {});
  }
  const dir = await fsp.mkdtemp(join(base, `${prefix}${process.pid}-${HOST}-`)).catch((e) => {
    throw fromFsError(e, base);
  });
  try {
    return await fn(dir);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true }).catch(() => {});
  }
}
