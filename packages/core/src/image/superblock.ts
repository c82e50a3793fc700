import { promises as fsp } from 'node:fs';
import { OverlayError } from '../errors';
import { runTool } from '../tools/run';

/** Superblock fields as dumpe2fs -h prints them (read-only, unprivileged, no mount). */
export interface Superblock {
  uuid: string;
  state: string;
  blockCount: number;
  freeBlocks: number;
  reservedBlocks: number;
  blockSize: number;
  inodeCount: number;
  freeInodes: number;
  features: string[];
}

export function parseDumpe2fs(text: string): Superblock {
  const field = (name: string): string => {
    const m = new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(text);
    return m ? m[1]!.trim() : '';
  };
  const num = (name: string) => Number(field(name) || 0);
  return {
    uuid: field('Filesystem UUID'),
    state: field('Filesystem state'),
    blockCount: num('Block count'),
    freeBlocks: num('Free blocks'),
    reservedBlocks: num('Reserved block count'),
    blockSize: num('Block size'),
    inodeCount: num('Inode count'),
    freeInodes: num('Free inodes'),
    features: field('Filesystem features').split(/\s+/).filter(Boolean),
  };
}

/** Where a (backup) superblock lives, in the terms e2fsck -b/-B and dumpe2fs -o take. */
export interface SuperblockLocation {
  /** Filesystem block number of the superblock (e2fsck -b). */
  block: number;
  /** Block size of the filesystem (e2fsck -B). */
  blockSize: number;
  /** Byte offset of the superblock in the image file. */
  byteOffset: number;
}

/** The fields of an ext2/3/4 superblock the core reads straight from its bytes. */
export interface RawSuperblock {
  blockSize: number;
  blocksCount: number;
  inodesCount: number;
  blocksPerGroup: number;
  groupNr: number;
  compat: number;
  incompat: number;
  roCompat: number;
  /** s_state: bit 1 = cleanly unmounted, bit 2 = errors detected by the kernel. */
  state: number;
}

const EXT_MAGIC = 0xef53;
const INCOMPAT_64BIT = 0x80;

/**
 * Parse the 1024 bytes of a superblock; null when they do not hold a plausible one (no magic,
 * or sizes no mke2fs writes), which is what "damaged" means for the primary superblock.
 */
export function parseRawSuperblock(b: Buffer): RawSuperblock | null {
  if (b.length < 1024 || b.readUInt16LE(56) !== EXT_MAGIC) return null;
  const logBlock = b.readUInt32LE(24);
  if (logBlock > 6) return null; // 1 KiB .. 64 KiB
  const blockSize = 1024 << logBlock;
  const incompat = b.readUInt32LE(96);
  const hi = incompat & INCOMPAT_64BIT ? b.readUInt32LE(0x150) : 0;
  const sb: RawSuperblock = {
    blockSize,
    blocksCount: hi * 2 ** 32 + b.readUInt32LE(4),
    inodesCount: b.readUInt32LE(0),
    blocksPerGroup: b.readUInt32LE(32),
    groupNr: b.readUInt16LE(90),
    compat: b.readUInt32LE(92),
    incompat,
    roCompat: b.readUInt32LE(100),
    state: b.readUInt16LE(58),
  };
  if (!sb.blocksCount || !sb.inodesCount || !sb.blocksPerGroup) return null;
  return sb;
}

// Groups that hold a backup with sparse_super (1 and powers of 3, 5, 7), and block sizes, in
// the order e2fsck's own search tries them (smallest block size first, group 1 first).
const BACKUP_GROUPS = [1, 3, 5, 7, 9, 25, 27, 49];
const BLOCK_SIZES = [1024, 2048, 4096, 8192, 16384, 32768, 65536];

/**
 * Find a backup superblock by reading where mke2fs puts them with the default group size
 * (8 × block size blocks per group): the first one that carries the magic, its own group number
 * (or 0) and a matching block size and group size. Null when there is none (not an ext filesystem, or it was made with
 * a non-default group size).
 */
export async function findBackupSuperblock(
  path: string,
): Promise<(SuperblockLocation & { sb: RawSuperblock }) | null> {
  const fh = await fsp.open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const buf = Buffer.alloc(1024);
    for (const blockSize of BLOCK_SIZES) {
      const perGroup = 8 * blockSize;
      for (const group of BACKUP_GROUPS) {
        const block = group * perGroup + (blockSize === 1024 ? 1 : 0);
        const byteOffset = block * blockSize;
        if (byteOffset + 1024 > size) break;
        const { bytesRead } = await fh.read(buf, 0, 1024, byteOffset);
        const sb = parseRawSuperblock(buf.subarray(0, bytesRead));
        // old mke2fs left s_block_group_nr at 0 in the backups
        const ownGroup = sb?.groupNr === group || sb?.groupNr === 0;
        if (sb && sb.blockSize === blockSize && sb.blocksPerGroup === perGroup && ownGroup)
          return { block, blockSize, byteOffset, sb };
      }
    }
    return null;
  } finally {
    await fh.close();
  }
}

/** e2fsck/e2image arguments that make them use a backup superblock (none for the primary). */
export function backupSuperblockArgs(at?: SuperblockLocation | null): string[] {
  return at ? ['-b', String(at.block), '-B', String(at.blockSize)] : [];
}

/**
 * dumpe2fs -h, of the primary superblock or of a backup. dumpe2fs exits 1 after printing the
 * superblock when the journal's own superblock is bad: the superblock is still what was asked for.
 */
export async function readSuperblock(path: string, at?: SuperblockLocation | null): Promise<Superblock> {
  const backup = at ? ['-o', `superblock=${at.block}`, '-o', `blocksize=${at.blockSize}`] : [];
  const r = await runTool('dumpe2fs', ['-h', ...backup, path], { timeoutSeconds: 60, okExitCodes: [1] });
  if (r.exitCode !== 0 && !/^Block count:/m.test(r.stdout))
    throw new OverlayError(
      'E_TOOL_FAILED',
      `dumpe2fs failed (exit ${r.exitCode}): ${r.stderr.trim().split('\n').slice(-2).join(' ')}`,
      {
        details: { tool: 'dumpe2fs', exitCode: r.exitCode },
      },
    );
  return parseDumpe2fs(r.stdout);
}
