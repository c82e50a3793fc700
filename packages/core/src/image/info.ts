import { promises as fsp } from 'node:fs';
import { fromFsError } from '../errors';
import { removeStaleTemps } from '../fs/atomic';
import { runTool } from '../tools/run';
import { statInImage } from './debugfs';
import { apptainerExt3Problems, detectFormat, type ImageFormat, isSifFile } from './format';
import { readSuperblock } from './superblock';

/** One object of a SIF file as `info` lists it (packages/core/src/sif/ fills it). */
export interface SifObjectSummary {
  id: number;
  type: string;
  name: string;
  groupId: number;
  linkedId: number;
  offset: number;
  size: number;
  fs?: string;
  partType?: string;
  arch?: string;
}

export interface SifSummary {
  id: string;
  arch: string;
  createdAt: number;
  modifiedAt: number;
  signed: boolean;
  encrypted: boolean;
  objects: SifObjectSummary[];
  /** Id of the writable ext3 overlay partition, null when there is none. */
  overlayId: number | null;
}

export interface ImageInfo {
  path: string;
  /** For a SIF: its overlay partition's format, or 'sif' when it has none. */
  format: ImageFormat | 'sif';
  sizeBytes: number;
  allocatedBytes: number;
  sparse: boolean;
  blockSize: number | null;
  usedBytes: number | null;
  freeBytes: number | null;
  inodesTotal: number | null;
  inodesUsed: number | null;
  inodesUsedPercent: number | null;
  inodeRatio: number | null;
  reservedPercent: number | null;
  uuid: string | null;
  clean: boolean | null;
  apptainerCompatible: boolean;
  apptainerProblems: string[];
  upper: { uid: number; gid: number } | null;
  /** fuse-overlayfs `.wh.*` markers in upper/ that read-only readers ignore (see normalize). */
  nonPortableMarkers?: { count: number; examples: string[] };
  /** A SIF file: its objects (the overlay's facts are the fields above). */
  sif?: SifSummary;
}

/** Everything about an image without mounting it: superblock via dumpe2fs, upper/ via debugfs. */
export async function imageInfo(path: string): Promise<ImageInfo> {
  if (await isSifFile(path)) return (await import('../sif/overlay')).sifInfo(path);
  await removeStaleTemps(path); // what a killed operation left behind
  const st = await fsp.stat(path).catch((e) => {
    throw fromFsError(e, path);
  });
  const { format, ext } = await detectFormat(path);
  const base = {
    path,
    format,
    sizeBytes: st.size,
    allocatedBytes: st.blocks * 512,
    sparse: st.blocks * 512 < st.size,
  };
  if (format === 'squashfs') {
    const { stdout } = await runTool('unsquashfs', ['-s', path], { timeoutSeconds: 60 });
    const blockSize = Number(/Block size (\d+)/.exec(stdout)?.[1] ?? 0) || null;
    const inodes = Number(/Number of inodes (\d+)/.exec(stdout)?.[1] ?? 0) || null;
    return {
      ...base,
      blockSize,
      usedBytes: st.size,
      freeBytes: 0,
      inodesTotal: inodes,
      inodesUsed: inodes,
      inodesUsedPercent: inodes ? 100 : null,
      inodeRatio: null,
      reservedPercent: null,
      uuid: null,
      clean: null,
      apptainerCompatible: true, // read-only layer (`--overlay x.sqf:ro`)
      apptainerProblems: [],
      upper: null,
    };
  }
  const sb = await readSuperblock(path);
  const problems = apptainerExt3Problems(ext!);
  const upper = await statInImage(path, '/upper').catch(() => null);
  const inodesUsed = sb.inodeCount - sb.freeInodes;
  const { findNonPortableMarkers } = await import('../layer/normalize');
  const nonPortableMarkers = upper ? await findNonPortableMarkers(path).catch(() => undefined) : undefined;
  return {
    ...base,
    blockSize: sb.blockSize,
    usedBytes: (sb.blockCount - sb.freeBlocks) * sb.blockSize,
    freeBytes: sb.freeBlocks * sb.blockSize,
    inodesTotal: sb.inodeCount,
    inodesUsed,
    inodesUsedPercent: sb.inodeCount ? Math.round((inodesUsed / sb.inodeCount) * 10000) / 100 : null,
    inodeRatio: sb.inodeCount ? Math.round((sb.blockCount * sb.blockSize) / sb.inodeCount) : null,
    reservedPercent: sb.blockCount ? Math.round((sb.reservedBlocks / sb.blockCount) * 10000) / 100 : null,
    uuid: sb.uuid || null,
    clean: sb.state === 'clean',
    apptainerCompatible: problems.length === 0 && upper !== null,
    apptainerProblems: upper === null ? [...problems, 'no upper/ directory at the root'] : problems,
    upper: upper ? { uid: upper.uid, gid: upper.gid } : null,
    nonPortableMarkers,
  };
}
