// The container image integration tests run in: a few MB, built offline from a busybox-static
// rootfs directory (no registry, no network), once per machine, shared by all test files.
import { createHash } from 'node:crypto';
import {
  chmod,
  copyFile,
  mkdir,
  mkdtemp,
  readFile,
  rename,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { apptainerCommand, TEST_CACHE_DIR, withDirLock } from './tools';

/** The cached base image; world-readable (0644) so unprivileged test users can run it. */
export const BASE_IMAGE = join(TEST_CACHE_DIR, 'base.sif');

/** Files of the lower layer that overlay tests can read, replace, delete or shadow. */
export const BASE_IMAGE_FILES: Readonly<Record<string, string>> = {
  '/etc/passwd': 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
  '/etc/group': 'root:x:0:\nnogroup:x:65534:\n',
  '/etc/lowerdir/a': 'lower a\n',
  '/etc/lowerdir/b': 'lower b\n',
  '/opt/lower/file.txt': 'lower file\n',
};

/** Directories of the image and their modes (besides the parents of BASE_IMAGE_FILES, 0755). */
const DIRS: Readonly<Record<string, number>> = {
  '/bin': 0o755,
  '/etc': 0o755,
  '/opt': 0o755,
  '/root': 0o700,
  '/tmp': 0o1777,
  '/usr/bin': 0o755,
};

/** Changes whenever the recipe does, so a stale cached image is rebuilt. */
const RECIPE_ID = createHash('sha256')
  .update(JSON.stringify({ v: 1, files: BASE_IMAGE_FILES, dirs: DIRS, applets: 'busybox --list in /bin' }))
  .digest('hex')
  .slice(0, 16);
const STAMP = `${BASE_IMAGE}.recipe`;

async function isFresh(): Promise<boolean> {
  const [size, stamp] = await Promise.all([
    stat(BASE_IMAGE).then(
      (s) => s.size,
      () => 0,
    ),
    readFile(STAMP, 'utf8').catch(() => ''),
  ]);
  return size > 0 && stamp.trim() === RECIPE_ID;
}

async function writeRootfs(root: string): Promise<void> {
  for (const [dir, mode] of Object.entries(DIRS)) {
    await mkdir(join(root, dir), { recursive: true });
    await chmod(join(root, dir), mode);
  }
  const busybox = join(root, 'bin/busybox');
  await copyFile('/bin/busybox', busybox);
  await chmod(busybox, 0o755);
  const applets = (await execa('/bin/busybox', ['--list'])).stdout.split('\n').filter(Boolean);
  for (const applet of applets) {
    if (applet !== 'busybox') await symlink('busybox', join(root, 'bin', applet));
  }
  // for `#!/usr/bin/env sh` scripts
  await symlink('../../bin/busybox', join(root, 'usr/bin/env'));
  for (const [file, content] of Object.entries(BASE_IMAGE_FILES)) {
    const path = join(root, file);
    await mkdir(dirname(path), { recursive: true, mode: 0o755 });
    await writeFile(path, content, { mode: 0o644 });
    await chmod(path, 0o644);
  }
}

async function build(): Promise<void> {
  const runtime = apptainerCommand();
  if (!runtime) throw new Error('ensureBaseImage: neither apptainer nor singularity is on PATH');
  if ((await execa('/bin/busybox', ['--help'], { reject: false })).exitCode === 127) {
    throw new Error('ensureBaseImage: /bin/busybox is missing (run scripts/setup-host.sh)');
  }
  const work = await mkdtemp(join(TEST_CACHE_DIR, 'build-'));
  try {
    const rootfs = join(work, 'rootfs');
    await writeRootfs(rootfs);
    const sif = join(work, 'base.sif');
    const r = await execa(runtime, ['build', '--force', sif, rootfs], { reject: false, all: true });
    if (r.exitCode !== 0) {
      throw new Error(
        `ensureBaseImage: ${runtime} build failed (exit ${r.exitCode}):\n${r.all?.slice(-2000)}`,
      );
    }
    await chmod(sif, 0o644);
    // replace atomically: a concurrent reader sees the old image or the new one, never a partial one
    await rename(sif, BASE_IMAGE);
    await writeFile(join(work, 'stamp'), `${RECIPE_ID}\n`, { mode: 0o644 });
    await rename(join(work, 'stamp'), STAMP);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

let pending: Promise<string> | undefined;

/**
 * Path of the cached base SIF (BASE_IMAGE), built on first use or when missing or out of date.
 * Concurrent callers (other test files, other processes) wait for one build under a lock.
 */
export function ensureBaseImage(): Promise<string> {
  pending ??= (async () => {
    if (await isFresh()) return BASE_IMAGE;
    await mkdir(TEST_CACHE_DIR, { recursive: true });
    await chmod(TEST_CACHE_DIR, 0o755).catch(() => {}); // not ours when not root: fine if readable
    await withDirLock(join(TEST_CACHE_DIR, 'base.lock'), async () => {
      if (!(await isFresh())) await build();
    });
    return BASE_IMAGE;
  })().catch((err) => {
    pending = undefined;
    throw err;
  });
  return pending;
}
