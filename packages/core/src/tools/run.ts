import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { execa, type Options, type Result, type ResultPromise } from 'execa';
import { isOverlayError, OverlayError } from '../errors';

/** Debian/Ubuntu package that ships each program we spawn (named in E_TOOL_MISSING). */
export const TOOL_PACKAGES: Record<string, string> = {
  'mkfs.ext3': 'e2fsprogs',
  mke2fs: 'e2fsprogs',
  e2fsck: 'e2fsprogs',
  resize2fs: 'e2fsprogs',
  debugfs: 'e2fsprogs',
  dumpe2fs: 'e2fsprogs',
  tune2fs: 'e2fsprogs',
  e2image: 'e2fsprogs',
  mksquashfs: 'squashfs-tools',
  unsquashfs: 'squashfs-tools',
  fuse2fs: 'fuse2fs',
  squashfuse: 'squashfuse',
  'fuse-overlayfs': 'fuse-overlayfs',
  fusermount: 'fuse',
  fusermount3: 'fuse3',
  unshare: 'util-linux',
  mount: 'mount',
  umount: 'mount',
  losetup: 'mount',
  zstd: 'zstd',
  fallocate: 'util-linux',
  getfattr: 'attr',
  setpriv: 'util-linux',
  cp: 'coreutils',
  tar: 'tar',
  apptainer: 'apptainer (see scripts/setup-host.sh)',
  singularity: 'singularity-ce',
};

/** Default time bounds per tool, in seconds; OVERLAY_TOOL_TIMEOUT (seconds) overrides them all. */
const DEFAULT_TIMEOUT_S: Record<string, number> = {
  e2fsck: 1800,
  resize2fs: 1800,
  mksquashfs: 3600,
  unsquashfs: 3600,
  tar: 3600,
  zstd: 3600,
};
const FALLBACK_TIMEOUT_S = 600;

// /usr/sbin is missing from unprivileged users' PATH on Debian, yet mkfs.ext3 and debugfs live there.
const EXTRA_DIRS = ['/usr/local/sbin', '/usr/sbin', '/sbin'];
const resolved = new Map<string, string | null>();

export function findTool(name: string, env: NodeJS.ProcessEnv = process.env): string | null {
  const key = `${name}\0${env.PATH ?? ''}`;
  if (resolved.has(key)) return resolved.get(key)!;
  const dirs = [...(env.PATH ?? '').split(delimiter).filter(Boolean), ...EXTRA_DIRS];
  let found: string | null = null;
  for (const dir of dirs) {
    try {
      accessSync(join(dir, name), constants.X_OK);
      found = join(dir, name);
      break;
    } catch {}
  }
  resolved.set(key, found);
  return found;
}

export function requireTool(name: string, env?: NodeJS.ProcessEnv): string {
  const path = findTool(name, env);
  if (!path) {
    const pkg = TOOL_PACKAGES[name] ?? name;
    throw new OverlayError('E_TOOL_MISSING', `${name} is not installed (install the "${pkg}" package)`, {
      hint: `apt-get install ${pkg.split(' ')[0]}  (or run scripts/setup-host.sh)`,
      details: { tool: name, package: pkg },
    });
  }
  return path;
}

export interface RunToolOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  input?: string | Buffer;
  /** Seconds; 0 disables the bound. Default per tool, overridable with OVERLAY_TOOL_TIMEOUT. */
  timeoutSeconds?: number;
  /** Non-zero exit codes that are results, not failures (e2fsck uses 1, 2, 4...). */
  okExitCodes?: number[];
  /** Called with each stderr/stdout line as it arrives (progress for long runs). */
  onLine?: (line: string) => void;
  /** Pass the child's stdio straight through (builds, exec). */
  inherit?: boolean;
  /** Keep binary stdout as Buffer. */
  binary?: boolean;
  stdout?: Options['stdout'];
  stdin?: Options['stdin'];
  /**
   * Stream through the child while it runs (write its stdin, read its stdout): called once the
   * child is spawned; its stdout is then not buffered. If `use` fails the child is killed.
   */
  use?: (child: ResultPromise) => Promise<void>;
}

export interface ToolResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  stdoutBuffer?: Uint8Array;
}

/** With OVERLAY_TRACE set, print how long a step took (stderr); the step's result either way. */
export async function traced<T>(label: string, step: () => Promise<T> | T): Promise<T> {
  if (!process.env.OVERLAY_TRACE) return step();
  const started = process.hrtime.bigint();
  try {
    return await step();
  } finally {
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    process.stderr.write(`[trace] ${label}: ${ms.toFixed(0)} ms\n`);
  }
}

export function toolTimeoutSeconds(name: string, override?: number): number {
  if (override !== undefined) return override;
  const env = Number(process.env.OVERLAY_TOOL_TIMEOUT);
  if (Number.isFinite(env) && env > 0) return env;
  return DEFAULT_TIMEOUT_S[name] ?? FALLBACK_TIMEOUT_S;
}

function tail(text: string, lines = 8): string {
  return text.trim().split('\n').slice(-lines).join('\n');
}

/**
 * The one place that spawns external programs: argv arrays only, a time bound that kills the
 * child, and failures mapped to E_TOOL_MISSING / E_TOOL_FAILED / E_TIMEOUT with the stderr tail.
 */
export async function runTool(name: string, args: string[], opts: RunToolOptions = {}): Promise<ToolResult> {
  const file = requireTool(name, opts.env);
  const timeout = toolTimeoutSeconds(name, opts.timeoutSeconds);
  const lines = opts.onLine;
  const started = process.hrtime.bigint();
  let result: Result;
  try {
    const child = execa(file, args, {
      cwd: opts.cwd,
      env: opts.env,
      extendEnv: opts.env === undefined,
      input: opts.input,
      reject: false,
      timeout: timeout > 0 ? timeout * 1000 : undefined,
      killSignal: 'SIGKILL',
      stdin: opts.inherit ? 'inherit' : opts.stdin,
      stdout: opts.stdout ?? (opts.inherit ? 'inherit' : 'pipe'),
      stderr: opts.inherit ? 'inherit' : 'pipe',
      encoding: opts.binary ? 'buffer' : 'utf8',
      buffer: { stdout: !opts.use, stderr: true },
      stripFinalNewline: false,
      maxBuffer: 512 * 1024 * 1024,
    });
    if (lines && !opts.inherit) {
      for (const stream of [child.stdout, child.stderr]) {
        let buf = '';
        stream?.on('data', (d: Buffer) => {
          buf += d.toString();
          const parts = buf.split(/\r?\n|\r/);
          buf = parts.pop() ?? '';
          for (const p of parts) if (p.trim()) lines(p);
        });
      }
    }
    if (opts.use) {
      let killed = false;
      const using = opts.use(child).catch((e) => {
        killed = child.kill('SIGKILL');
        // unread output would keep the child's streams (and so its promise) open forever
        child.stdout?.destroy();
        child.stdin?.destroy();
        throw e;
      });
      const [r, u] = await Promise.allSettled([child, using]);
      result = (r as PromiseFulfilledResult<Result>).value;
      // a child that failed on its own is the root cause (reported below); otherwise `use` failed
      if (u.status === 'rejected' && (killed || result.exitCode === 0)) {
        throw isOverlayError(u.reason)
          ? u.reason
          : new OverlayError('E_TOOL_FAILED', `${name}: ${(u.reason as Error).message}`, { cause: u.reason });
      }
    } else result = await child;
  } catch (e) {
    if (isOverlayError(e)) throw e;
    throw new OverlayError('E_TOOL_FAILED', `${name} could not be started: ${(e as Error).message}`, {
      cause: e,
    });
  }
  if (process.env.OVERLAY_TRACE) {
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    process.stderr.write(`[trace] ${name} ${args.slice(0, 3).join(' ')}: ${ms.toFixed(0)} ms\n`);
  }
  const stdout = opts.binary ? '' : String(result.stdout ?? '');
  const stderr = String(result.stderr ?? '');
  if (result.timedOut) {
    throw new OverlayError('E_TIMEOUT', `${name} exceeded its ${timeout}s time bound and was killed`, {
      hint: 'raise the bound with OVERLAY_TOOL_TIMEOUT=SECONDS',
      details: { tool: name, args, timeoutSeconds: timeout },
    });
  }
  const exitCode = result.exitCode ?? -1;
  if (exitCode !== 0 && !(opts.okExitCodes ?? []).includes(exitCode)) {
    const why = result.signal ? `killed by ${result.signal}` : `exit ${exitCode}`;
    const err = tail(stderr) || tail(stdout);
    if (/No space left on device/i.test(err)) {
      throw new OverlayError('E_NO_SPACE', `${name}: no space left on device`, { details: { tool: name } });
    }
    throw new OverlayError('E_TOOL_FAILED', `${name} failed (${why})${err ? `: ${err}` : ''}`, {
      details: { tool: name, args, exitCode, stderr: tail(stderr, 20) },
    });
  }
  return {
    exitCode,
    stdout,
    stderr,
    stdoutBuffer: opts.binary ? (result.stdout as unknown as Uint8Array) : undefined,
  };
}
