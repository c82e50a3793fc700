import { realpathSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { resolveBase } from '../base/resolve';
import { OverlayError } from '../errors';
import { statInImage } from '../image/debugfs';
import { detectFormat, isSifFile, requireExt3 } from '../image/format';
import { awaitLockFree, finishInterruptedEdits } from '../lock/ofd';
import { overlayPartitions, readSif } from '../sif/format';
import { requireSifLayer } from '../sif/layer';
import { findSifOverlay, overlayLockRange, partitionDevice } from '../sif/overlay';
import { findTool, runTool } from '../tools/run';
import { findRuntime, type Runtime } from '../tools/runtime';
import { diagnoseRuntimeFailure } from './diagnose';

export type FakerootMode = 'auto' | boolean;

export interface RunOptions {
  /** The ext3 overlay (writable unless `ro`); it goes last, on top of every layer. */
  image: string;
  ro?: boolean;
  /** Read-only layers (SquashFS or ext3), bottom first: a later layer covers an earlier one. */
  layers?: string[];
  fakeroot?: FakerootMode;
  /** `SRC[:DST[:OPTS]]`, passed to --bind as given. */
  binds?: string[];
  env?: Record<string, string>;
  /** Working directory inside the container. */
  pwd?: string;
  /** SIF file, sandbox directory or reference (docker://, oras://, library://, https://). */
  base: string;
  command: string[];
  /**
   * The command's stdout: passed through (default), sent to our stderr as it is (`--json`), sent line by line to `onLine` with stderr
   * (builds: keeps the caller's stdout clean), or captured and returned (stderr then is not
   * streamed, only returned).
   */
  stdout?: 'inherit' | 'stderr' | 'lines' | 'capture';
  /** stdin: passed through (default) or /dev/null (builds). */
  stdin?: 'inherit' | 'ignore';
  /** Each output line (stderr; also stdout when it is not passed through). Default: printed to stderr. */
  onLine?: (line: string) => void;
  onProgress?: (line: string) => void;
  /** Seconds; none by default. */
  timeoutSeconds?: number;
}

export interface RunResult {
  exitCode: number;
  fakeroot: boolean;
  /** What merges the stack: the kernel's overlayfs, or fuse-overlayfs (Apptainer's image driver). */
  overlayReader: 'kernel' | 'fuse-overlayfs';
  /** The runtime's argv (for logs and --json). */
  argv: string[];
  durationMs: number;
  stdout?: string;
  stderr: string;
}

const UNSAFE_OVERLAY_PATH = /[:,\0\n\r]/;

/**
 * condatainer's rule: an unprivileged caller needs --fakeroot when upper/ belongs to root or to
 * another user; root never does. Read from the image without mounting it (debugfs).
 */
export async function chooseFakeroot(
  image: string,
  opts: { ro?: boolean; uid?: number } = {},
): Promise<{ fakeroot: boolean; upperUid: number | null }> {
  const uid = opts.uid ?? process.getuid?.() ?? 0;
  if (uid === 0 || opts.ro) return { fakeroot: false, upperUid: null };
  const upper = await statInImage(image, '/upper');
  if (!upper) return { fakeroot: false, upperUid: null };
  return { fakeroot: upper.uid === 0 || upper.uid !== uid, upperUid: upper.uid };
}

function checkOverlayPath(path: string, what: string): string {
  if (UNSAFE_OVERLAY_PATH.test(path)) {
    throw new OverlayError(
      'E_INVALID_INPUT',
      `${what} ${JSON.stringify(path)}: ':' and ',' are not allowed`,
      {
        hint: 'Apptainer splits --overlay values at those characters; rename or link the file',
      },
    );
  }
  return resolve(path);
}

/** The argv of `apptainer exec` for these options (base already resolved to a local path). */
export function execArgs(o: {
  image: string;
  ro: boolean;
  layers: string[];
  fakeroot: boolean;
  binds: string[];
  env: Record<string, string>;
  pwd?: string;
  base: string;
  command: string[];
  /** The image is a SIF with an embedded overlay and also the base: Apptainer's `--writable`. */
  sifSelf?: boolean;
}): string[] {
  const args = ['exec'];
  if (o.sifSelf) {
    for (const layer of o.layers) args.push('--overlay', `${layer}:ro`);
    if (!o.ro) args.push('--writable'); // without it Apptainer mounts the embedded overlay read-only
    if (o.fakeroot) args.push('--fakeroot');
    for (const bind of o.binds) args.push('--bind', bind);
    for (const [k, v] of Object.entries(o.env)) args.push('--env', `${k}=${v}`);
    if (o.pwd) args.push('--pwd', o.pwd);
    args.push(o.image, ...o.command);
    return args;
  }
  for (const layer of o.layers) args.push('--overlay', `${layer}:ro`);
  args.push('--overlay', o.ro ? `${o.image}:ro` : o.image);
  if (o.fakeroot) args.push('--fakeroot');
  for (const bind of o.binds) args.push('--bind', bind);
  for (const [k, v] of Object.entries(o.env)) args.push('--env', `${k}=${v}`);
  if (o.pwd) args.push('--pwd', o.pwd);
  args.push(o.base, ...o.command);
  return args;
}

/**
 * A runtime configuration that stacks overlays with fuse-overlayfs (`enable overlay = driver`),
 * or undefined when the installation does not allow one (setuid: only root may pass --config) or
 * fuse-overlayfs is missing. Why: an unprivileged `:ro` stack of an ext3 image is kernel overlayfs
 * over fuse2fs, and fuse2fs reports no file types in readdir (DT_UNKNOWN), so overlayfs never
 * checks an entry for being a whiteout: deleted names are listed (and fail to open).
 * fuse-overlayfs checks every entry. Returns the file and how to remove it.
 */
export async function driverOverlayConfig(
  runtime: Runtime,
): Promise<{ file: string; cleanup: () => Promise<void> } | undefined> {
  if (!findTool('fuse-overlayfs')) return undefined;
  const cfg = await runTool(runtime.name, ['buildcfg'], { timeoutSeconds: 60 }).catch(() => undefined);
  const conf = /^\w+_CONF_FILE=(.+)$/m.exec(cfg?.stdout ?? '')?.[1];
  if (!conf || /^\w+_SUID_INSTALL=1$/m.test(cfg?.stdout ?? '')) return undefined;
  const text = await readFile(conf, 'utf8').catch(() => undefined);
  if (text === undefined || /^\s*enable overlay\s*=\s*no\s*$/m.test(text)) return undefined;
  const line = /^\s*enable overlay\s*=.*$/m;
  const driver = 'enable overlay = driver';
  const dir = await mkdtemp(join(tmpdir(), 'overlay-conf-'));
  const file = join(dir, 'apptainer.conf');
  await writeFile(file, line.test(text) ? text.replace(line, driver) : `${text}\n${driver}\n`, {
    mode: 0o644,
  });
  return { file, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/**
 * Run a command in a container with the overlay mounted (writable unless `ro`) over the base and
 * the read-only layers. Output streams live; stderr is also kept, so a runtime failure becomes
 * E_LOCKED / E_RUNTIME_FAILED with a hint. Returns the command's exit status.
 */
export async function runInContainer(o: RunOptions): Promise<RunResult> {
  if (!o.command.length) throw new OverlayError('E_INVALID_INPUT', 'no command given (put it after --)');
  for (const [k] of Object.entries(o.env ?? {})) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
      throw new OverlayError('E_INVALID_INPUT', `--env: ${JSON.stringify(k)} is not a variable name`);
  }
  const image = checkOverlayPath(o.image, 'image');
  const layers = (o.layers ?? []).map((l) => checkOverlayPath(l, 'layer'));
  const runtime = findRuntime();
  const ro = o.ro ?? false;
  // a SIF with an embedded overlay: the overlay partition is the image (locked by its byte range)
  const sifOverlay = (await isSifFile(image)) ? (await findSifOverlay(image)).overlay : null;
  if (sifOverlay) {
    // findSifOverlay found an ext3 overlay partition; Apptainer checks its superblock itself
  } else if (ro) await detectFormat(image);
  else await requireExt3(image);
  for (const layer of layers) {
    if (await isSifFile(layer))
      await requireSifLayer(layer); // registry layers come as SIFs
    else await detectFormat(layer);
  }
  // Apptainer takes the lock itself (on a SIF: the overlay partition's byte range): wait (up to
  // --wait) until it can, or fail with E_LOCKED now
  await awaitLockFree(image, ro ? 'shared' : 'exclusive', {
    range: sifOverlay ? overlayLockRange(sifOverlay) : undefined,
  });
  if (!sifOverlay) await finishInterruptedEdits(image);
  const fakeroot =
    o.fakeroot === undefined || o.fakeroot === 'auto'
      ? (await chooseFakeroot((sifOverlay && partitionDevice(image, sifOverlay)) || image, { ro })).fakeroot
      : o.fakeroot;
  const base = await resolveBase(o.base, { onProgress: o.onProgress });
  const sifSelf = !!sifOverlay && sameFile(base.path, image);
  if (sifSelf && layers.length && !ro)
    throw new OverlayError(
      'E_INVALID_INPUT',
      'read-only layers cannot be added to a SIF run with its own writable overlay',
      {
        hint: 'Apptainer refuses --overlay with --writable; extract the overlay (overlayctl extract) to use layers',
      },
    );
  // an unprivileged read-only stack holding an ext3 image: let fuse-overlayfs merge it (see above)
  const ext3InStack =
    ro &&
    process.getuid?.() !== 0 &&
    (await Promise.all([image, ...layers].map((p) => stackFormat(p)))).some((f) => f.startsWith('ext'));
  const driver = ext3InStack ? await driverOverlayConfig(runtime) : undefined;
  const args = execArgs({
    image,
    ro,
    layers,
    fakeroot,
    binds: o.binds ?? [],
    env: o.env ?? {},
    pwd: o.pwd,
    base: base.path,
    command: o.command,
    sifSelf,
  });
  if (driver) args.unshift('--config', driver.file);
  const stdout = o.stdout ?? 'inherit';
  const onLine = o.onLine ?? ((line: string) => process.stderr.write(`${line}\n`));
  const started = Date.now();
  // Ctrl-C reaches the container through the terminal: wait for it to exit instead of dying first
  const waitForChild = () => {};
  process.on('SIGINT', waitForChild);
  const result = await runTool(runtime.name, args, {
    timeoutSeconds: o.timeoutSeconds ?? 0,
    okExitCodes: Array.from({ length: 255 }, (_, i) => i + 1),
    stdin: o.stdin ?? 'inherit',
    stdout: stdout === 'inherit' ? 'inherit' : stdout === 'stderr' ? 2 : 'pipe',
    onLine: stdout === 'capture' ? undefined : onLine,
  }).finally(() => {
    process.off('SIGINT', waitForChild);
    return driver?.cleanup();
  });
  const durationMs = Date.now() - started;
  if (result.exitCode === 255) {
    const err = diagnoseRuntimeFailure(result.stderr, { image, runtime: runtime.name });
    if (err) {
      if (err.details) err.details.argv = [runtime.name, ...args];
      throw err;
    }
  }
  return {
    exitCode: result.exitCode,
    fakeroot,
    overlayReader: driver ? 'fuse-overlayfs' : 'kernel',
    argv: [runtime.name, ...args],
    durationMs,
    stdout: stdout === 'capture' ? result.stdout : undefined,
    stderr: result.stderr,
  };
}

export function sameFile(a: string, b: string): boolean {
  try {
    return realpathSync(a) === realpathSync(b);
  } catch {
    return false;
  }
}

/** The format a stack member contributes; a SIF counts as ext3 when it holds an ext3 overlay. */
async function stackFormat(path: string): Promise<string> {
  if (!(await isSifFile(path))) return (await detectFormat(path)).format;
  return overlayPartitions(await readSif(path)).length ? 'ext3' : 'squashfs';
}
