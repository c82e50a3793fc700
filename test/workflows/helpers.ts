// What the workflow-engine tests share: a base SIF with /bin/bash (both engines run their
// commands with bash inside the container), `overlayctl` on PATH the way a user installs it (the
// bundled packages/cli/dist/overlayctl.mjs behind a small script), images built for real, and a
// container that holds an image writable (the lock the engines' jobs must not wait on).
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { execa } from 'execa';
import { ensureBaseImage } from '../helpers/base-image';
import { apptainerCommand, findOnPath, SYSTEM_PATH, TEST_CACHE_DIR, withDirLock } from '../helpers/tools';

export const ROOT = resolve(import.meta.dirname, '../..');
export const DIST_CLI = join(ROOT, 'packages/cli/dist/overlayctl.mjs');

// biome-ignore lint/suspicious/noExplicitAny: overlayctl's JSON; the tests assert its shape
export type Json = Record<string, any>;

/** The engines are installed by scripts/setup-engines.sh; a missing one is a failure, not a skip. */
export function requireEngine(name: 'snakemake' | 'cwltool' | 'singularity'): string {
  const path = findOnPath(name, process.env.PATH);
  if (!path) throw new Error(`${name} is not on PATH: run bash scripts/setup-engines.sh`);
  return path;
}

const BASH_SHIM = '#!/bin/sh\n# the engines run `bash -c …`; busybox has no bash applet\nexec /bin/sh "$@"\n';
const BASH_BASE = join(TEST_CACHE_DIR, 'base-bash.sif');

/**
 * The test base image (busybox, offline) plus a /bin/bash that execs /bin/sh: built once per
 * machine from a sandbox copy of ensureBaseImage() (no %post, so no container is started).
 */
export async function ensureBashBase(): Promise<string> {
  const base = await ensureBaseImage();
  const recipe = createHash('sha256')
    .update(BASH_SHIM)
    .update(String((await stat(base)).mtimeMs))
    .digest('hex')
    .slice(0, 16);
  const stamp = `${BASH_BASE}.recipe`;
  const fresh = async () => (await readFile(stamp, 'utf8').catch(() => '')).trim() === recipe;
  if (await fresh()) return BASH_BASE;
  await withDirLock(join(TEST_CACHE_DIR, 'base-bash.lock'), async () => {
    if (await fresh()) return;
    const runtime = apptainerCommand() ?? 'apptainer';
    const work = await mkdtemp(join(TEST_CACHE_DIR, 'bash-build-'));
    try {
      const sandbox = join(work, 'rootfs');
      await execa(runtime, ['build', '--force', '--sandbox', sandbox, base]);
      await writeFile(join(sandbox, 'bin/bash'), BASH_SHIM, { mode: 0o755 });
      await execa(runtime, ['build', '--force', join(work, 'out.sif'), sandbox]);
      await chmod(join(work, 'out.sif'), 0o644);
      await rename(join(work, 'out.sif'), BASH_BASE);
      await writeFile(stamp, `${recipe}\n`, { mode: 0o644 });
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
  return BASH_BASE;
}

/**
 * A fresh temp dir holding `bin/overlayctl`: a script that runs the bundled CLI with this Node, as a
 * user installs it. Run `npm run build` first; the engines find overlayctl only through this PATH.
 */
export async function engineSandbox(
  prefix: string,
): Promise<{ tmp: string; bin: string; env: Record<string, string> }> {
  await stat(DIST_CLI).catch(() => {
    throw new Error(`${DIST_CLI} is missing: run npm run build`);
  });
  const tmp = await mkdtemp(join('/tmp', prefix));
  await chmod(tmp, 0o755);
  const bin = join(tmp, 'bin');
  await mkdir(bin);
  await writeFile(join(bin, 'overlayctl'), `#!/bin/sh\nexec '${process.execPath}' '${DIST_CLI}' "$@"\n`, {
    mode: 0o755,
  });
  const env = {
    PATH: [bin, dirname(process.execPath), SYSTEM_PATH].join(':'),
    HOME: process.env.HOME ?? '/root',
    LANG: 'C.UTF-8',
    TMPDIR: '/tmp',
  };
  return { tmp, bin, env };
}

/** Runs argv in cwd with exactly env; never throws on a non-zero exit. */
export async function run(
  argv: string[],
  cwd: string,
  env: Record<string, string>,
  extra: Record<string, string> = {},
) {
  const r = await execa(argv[0]!, argv.slice(1), {
    cwd,
    env: { ...env, ...extra },
    extendEnv: false,
    reject: false,
    all: true,
  });
  return {
    exitCode: r.exitCode ?? -1,
    stdout: String(r.stdout),
    stderr: String(r.stderr),
    all: String(r.all),
  };
}

/** An account of an engine run for assertion messages. */
export function describeRun(r: { exitCode: number; all: string }): string {
  return `exit ${r.exitCode}\n${r.all.slice(-6000)}`;
}

/** Builds an ext3 overlay with /opt/env/greeting and /opt/env/bin/hello, for real (overlayctl build). */
export async function buildEnvImage(
  image: string,
  base: string,
  env: Record<string, string>,
  greeting = 'hello from the overlay',
): Promise<Json> {
  const script = [
    'set -eu',
    'mkdir -p /opt/env/bin',
    `echo '${greeting}' > /opt/env/greeting`,
    `printf '#!/bin/sh\\necho "hello $1 from the overlay"\\n' > /opt/env/bin/hello`,
    'chmod 755 /opt/env/bin/hello',
  ].join('\n');
  const r = await run(
    [
      'overlayctl',
      'build',
      image,
      '--base',
      base,
      '--run',
      script,
      '--size',
      '64M',
      '--profile',
      'small',
      '--json',
    ],
    dirname(image),
    env,
  );
  if (r.exitCode !== 0) throw new Error(`overlayctl build failed: ${describeRun(r)}`);
  return JSON.parse(r.stdout);
}

/**
 * A container that holds `image` writable (Apptainer's exclusive lock) until stop() is called.
 * Resolves once the container runs (it prints a line from inside).
 */
export async function holdWritable(image: string, base: string): Promise<{ stop: () => Promise<void> }> {
  const runtime = apptainerCommand() ?? 'apptainer';
  const child: ChildProcess = spawn(
    runtime,
    ['exec', '--overlay', image, base, 'sh', '-c', 'echo inside; exec sleep 600'],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    },
  );
  let err = '';
  child.stderr?.on('data', (d) => {
    err += d;
  });
  await new Promise<void>((resolveReady, reject) => {
    child.stdout?.on('data', (d) => {
      if (String(d).includes('inside')) resolveReady();
    });
    child.on('exit', (code) =>
      reject(new Error(`container exited (${code}) before holding ${image}: ${err}`)),
    );
  });
  return {
    stop: async () => {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.on('exit', r));
      process.kill(-child.pid!, 'SIGTERM'); // our own process group (detached above)
      await exited;
    },
  };
}
