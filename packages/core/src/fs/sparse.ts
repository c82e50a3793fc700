import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { nativeLibc } from '../tools/native';

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const BLOCK = 4096;
const ZERO_BLOCK = Buffer.alloc(BLOCK);

let lseek: ((fd: number, offset: bigint | number, whence: number) => bigint | number) | undefined;

/** Data extents of a file as [start, end) pairs (SEEK_DATA/SEEK_HOLE), so holes are never read. */
export async function dataExtents(path: string): Promise<Array<[number, number]>> {
  const { lib } = nativeLibc();
  lseek ??= lib.func('int64_t lseek(int fd, int64_t offset, int whence)');
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const extents: Array<[number, number]> = [];
    let pos = 0;
    while (pos < size) {
      const start = Number(lseek!(fh.fd, pos, SEEK_DATA));
      if (start < 0) break; // ENXIO: no data after pos
      const end = Math.min(Number(lseek!(fh.fd, start, SEEK_HOLE)), size);
      extents.push([start, end]);
      pos = end;
    }
    return extents;
  } finally {
    await fh.close();
  }
}

/**
 * sha256 of a file's logical content that reads only its data extents: every non-zero 4 KiB
 * block is hashed with its offset, plus the file size. A hole and a block of zeros hash the same,
 * so the digest does not depend on how sparse a copy happens to be.
 */
export async function contentDigest(path: string): Promise<string> {
  const hash = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    hash.update(`size:${size}\n`);
    const buf = Buffer.alloc(4 * 1024 * 1024);
    const offset = Buffer.alloc(8);
    for (const [start, end] of await dataExtents(path)) {
      for (let pos = start - (start % BLOCK); pos < end; pos += buf.length) {
        const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, end - pos), pos);
        for (let b = 0; b < bytesRead; b += BLOCK) {
          const block = buf.subarray(b, Math.min(b + BLOCK, bytesRead));
          if (block.length === BLOCK ? block.equals(ZERO_BLOCK) : block.every((x) => x === 0)) continue; // memcmp
          offset.writeBigUInt64BE(BigInt(pos + b));
          hash.update(offset);
          hash.update(block);
        }
      }
    }
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}
