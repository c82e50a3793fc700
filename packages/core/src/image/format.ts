import { promises as fsp } from 'node:fs';
import { fromFsError, OverlayError } from '../errors';
import { findBackupSuperblock, parseRawSuperblock, type SuperblockLocation } from './superblock';
import { requireWholeImage } from './truncation';

export type ImageFormat = 'ext2' | 'ext3' | 'ext4' | 'squashfs';

// ext superblock: 1024 bytes in; fields used by Apptainer's pkg/image/ext3.go
const SB = 1024;
const COMPAT_HAS_JOURNAL = 0x4;
const INCOMPAT_FILETYPE = 0x2;
const INCOMPAT_RECOVER = 0x4;
const INCOMPAT_META_BG = 0x10;
const RO_SPARSE_SUPER = 0x1;
const RO_LARGE_FILE = 0x2;
const RO_BTREE_DIR = 0x4;
// features that make e2fsprogs call a filesystem ext4
const INCOMPAT_EXT4 = 0x40 | 0x80 | 0x200 | 0x8000 | 0x10000 | 0x2000; // extents,64bit,flex_bg,inline_data,encrypt,csum_seed
const RO_EXT4 = 0x8 | 0x10 | 0x20 | 0x40 | 0x400; // huge_file,gdt_csum,dir_nlink,extra_isize,metadata_csum

export interface ExtHeader {
  compat: number;
  incompat: number;
  roCompat: number;
  /** s_state: bit 1 = cleanly unmounted, bit 2 = errors detected by the kernel. */
  state: number;
}

/** The journal holds writes not yet applied (a writer crashed or is still running). */
export const needsRecovery = (ext: ExtHeader) => (ext.incompat & INCOMPAT_RECOVER) !== 0;
/** The kernel recorded an error in this filesystem. */
export const hasErrorFlag = (ext: ExtHeader) => (ext.state & 0x2) !== 0;

export interface FormatInfo {
  format: ImageFormat;
  /** Feature flags, from the primary superblock (or from the backup when the primary is damaged). */
  ext?: ExtHeader;
  /** Length of the image file. */
  fileBytes: number;
  /** What the filesystem says its size is (ext: blocks × block size; SquashFS: bytes used). */
  filesystemBytes: number | null;
  /** ext only: the primary superblock's state, and the backup that identifies a damaged one. */
  superblock?: { primary: 'ok' | 'damaged'; backup: SuperblockLocation | null };
}

export async function readHead(path: string, bytes = 4096): Promise<Buffer> {
  return (await readHeadAndSize(path, bytes)).head;
}

async function readHeadAndSize(path: string, bytes: number): Promise<{ head: Buffer; size: number }> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(path, 'r');
  } catch (e) {
    throw fromFsError(e, path);
  }
  try {
    const st = await fh.stat();
    if (st.isDirectory())
      throw new OverlayError('E_UNKNOWN_FORMAT', `${path} is a directory, not an image file`);
    const buf = Buffer.alloc(bytes);
    const { bytesRead } = await fh.read(buf, 0, bytes, 0);
    return { head: buf.subarray(0, bytesRead), size: st.size };
  } finally {
    await fh.close();
  }
}

/** True when these first bytes are a SIF container's global header (SIF_MAGIC at offset 32). */
export function isSifHead(head: Buffer): boolean {
  return head.length >= 42 && head.toString('latin1', 32, 41) === 'SIF_MAGIC' && head[41] === 0;
}

/** A SIF file (its embedded overlay is handled by packages/core/src/sif/, see overlay.ts there). */
export async function isSifFile(path: string): Promise<boolean> {
  const fh = await fsp.open(path, 'r').catch(() => null);
  if (!fh) return false;
  try {
    if (!(await fh.stat()).isFile()) return false;
    const head = Buffer.alloc(64);
    const { bytesRead } = await fh.read(head, 0, 64, 0);
    return isSifHead(head.subarray(0, bytesRead));
  } finally {
    await fh.close();
  }
}

function extFormat(ext: ExtHeader): ImageFormat {
  if (ext.incompat & INCOMPAT_EXT4 || ext.roCompat & RO_EXT4) return 'ext4';
  if (ext.compat & COMPAT_HAS_JOURNAL) return 'ext3';
  return 'ext2';
}

/**
 * Identify an image from its bytes (no tools, no mount), damaged or not: a primary superblock
 * that is gone or implausible is reported as damaged when a backup superblock identifies the
 * filesystem. Throws only when nothing identifies it (E_UNKNOWN_FORMAT) or it cannot be read.
 */
export async function probeImage(path: string): Promise<FormatInfo> {
  const { head, size } = await readHeadAndSize(path, 4096);
  if (head.length >= 48 && head.toString('latin1', 0, 4) === 'hsqs') {
    const bytesUsed = Number(head.readBigUInt64LE(40));
    return { format: 'squashfs', fileBytes: size, filesystemBytes: bytesUsed };
  }
  if (isSifHead(head)) {
    throw new OverlayError('E_NOT_EXT3', `${path} is a SIF container file, not a standalone overlay image`, {
      hint: `info, check, resize, create, exec and build take the SIF itself; for anything else copy its overlay out first: overlayctl extract ${path} overlay.img`,
    });
  }
  const primary = parseRawSuperblock(head.subarray(SB, SB + 1024));
  const found = primary ? null : await findBackupSuperblock(path).catch(() => null);
  const sb = primary ?? found?.sb;
  if (!sb) {
    if (head.length >= SB + 58 && head.readUInt16LE(SB + 56) === 0xef53)
      throw new OverlayError(
        'E_INTEGRITY',
        `${path}: the ext superblock is damaged and no backup superblock was found`,
        { hint: 'e2fsck cannot repair it without a superblock; restore the image from a cache or a backup' },
      );
    throw new OverlayError(
      'E_UNKNOWN_FORMAT',
      `${path} is not an ext2/3/4 or SquashFS image (no superblock found, primary or backup)`,
    );
  }
  const ext: ExtHeader = { compat: sb.compat, incompat: sb.incompat, roCompat: sb.roCompat, state: sb.state };
  const backup = found
    ? { block: found.block, blockSize: found.blockSize, byteOffset: found.byteOffset }
    : null;
  return {
    format: extFormat(ext),
    ext,
    fileBytes: size,
    filesystemBytes: sb.blocksCount * sb.blockSize,
    superblock: { primary: primary ? 'ok' : 'damaged', backup },
  };
}

/** Why the primary superblock is unusable, in words (for messages and reports). */
export function damagedSuperblockMessage(info: FormatInfo): string {
  const b = info.superblock?.backup;
  return `the primary superblock is damaged${b ? `; a backup superblock at block ${b.block} (block size ${b.blockSize}, byte offset ${b.byteOffset}) identifies an ${info.format} filesystem` : ''}`;
}

/**
 * Identify an image that is about to be opened: the gate every command passes, so a damaged
 * primary superblock (E_INTEGRITY) or a truncated file (E_TRUNCATED, both sizes) is refused
 * with a clear message before any tool sees it.
 */
export async function detectFormat(path: string): Promise<FormatInfo> {
  const info = await probeImage(path);
  if (info.superblock?.primary === 'damaged')
    throw new OverlayError('E_INTEGRITY', `${path}: ${damagedSuperblockMessage(info)}`, {
      hint: `overlayctl check --repair ${path} restores it from the backup`,
      details: { backupSuperblock: info.superblock.backup },
    });
  requireWholeImage(path, info);
  return info;
}

/** A SquashFS layer, or E_NOT_FOUND / E_NOT_SQUASHFS / E_UNKNOWN_FORMAT saying what the file is. */
export async function requireSquashfs(path: string): Promise<void> {
  const { format } = await detectFormat(path);
  if (format !== 'squashfs')
    throw new OverlayError('E_NOT_SQUASHFS', `${path} is an ${format} image, not a SquashFS layer`, {
      hint: `make a layer from it first: overlayctl commit ${path} --output LAYER.sqf`,
    });
}

/** Why Apptainer would refuse this as an ext3 overlay (empty when it accepts it). */
export function apptainerExt3Problems(ext: ExtHeader): string[] {
  const problems: string[] = [];
  if (!(ext.compat & COMPAT_HAS_JOURNAL)) problems.push('no journal (has_journal missing: ext2)');
  const badIncompat = ext.incompat & ~(INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_META_BG);
  if (badIncompat)
    problems.push(`incompatible features 0x${badIncompat.toString(16)} (ext4: extent/64bit/flex_bg...)`);
  const badRo = ext.roCompat & ~(RO_SPARSE_SUPER | RO_LARGE_FILE | RO_BTREE_DIR);
  if (badRo)
    problems.push(`read-only-compatible features 0x${badRo.toString(16)} (ext4: metadata_csum/huge_file...)`);
  return problems;
}

/** The gate for every ext3-only operation: E_NOT_EXT3 for SquashFS, ext4 and journal-less ext2. */
export async function requireExt3(path: string): Promise<FormatInfo> {
  const info = await detectFormat(path);
  if (info.format === 'squashfs') {
    throw new OverlayError('E_NOT_EXT3', `${path} is a SquashFS image; this needs a writable ext3 overlay`);
  }
  const problems = apptainerExt3Problems(info.ext!);
  if (problems.length) {
    throw new OverlayError(
      'E_NOT_EXT3',
      `${path} is ${info.format}, not an Apptainer ext3 overlay: ${problems[0]}`,
      {
        details: { format: info.format, problems },
      },
    );
  }
  return info;
}
