import { createHash } from 'node:crypto';
import { createReadStream, lstatSync } from 'node:fs';
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OverlayError } from '../errors';
import { replaceAtomically } from '../fs/atomic';
import { requireCleanForReadOnlyMount } from '../image/check';
import { copyImageFile } from '../image/copy';
import { requireExt3 } from '../image/format';
import { acquireLock } from '../lock/ofd';
import { readXattr } from '../tools/native';
import { requireTool, runTool } from '../tools/run';
import { withFuse2fs } from './fuse';
import { type LowerListing, lowerListing } from './lower';
import { OPAQUE_XATTRS, planDirectory, type UpperEntry } from './whiteouts';

export const COMPRESSIONS = ['zstd', 'gzip', 'lz4', 'xz'] as const;
export type Compression = (typeof COMPRESSIONS)[number];

export interface CommitOptions {
  image: string;
  output: string;
  compression: Compression;
  level?: number;
  reset: boolean;
  base?: string;
  layers: string[];
  onProgress?: (line: string) => void;
}

export interface CommitResult {
  layer: string;
  bytes: number;
  files: number;
  compression: Compression;
  sha256: string;
  seconds: number;
  whiteouts: number;
  reset: boolean;
  warnings: string[];
}

/** A path as mksquashfs pseudo definitions spell it (spaces and backslashes escaped). */
export const escapePseudo = (p: string) => p.replace(/([\\ ])/g, '\\$1');

const isOpaqueByXattr = (dir: string) => OPAQUE_XATTRS.some((x) => readXattr(dir, x)?.toString() === 'y');

/**
 * Walk upper/ and plan the portable layer: what to leave out, which 0:0 whiteouts to add.
 * One pass of readdir (d_type, no stat) plus an xattr read per directory, directories in parallel
 * (the thread pool overlaps the loop device's latency: 2x faster than a sequential walk), which
 * also warms the dentry cache for mksquashfs.
 */
async function planLayer(upper: string, lower: LowerListing | undefined) {
  const exclude: string[] = [];
  const pseudo: string[] = [];
  const warnings: string[] = [];
  let files = 0;
  let whiteouts = 0;
  const walk = async (rel: string): Promise<void> => {
    const dir = rel ? join(upper, rel) : upper;
    const entries: UpperEntry[] = [];
    for (const d of await readdir(dir, { withFileTypes: true })) {
      let kind: UpperEntry['kind'] = 'other';
      let whiteoutDevice = false;
      if (d.isDirectory()) kind = 'dir';
      else if (d.isFile()) kind = 'file';
      else if (d.isSymbolicLink()) kind = 'symlink';
      else if (d.isCharacterDevice()) {
        kind = 'chardev';
        whiteoutDevice = lstatSync(join(dir, d.name)).rdev === 0;
      }
      entries.push({ name: d.name, kind, whiteoutDevice });
    }
    const plan = planDirectory(
      entries,
      isOpaqueByXattr(dir),
      lower?.get(rel) ?? (lower ? new Set() : undefined),
    );
    if (plan.needsOpaqueXattr) {
      warnings.push(
        `/${rel} replaced a lower directory; give --base/--layer so every reader hides the old content (kept: the trusted.overlay.opaque flag, honoured by root readers only, when a root writer set it)`,
      );
    }
    const existingDevices = new Set(
      entries.filter((e) => e.kind === 'chardev' && e.whiteoutDevice).map((e) => e.name),
    );
    for (const name of plan.drop) exclude.push(rel ? `${rel}/${name}` : name);
    for (const name of plan.whiteouts) {
      whiteouts++;
      if (!existingDevices.has(name))
        pseudo.push(`${escapePseudo(rel ? `${rel}/${name}` : name)} c 0000 0 0 0 0`);
    }
    const dropped = new Set(plan.drop);
    const kept = entries.filter((e) => !dropped.has(e.name));
    files += kept.length;
    await Promise.all(
      kept.filter((e) => e.kind === 'dir').map((e) => walk(rel ? `${rel}/${e.name}` : e.name)),
    );
  };
  await walk('');
  return { exclude: exclude.sort(), pseudo: pseudo.sort(), warnings: warnings.sort(), files, whiteouts };
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk);
  return hash.digest('hex');
}

function compressionArgs(c: Compression, level?: number): string[] {
  const args = ['-comp', c];
  if (level === undefined) return args;
  if (c === 'lz4') return [...args, ...(level > 0 ? ['-Xhc'] : [])];
  if (c === 'xz') return args; // xz has presets only through -Xdict-size/-Xbcj; the level is ignored
  return [...args, '-Xcompression-level', String(level)];
}

/**
 * Freeze upper/ into a read-only SquashFS layer whose root is upper/'s content, with deletions in
 * the portable form (0:0 devices; explicit whiteouts for replaced directories when the lower stack
 * is known). The image is fsck-checked first, as it is on disk (the view a read-only mount gives),
 * then read through fuse2fs (unprivileged) or a kernel loop mount (root). With `reset`, upper/ and work/ are then emptied on a copy.
 */
export async function commitLayer(o: CommitOptions): Promise<CommitResult> {
  const started = Date.now();
  await requireExt3(o.image);
  const lock = await acquireLock(o.image, o.reset ? 'exclusive' : 'shared');
  try {
    await requireCleanForReadOnlyMount(o.image);
    const lower = o.base || o.layers.length ? await lowerListing(o.base, o.layers) : undefined;
    const work = await mkdtemp(join(tmpdir(), 'overlay-commit-'));
    let planned: Awaited<ReturnType<typeof planLayer>> | undefined;
    try {
      await withFuse2fs(o.image, 'ro', async (mnt) => {
        const upper = join(mnt, 'upper');
        if (!(await stat(upper).catch(() => null))?.isDirectory()) {
          throw new OverlayError('E_NOT_EXT3', `${o.image} has no upper/ directory`);
        }
        o.onProgress?.('planning whiteouts');
        planned = await planLayer(upper, lower);
        const excludeFile = join(work, 'exclude');
        const pseudoFile = join(work, 'pseudo');
        await writeFile(excludeFile, planned.exclude.map((p) => `${p}\n`).join(''));
        await writeFile(pseudoFile, planned.pseudo.map((p) => `${p}\n`).join(''));
        await replaceAtomically(o.output, async (tmp) => {
          o.onProgress?.(`mksquashfs (${o.compression})`);
          const args = [
            upper,
            tmp,
            '-noappend',
            '-no-progress',
            '-xattrs',
            '-ef',
            excludeFile,
            '-pf',
            pseudoFile,
          ];
          args.push(...compressionArgs(o.compression, o.level));
          // Root would copy trusted.overlay.* (opaque, origin, impure) into the layer, where an opaque
          // flag next to explicit whiteouts makes kernel readers list them as broken entries. Without
          // CAP_SYS_ADMIN those xattrs are invisible; keep them only when the opaque flag is the fallback.
          const keepTrusted = planned!.warnings.length > 0;
          if (process.getuid?.() === 0 && !keepTrusted) {
            await runTool(
              'setpriv',
              ['--bounding-set=-sys_admin', '--', requireTool('mksquashfs'), ...args],
              {
                onLine: o.onProgress,
                timeoutSeconds: 3600,
              },
            );
          } else await runTool('mksquashfs', args, { onLine: o.onProgress, timeoutSeconds: 3600 });
        });
      });
    } finally {
      await rm(work, { recursive: true, force: true });
    }
    if (o.reset) {
      o.onProgress?.('reset: emptying upper/ and work/');
      await replaceAtomically(o.image, async (tmp) => {
        await copyImageFile(o.image, tmp);
        await withFuse2fs(tmp, 'rw', async (mnt) => {
          for (const dir of ['upper', 'work']) {
            for (const name of await readdir(join(mnt, dir)))
              await rm(join(mnt, dir, name), { recursive: true, force: true });
          }
        });
        // discard punches every free block out of the file: the deleted files' bytes leave the
        // image (a sparse file again) instead of lingering where pack or a copy would read them
        await runTool('e2fsck', ['-fy', '-E', 'discard', tmp], { okExitCodes: [1, 2] });
      });
    }
    const bytes = (await stat(o.output)).size;
    return {
      layer: o.output,
      bytes,
      files: planned!.files,
      compression: o.compression,
      sha256: await sha256File(o.output),
      seconds: Math.round((Date.now() - started) / 100) / 10,
      whiteouts: planned!.whiteouts,
      reset: o.reset,
      warnings: planned!.warnings,
    };
  } finally {
    lock.release();
  }
}
