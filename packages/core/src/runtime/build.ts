import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { resolveBase } from '../base/resolve';
import { OverlayError } from '../errors';
import { exists, replaceAtomically } from '../fs/atomic';
import { checkImage } from '../image/check';
import { type CreateOptions, createImage } from '../image/create';
import { isSifFile } from '../image/format';
import { type ImageInfo, imageInfo } from '../image/info';
import { normalizeImage } from '../layer/normalize';
import { withLock } from '../lock/ofd';
import { runTool } from '../tools/run';
import { type FakerootMode, runInContainer, sameFile } from './exec';

/** Where the build script appears inside the container (a bind: nothing is written to the image). */
export const SCRIPT_IN_CONTAINER = '/.overlayctl/build.sh';

export interface BuildOptions {
  image: string;
  base: string;
  /** Exactly one of: script text, a script file on the host, a shell command line. */
  script?: string;
  scriptFile?: string;
  run?: string;
  layers?: string[];
  binds?: string[];
  env?: Record<string, string>;
  pwd?: string;
  fakeroot?: FakerootMode;
  /** Rewrite deletion markers into the portable form after the build (default true). */
  normalize?: boolean;
  /** How to create the image when it is missing. */
  create?: Omit<CreateOptions, 'path' | 'force' | 'onProgress'>;
  /** Phases and every line the build prints (stdout and stderr). */
  onProgress?: (line: string) => void;
}

export interface BuildResult {
  image: string;
  exitCode: number;
  created: boolean;
  fakeroot: boolean;
  durationMs: number;
  buildMs: number;
  check: { status: string; problems: string[] };
  info: ImageInfo;
}

/** The check after a build: the same metadata-copy e2fsck as `overlayctl check`. */
export async function checkBuilt(path: string): Promise<{ status: string; problems: string[] }> {
  const r = await checkImage(path);
  return { status: r.status, problems: r.problems };
}

/**
 * Run a build inside the overlay, writable, without ever leaving a half-built image: the build
 * runs on a sparse copy next to the image (or on a new image under a temporary name) and the copy
 * replaces the image only when the build succeeded and the filesystem checks clean. The original
 * is held under an exclusive lock meanwhile (Apptainer locks the copy it mounts).
 */
export async function buildInOverlay(o: BuildOptions): Promise<BuildResult> {
  const given = [o.script, o.scriptFile, o.run].filter((x) => x !== undefined);
  if (given.length !== 1)
    throw new OverlayError('E_INVALID_INPUT', 'give exactly one of --script FILE or --run COMMAND');
  const started = Date.now();
  const image = resolve(o.image);
  const progress = o.onProgress ?? ((line: string) => process.stderr.write(`${line}\n`));
  let scriptFile = o.scriptFile === undefined ? undefined : resolve(o.scriptFile);
  if (scriptFile) {
    const st = await fsp.stat(scriptFile).catch(() => null);
    if (!st?.isFile()) throw new OverlayError('E_NOT_FOUND', `build script ${o.scriptFile} does not exist`);
  }
  const created = !(await exists(image));
  if (created && !o.create)
    throw new OverlayError('E_NOT_FOUND', `${o.image} does not exist`, { hint: 'create it first' });
  // pull (or check) the base before any image is touched
  const base = await resolveBase(o.base, { onProgress: progress });
  // a SIF built on itself: the copy is both base and overlay (apptainer exec --writable copy.sif)
  const sif = !created && (await isSifFile(image));
  const sifSelf = sif && sameFile(base.path, image);

  let tempDir: string | undefined;
  if (o.script !== undefined) {
    tempDir = await fsp.mkdtemp(join(tmpdir(), 'overlayctl-build-'));
    scriptFile = join(tempDir, 'build.sh');
    await fsp.writeFile(scriptFile, o.script, { mode: 0o644 });
  }
  const command =
    o.run !== undefined ? ['/bin/sh', '-e', '-c', o.run] : ['/bin/sh', '-e', SCRIPT_IN_CONTAINER];
  const binds = [...(o.binds ?? []), ...(scriptFile ? [`${scriptFile}:${SCRIPT_IN_CONTAINER}:ro`] : [])];

  const unchanged = created ? `${o.image} was not created` : `${o.image} was left as it was`;
  let fakeroot = false;
  let buildMs = 0;
  let check = { status: 'clean', problems: [] as string[] };
  const buildOn = async (path: string) => {
    progress(`building in ${created ? `new image ${o.image}` : `a copy of ${o.image}`} on ${o.base}`);
    const t0 = Date.now();
    const r = await runInContainer({
      image: path,
      base: sifSelf ? path : base.path,
      layers: o.layers,
      binds,
      env: o.env,
      pwd: o.pwd,
      fakeroot: o.fakeroot ?? 'auto',
      command,
      stdout: 'lines',
      stdin: 'ignore',
      onLine: progress,
    });
    buildMs = Date.now() - t0;
    fakeroot = r.fakeroot;
    if (r.exitCode !== 0) {
      const tail = r.stderr.trim().split('\n').slice(-5).join('\n');
      throw new OverlayError('E_BUILD_FAILED', `the build exited ${r.exitCode}; ${unchanged}`, {
        details: { exitCode: r.exitCode, stderrTail: tail },
      });
    }
    if (o.normalize !== false && !sif) {
      progress('normalizing deletion markers (portable for every reader)');
      const n = await normalizeImage(path, { base: base.path, layers: o.layers });
      for (const w of n.warnings) progress(`warning: ${w}`);
    }
    progress(`checking the built filesystem`);
    check = await checkBuilt(path);
    if (check.status !== 'clean') {
      throw new OverlayError('E_INTEGRITY', `the built image is ${check.status}; ${unchanged}`, {
        details: { problems: check.problems },
      });
    }
  };

  try {
    if (created) {
      await replaceAtomically(
        image,
        async (tmp) => {
          await createImage({ ...o.create!, path: tmp, force: false, onProgress: progress });
          await buildOn(tmp);
        },
        { precreate: false },
      );
    } else {
      await withLock(image, 'exclusive', () =>
        replaceAtomically(image, async (tmp) => {
          progress(`copying ${o.image} (sparse)`);
          await runTool('cp', ['--sparse=always', image, tmp], { timeoutSeconds: 3600 });
          const st = await fsp.stat(image);
          await fsp.chmod(tmp, st.mode & 0o7777);
          if (process.getuid?.() === 0) await fsp.chown(tmp, st.uid, st.gid);
          await buildOn(tmp);
        }),
      );
    }
  } finally {
    if (tempDir) await fsp.rm(tempDir, { recursive: true, force: true });
  }
  return {
    image,
    exitCode: 0,
    created,
    fakeroot,
    durationMs: Date.now() - started,
    buildMs,
    check,
    info: await imageInfo(image),
  };
}
