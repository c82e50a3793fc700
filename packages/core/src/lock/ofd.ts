import { AsyncLocalStorage } from 'node:async_hooks';
import { closeSync, constants, openSync } from 'node:fs';
import { fromFsError, OverlayError } from '../errors';
import { staleUndoLogs } from '../fs/undo';
import { recoverInterruptedEdits } from '../image/inplace';
import { loadKoffi } from '../tools/native';

/**
 * fcntl open-file-description locks (F_OFD_SETLK), the kind Apptainer takes on overlay images:
 * a write lock for writers, a read lock for readers, released by the kernel when the holder dies
 * (no stale lock files). Node has no fcntl, so we call libc through koffi.
 */

const F_OFD_SETLK = 37;
const F_RDLCK = 0;
const F_WRLCK = 1;
const EAGAIN = 11;
const EACCES = 13;

export type LockMode = 'shared' | 'exclusive';
export type LockState = 'free' | 'read' | 'write';

interface Ffi {
  fcntl: (fd: number, cmd: number, type: string, lock: Record<string, number>) => number;
  errno: () => number;
}
let ffi: Ffi | undefined;

function getFfi(): Ffi {
  if (ffi) return ffi;
  const koffi = loadKoffi();
  const libc = koffi.load('libc.so.6');
  // struct flock on Linux x86_64/aarch64: short, short, off_t, off_t, pid_t
  koffi.struct('ov_flock', {
    l_type: 'short',
    l_whence: 'short',
    l_start: 'int64',
    l_len: 'int64',
    l_pid: 'int',
  });
  const fcntl = libc.func('int fcntl(int fd, int cmd, ...)');
  ffi = { fcntl, errno: () => koffi.errno() };
  return ffi;
}

/**
 * How long lock takers wait for a busy image, for everything run inside `withLockWait` (a task's
 * `--wait`): set once where the task starts instead of threaded through every function.
 */
const lockWait = new AsyncLocalStorage<number>();

export function withLockWait<T>(seconds: number, fn: () => Promise<T>): Promise<T> {
  return lockWait.run(seconds, fn);
}

let processWait: number | undefined;

/**
 * The wait for every lock this process takes outside a `withLockWait` scope: an action step is one
 * process running one task, whose entry may call core functions directly (setup, check).
 */
export function setProcessLockWait(seconds: number | undefined): void {
  processWait = seconds;
}

function waitSecondsFor(opts: { waitSeconds?: number }): number {
  return opts.waitSeconds ?? lockWait.getStore() ?? processWait ?? 0;
}

const lockedError = (path: string, mode: LockMode) =>
  new OverlayError(
    'E_LOCKED',
    `${path} is in use${mode === 'exclusive' ? '' : ' for writing'} by another process (Apptainer or overlayctl)`,
    { hint: 'wait for the other job to finish, or pass --wait SECONDS', details: { path, mode } },
  );

export interface Lock {
  readonly path: string;
  readonly mode: LockMode;
  /** The descriptor holding the lock (a child that inherits it keeps the lock while it runs). */
  readonly fd: number;
  release(): void;
}

/**
 * A byte range to lock instead of the whole file: Apptainer locks the overlay partition's range
 * inside a SIF (pkg/image: lockSection), so ours must be that same range to conflict with it.
 */
export interface LockRange {
  start: number;
  length: number;
}

function trySetLock(fd: number, type: number, range?: LockRange): boolean {
  const { fcntl, errno } = getFfi();
  const lock = { l_type: type, l_whence: 0, l_start: range?.start ?? 0, l_len: range?.length ?? 0, l_pid: 0 };
  if (fcntl(fd, F_OFD_SETLK, 'ov_flock *', lock) === 0) return true;
  const e = errno();
  if (e === EAGAIN || e === EACCES) return false;
  throw new OverlayError('E_TOOL_FAILED', `fcntl(F_OFD_SETLK) failed with errno ${e}`);
}

/**
 * Lock the whole image. Fails at once with E_LOCKED when someone else holds a conflicting lock,
 * unless `waitSeconds` is given (then it polls, so the event loop never blocks).
 */
export async function acquireLock(
  path: string,
  mode: LockMode,
  opts: { waitSeconds?: number; range?: LockRange } = {},
): Promise<Lock> {
  if (mode === 'shared') await finishInterruptedEdits(path);
  let fd: number;
  try {
    fd = openSync(path, mode === 'exclusive' ? constants.O_RDWR : constants.O_RDONLY);
  } catch (e) {
    throw fromFsError(e, path);
  }
  const deadline = Date.now() + waitSecondsFor(opts) * 1000;
  try {
    for (;;) {
      if (trySetLock(fd, mode === 'exclusive' ? F_WRLCK : F_RDLCK, opts.range)) break;
      if (Date.now() >= deadline) throw lockedError(path, mode);
      await new Promise((r) => setTimeout(r, 100));
    }
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  let released = false;
  const lock = {
    path,
    mode,
    fd,
    release() {
      if (released) return;
      released = true;
      closeSync(fd); // closing the description drops the OFD lock
    },
  };
  if (mode === 'exclusive') {
    // an in-place edit killed half way (image/inplace.ts) is finished or undone before anyone uses the image
    try {
      await recoverInterruptedEdits(path);
    } catch (e) {
      lock.release();
      throw e;
    }
  }
  return lock;
}

/**
 * Without holding a lock: when an in-place edit of a process that died left its undo log, take the
 * write lock briefly (the recovery runs under it). If the image is busy, whoever holds it goes first.
 */
export async function finishInterruptedEdits(path: string): Promise<void> {
  if (!(await staleUndoLogs(path)).length) return;
  // best effort: busy (its holder recovers it) or not ours to write (EACCES): leave it
  await acquireLock(path, 'exclusive', { waitSeconds: 0 }).then(
    (l) => l.release(),
    () => {},
  );
}

export async function withLock<T>(
  path: string,
  mode: LockMode,
  fn: () => Promise<T>,
  opts: { waitSeconds?: number; range?: LockRange } = {},
): Promise<T> {
  const lock = await acquireLock(path, mode, opts);
  try {
    return await fn();
  } finally {
    lock.release();
  }
}

/**
 * What lock, if any, another process holds on the image: try a read lock (fails under a writer),
 * then a write lock (fails under readers); both are dropped at once.
 */
export function probeLock(path: string, range?: LockRange): LockState {
  const attempt = (flags: number, type: number): boolean | null => {
    let fd: number;
    try {
      fd = openSync(path, flags);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EACCES') return null;
      throw fromFsError(e, path);
    }
    try {
      return trySetLock(fd, type, range);
    } finally {
      closeSync(fd);
    }
  };
  if (attempt(constants.O_RDONLY, F_RDLCK) === false) return 'write';
  if (attempt(constants.O_RDWR, F_WRLCK) === false) return 'read';
  return 'free';
}

/**
 * Wait (up to the task's --wait) until nobody holds a lock that conflicts with `mode`, without
 * taking one: for `exec`, where Apptainer takes the lock itself.
 */
export async function awaitLockFree(
  path: string,
  mode: LockMode,
  opts: { waitSeconds?: number; range?: LockRange } = {},
): Promise<void> {
  const deadline = Date.now() + waitSecondsFor(opts) * 1000;
  for (;;) {
    const held = probeLock(path, opts.range);
    if (held === 'free' || (held === 'read' && mode === 'shared')) return;
    if (Date.now() >= deadline) throw lockedError(path, mode);
    await new Promise((r) => setTimeout(r, 100));
  }
}
