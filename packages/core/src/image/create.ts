import { createWriteStream, promises as fsp } from 'node:fs';
import { dirname } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fromFsError, OverlayError } from '../errors';
import { exists, replaceAtomically } from '../fs/atomic';
import { withLock } from '../lock/ofd';
import { runTool } from '../tools/run';
import { debugfsQuote, runDebugfs } from './debugfs';
import { isSifFile, requireExt3 } from './format';
import { type ImageInfo, imageInfo } from './info';

export const PROFILES = {
  small: { inodeRatio: 4096, description: '4 KiB per inode: conda environments, Python site-packages' },
  default: { inodeRatio: 16384, description: '16 KiB per inode: general applications' },
  large: { inodeRatio: 1048576, description: '1 MiB per inode: reference genomes, databases' },
} as const;
export type ProfileName = keyof typeof PROFILES;

export interface Owner {
  uid: number;
  gid: number;
}

export interface CreateOptions {
  path: string;
  sizeBytes: number;
  inodeRatio: number;
  reservedPercent: number;
  sparse: boolean;
  owner: Owner;
  /** Absolute container paths made under upper/ with the same owner (Apptainer's --create-dir). */
  createDirs: string[];
  force: boolean;
  onProgress?: (line: string) => void;
}

export function currentOwner(): Owner {
  return { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
}

/** Every directory to make under upper/, parents first, without duplicates. */
export function upperDirsFor(createDirs: string[]): string[] {
  const dirs = new Set<string>();
  for (const dir of createDirs) {
    const parts = dir.split('/').filter(Boolean);
    for (let i = 1; i <= parts.length; i++) dirs.add(`/upper/${parts.slice(0, i).join('/')}`);
  }
  return [...dirs];
}

async function allocate(path: string, size: number): Promise<void> {
  try {
    await runTool('fallocate', ['-l', String(size), path], { timeoutSeconds: 600 });
  } catch (e) {
    if ((e as OverlayError).code === 'E_NO_SPACE') throw e;
    // filesystems without fallocate (some NFS, tmpfs variants): write real zeros
    const chunk = Buffer.alloc(4 * 1024 * 1024);
    async function* zeros() {
      for (let left = size; left > 0; left -= chunk.length)
        yield left >= chunk.length ? chunk : chunk.subarray(0, left);
    }
    await pipeline(zeros(), createWriteStream(path, { flags: 'r+' }));
  }
}

/**
 * Build an Apptainer-compatible ext3 overlay (upper/ + work/, 0755, owned by `owner`) under a
 * temporary name and rename it into place. Unprivileged: mkfs on a file, ownership via debugfs.
 */
export async function createImage(opts: CreateOptions): Promise<ImageInfo> {
  const parent = dirname(opts.path);
  const parentStat = await fsp.stat(parent).catch((e) => {
    throw fromFsError(e, parent);
  });
  if (!parentStat.isDirectory()) throw new OverlayError('E_NOT_FOUND', `${parent} is not a directory`);
  const present = await exists(opts.path);
  // an existing SIF gets an overlay partition, like `apptainer overlay create app.sif`
  if (present && (await isSifFile(opts.path))) return (await import('../sif/overlay')).createSifOverlay(opts);
  if (present && !opts.force) {
    throw new OverlayError('E_EXISTS', `${opts.path} already exists`, { hint: 'pass --force to replace it' });
  }
  const build = () =>
    replaceAtomically(opts.path, async (tmp) => {
      const { uid, gid } = opts.owner;
      opts.onProgress?.(`${opts.sparse ? 'sizing' : 'allocating'} ${opts.sizeBytes} bytes`);
      if (opts.sparse) await fsp.truncate(tmp, opts.sizeBytes);
      else await allocate(tmp, opts.sizeBytes);
      const extended = [`root_owner=${uid}:${gid}`, ...(opts.sparse ? [] : ['nodiscard'])];
      opts.onProgress?.('mkfs.ext3');
      await runTool('mkfs.ext3', [
        '-F',
        '-q',
        '-b',
        '4096',
        '-I',
        '256',
        '-i',
        String(opts.inodeRatio),
        '-m',
        String(opts.reservedPercent),
        '-E',
        extended.join(','),
        tmp,
      ]);
      const dirs = ['/upper', '/work', ...upperDirsFor(opts.createDirs)];
      const cmds: string[] = [];
      for (const d of dirs) {
        const q = debugfsQuote(d);
        cmds.push(`mkdir ${q}`, `sif ${q} mode 040755`, `sif ${q} uid ${uid}`, `sif ${q} gid ${gid}`);
      }
      opts.onProgress?.('debugfs: upper/ work/');
      await runDebugfs(tmp, cmds, { write: true });
      await requireExt3(tmp); // refuse to publish anything Apptainer would reject
    });
  if (present) await withLock(opts.path, 'exclusive', build);
  else await build();
  return imageInfo(opts.path);
}
