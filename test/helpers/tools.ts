// Small host probes and utilities shared by the integration-test helpers.
import { createHash } from 'node:crypto';
import { accessSync, constants, createReadStream } from 'node:fs';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';

/** Where test helpers keep what they build once per machine (base image, locks). */
export const TEST_CACHE_DIR = process.env.OVERLAY_TEST_CACHE_DIR ?? '/var/tmp/overlay-action-test';

/** The PATH given to commands run as another user (runAs): system directories only. */
export const SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** First executable named `name` on PATH (like `command -v`), or undefined. */
export function findOnPath(name: string, path = process.env.PATH ?? SYSTEM_PATH): string | undefined {
  for (const dir of path.split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * The container runtime's command name: `apptainer`, else `singularity` (same CLI for what the
 * tests use), else undefined. Synchronous so it can drive `describe.skipIf(...)`.
 */
export function apptainerCommand(): string | undefined {
  if (findOnPath('apptainer')) return 'apptainer';
  if (findOnPath('singularity')) return 'singularity';
  return undefined;
}

export function hasApptainer(): boolean {
  return apptainerCommand() !== undefined;
}

/** Hex SHA-256 of a file's bytes, streamed. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to another user
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Runs `fn` while holding a lock directory (mkdir is atomic, also across test worker processes).
 * A lock left behind by a dead process (its pid file names no live process, or it has no pid file
 * after `staleMs`) is broken. Only for test fixtures built once per machine; images themselves are
 * locked the way Apptainer does it (packages/core lock/).
 */
export async function withDirLock<T>(
  lockDir: string,
  fn: () => Promise<T>,
  { timeoutMs = 600_000, staleMs = 30_000 } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  const pidFile = join(lockDir, 'pid');
  for (;;) {
    try {
      await mkdir(lockDir);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const owner = Number.parseInt(await readFile(pidFile, 'utf8').catch(() => ''), 10);
    const stale = Number.isNaN(owner)
      ? Date.now() -
          (await stat(lockDir)
            .then((s) => s.mtimeMs)
            .catch(() => Date.now())) >
        staleMs
      : !processAlive(owner);
    if (stale) {
      await rm(lockDir, { recursive: true, force: true });
      continue;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for lock ${lockDir} (held by pid ${owner})`);
    await sleep(200);
  }
  try {
    await writeFile(pidFile, String(process.pid));
    return await fn();
  } finally {
    await rm(lockDir, { recursive: true, force: true });
  }
}
