import { promises as fsp } from 'node:fs';
import { fromFsError, isOverlayError, OverlayError } from '../errors';
import { removeStaleTemps } from '../fs/atomic';
import { finishInterruptedEdits } from '../lock/ofd';
import { runTool } from '../tools/run';
import { statInImage } from './debugfs';
import { apptainerExt3Problems, type ImageFormat, isSifFile, probeImage } from './format';
import { findBackupSuperblock, readSuperblock, type Superblock, type SuperblockLocation } from './superblock';
import { findTruncation, type Truncation } from './truncation';

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
  /** The image path as given. */
  image: string;
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
  /** The filesystem is marked clean, whole (not truncated) and its primary superblock is intact. */
  clean: boolean | null;
  /** ext only: a damaged primary superblock, and the backup the other fields were read from. */
  superblock: { primary: 'ok' | 'damaged'; backup: SuperblockLocation | null } | null;
  /** The file is shorter than its filesystem says (both sizes), else null. */
  truncated: Truncation | null;
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
  await finishInterruptedEdits(path);
  const st = await fsp.stat(path).catch((e) => {
    throw fromFsError(e, path);
  });
  const probe = await probeImage(path);
  const { format } = probe;
  const truncated = findTruncation(probe);
  const base = {
    image: path,
    format,
    sizeBytes: st.size,
    allocatedBytes: st.blocks * 512,
    sparse: st.blocks * 512 < st.size,
    truncated,
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
      superblock: null,
      apptainerCompatible: !truncated, // read-only layer (`--overlay x.sqf:ro`)
      apptainerProblems: truncated ? ['the file is truncated'] : [],
      upper: null,
    };
  }
  const { sb, superblock } = await readSuperblockOrBackup(path, probe.superblock!);
  const damaged = superblock.primary === 'damaged';
  const problems = apptainerExt3Problems(probe.ext!);
  if (damaged) problems.push('the primary superblock is damaged (check --repair restores it)');
  if (truncated) problems.push('the file is truncated');
  const upper = damaged ? null : await statInImage(path, '/upper').catch(() => null);
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
    clean: sb.state === 'clean' && !damaged && !truncated,
    superblock,
    apptainerCompatible: problems.length === 0 && upper !== null,
    // debugfs cannot be trusted on a damaged or truncated image: no claim about upper/ then
    apptainerProblems:
      upper === null && !damaged && !truncated ? [...problems, 'no upper/ directory at the root'] : problems,
    upper: upper ? { uid: upper.uid, gid: upper.gid } : null,
    nonPortableMarkers,
  };
}

/**
 * dumpe2fs of the primary superblock; when that one is damaged (or dumpe2fs rejects it), of the
 * backup that identifies the filesystem, so info describes it instead of failing.
 */
async function readSuperblockOrBackup(
  path: string,
  found: NonNullable<ImageInfo['superblock']>,
): Promise<{ sb: Superblock; superblock: NonNullable<ImageInfo['superblock']> }> {
  if (found.primary === 'damaged' && found.backup)
    return { sb: await readSuperblock(path, found.backup), superblock: found };
  try {
    return { sb: await readSuperblock(path), superblock: found };
  } catch (e) {
    if (!isOverlayError(e, 'E_TOOL_FAILED')) throw e;
    const b = await findBackupSuperblock(path).catch(() => null);
    if (!b)
      throw new OverlayError(
        'E_INTEGRITY',
        `${path}: the superblock cannot be read (${e.message}) and no backup superblock was found`,
        { hint: `overlayctl check ${path} says what e2fsck makes of it` },
      );
    const backup = { block: b.block, blockSize: b.blockSize, byteOffset: b.byteOffset };
    return { sb: await readSuperblock(path, backup), superblock: { primary: 'damaged', backup } };
  }
}
