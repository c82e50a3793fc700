import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { OverlayError } from '../errors';
import { exists, replaceAtomically } from '../fs/atomic';
import { runTool } from '../tools/run';
import { findRuntime } from '../tools/runtime';

/** Reference schemes pulled with `apptainer pull`; anything else is a local SIF or sandbox dir. */
export const PULL_SCHEMES = ['docker', 'oras', 'library', 'https', 'http', 'shub'] as const;

export function isReference(base: string): boolean {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(base);
}

/** Pulled base images live here: OVERLAY_CACHE_DIR, else $XDG_CACHE_HOME/overlay-action/images. */
export function imageCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.OVERLAY_CACHE_DIR) return resolve(env.OVERLAY_CACHE_DIR);
  return join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'overlay-action', 'images');
}

/** The content key of a reference: its SHA-256, so one reference is pulled once per cache. */
export function baseCacheKey(reference: string): string {
  return createHash('sha256').update(reference).digest('hex');
}

export interface ResolvedBase {
  /** What the runtime runs: a local SIF file or sandbox directory. */
  path: string;
  /** The reference it came from, when it was pulled (or found pulled in the cache). */
  reference?: string;
  pulled: boolean;
}

/**
 * A base image the runtime can run directly. Local paths must exist; references are pulled once
 * with `apptainer pull` into the cache (temp name + rename, so a crash never leaves a partial
 * image under the key) and reused from then on.
 */
export async function resolveBase(
  base: string,
  opts: { cacheDir?: string; onProgress?: (line: string) => void } = {},
): Promise<ResolvedBase> {
  if (!isReference(base)) {
    const path = resolve(base);
    const st = await fsp.stat(path).catch(() => null);
    if (!st || !(st.isFile() || st.isDirectory())) {
      throw new OverlayError('E_NOT_FOUND', `base image ${base} does not exist`, {
        hint: 'give a SIF file, a sandbox directory, or a reference such as docker://debian:bookworm-slim',
      });
    }
    return { path, pulled: false };
  }
  const scheme = base.slice(0, base.indexOf(':')).toLowerCase();
  if (!(PULL_SCHEMES as readonly string[]).includes(scheme)) {
    throw new OverlayError('E_INVALID_INPUT', `--base: unsupported reference scheme ${scheme}://`, {
      hint: `use one of ${PULL_SCHEMES.map((s) => `${s}://`).join(', ')}, or a local SIF file`,
    });
  }
  const dir = opts.cacheDir ?? imageCacheDir();
  const path = join(dir, `${baseCacheKey(base)}.sif`);
  if (await exists(path)) return { path, reference: base, pulled: false };
  const runtime = findRuntime();
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  opts.onProgress?.(`pulling ${base} into ${dir}`);
  await replaceAtomically(
    path,
    async (tmp) => {
      await runTool(runtime.name, ['pull', '--disable-cache', tmp, base], {
        timeoutSeconds: 3600,
        onLine: opts.onProgress,
      }).catch((e) => {
        throw new OverlayError('E_TOOL_FAILED', `could not pull ${base}: ${(e as Error).message}`, {
          hint: 'check the reference and the network (or pre-pull it and pass the SIF path)',
          cause: e,
        });
      });
    },
    { precreate: false },
  );
  // the reference beside its image, for people looking into the cache directory
  await fsp.writeFile(`${path}.ref`, `${base}\n`).catch(() => {});
  return { path, reference: base, pulled: true };
}
