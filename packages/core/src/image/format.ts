import { promises as fsp } from 'node:fs';
import { fromFsError, OverlayError } from '../errors';

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
  ext?: ExtHeader;
}

export async function readHead(path: string, bytes = 4096): Promise<Buffer> {
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
    return buf.subarray(0, bytesRead);
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

/** Identify an image from its first bytes (no tools, no mount). */
export async function detectFormat(path: string): Promise<FormatInfo> {
  const head = await readHead(path);
  if (head.length >= 4 && head.toString('latin1', 0, 4) === 'hsqs') return { format: 'squashfs' };
  if (isSifHead(head)) {
    throw new OverlayError('E_NOT_EXT3', `${path} is a SIF container file, not a standalone overlay image`, {
      hint: `info, check, resize, create, exec and build take the SIF itself; for anything else copy its overlay out first: overlayctl extract ${path} overlay.img`,
    });
  }
  if (head.length >= SB + 104 && head.readUInt16LE(SB + 56) === 0xef53) {
    const ext = {
      compat: head.readUInt32LE(SB + 92),
      incompat: head.readUInt32LE(SB + 96),
      roCompat: head.readUInt32LE(SB + 100),
      state: head.readUInt16LE(SB + 58),
    };
    let format: ImageFormat = 'ext2';
    if (ext.incompat & INCOMPAT_EXT4 || ext.roCompat & RO_EXT4) format = 'ext4';
    else if (ext.compat & COMPAT_HAS_JOURNAL) format = 'ext3';
    return { format, ext };
  }
  throw new OverlayError('E_UNKNOWN_FORMAT', `${path} is not an ext2/3/4 or SquashFS image`);
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
