import { createHash } from 'node:crypto';
import { write } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { nativeLibc } from '../tools/native';

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const BLOCK = 4096;
const ZERO_BLOCK = Buffer.alloc(BLOCK);

let lseek: ((fd: number, offset: bigint | number, whence: number) => bigint | number) | undefined;

/** A byte range [start, end) of a file. */
export type Region = [number, number];

/** The parts of `a` that are also in `b` (each sorted and disjoint). */
export function intersectRegions(a: Region[], b: Region[]): Region[] {
  const out: Region[] = [];
  let j = 0;
  for (const [s, e] of a) {
    while (j < b.length && (b[j] as Region)[1] <= s) j++;
    for (let k = j; k < b.length && (b[k] as Region)[0] < e; k++) {
      const [bs, be] = b[k] as Region;
      out.push([Math.max(s, bs), Math.min(e, be)]);
    }
  }
  return out;
}

/** Data extents of a file as [start, end) pairs (SEEK_DATA/SEEK_HOLE), so holes are never read. */
export async function dataExtents(path: string): Promise<Region[]> {
  const { lib } = nativeLibc();
  lseek ??= lib.func('int64_t lseek(int fd, int64_t offset, int whence)');
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const extents: Region[] = [];
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

/** One run of consecutive non-zero 4 KiB blocks: where it starts in the file, and its bytes. */
export interface DataRun {
  offset: number;
  data: Buffer;
}

export const RUN_MAX = 4 * 1024 * 1024;

/**
 * The file's non-zero content as runs of whole blocks (at most RUN_MAX bytes each), read only
 * from its data extents: holes are never read, zero blocks inside extents are skipped. Each run's
 * buffer is fresh, so a consumer may keep it (e.g. while a pipe drains). With `within` (sorted,
 * disjoint, 4 KiB aligned), only those parts of the file are read.
 */
export async function* dataRuns(path: string, within?: Region[]): AsyncGenerator<DataRun> {
  const fh = await open(path, 'r');
  try {
    const extents = await dataExtents(path);
    for (const [start, end] of within ? intersectRegions(extents, within) : extents) {
      for (let pos = start - (start % BLOCK); pos < end; pos += RUN_MAX) {
        const buf = Buffer.allocUnsafe(Math.min(RUN_MAX, end - pos));
        const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
        let runStart = -1;
        for (let b = 0; b < bytesRead; b += BLOCK) {
          const block = buf.subarray(b, Math.min(b + BLOCK, bytesRead));
          const zero = block.length === BLOCK ? block.equals(ZERO_BLOCK) : block.every((x) => x === 0); // memcmp
          if (!zero && runStart < 0) runStart = b;
          else if (zero && runStart >= 0) {
            yield { offset: pos + runStart, data: buf.subarray(runStart, b) };
            runStart = -1;
          }
        }
        if (runStart >= 0) yield { offset: pos + runStart, data: buf.subarray(runStart, bytesRead) };
      }
    }
  } finally {
    await fh.close();
  }
}

/**
 * The content digest: sha256 over every non-zero 4 KiB block with its offset, after the file
 * size. A hole and a block of zeros hash the same, so the digest does not depend on how sparse a
 * copy happens to be, nor on how its blocks were grouped into runs.
 */
export class ContentHash {
  private readonly hash = createHash('sha256');
  private readonly offset = Buffer.alloc(8);
  constructor(size: number) {
    this.hash.update(`size:${size}\n`);
  }
  update(offset: number, data: Buffer): void {
    for (let b = 0; b < data.length; b += BLOCK) {
      const block = data.subarray(b, Math.min(b + BLOCK, data.length));
      if (block.length === BLOCK ? block.equals(ZERO_BLOCK) : block.every((x) => x === 0)) continue;
      this.offset.writeBigUInt64BE(BigInt(offset + b));
      this.hash.update(this.offset);
      this.hash.update(block);
    }
  }
  digest(): string {
    return this.hash.digest('hex');
  }
}

/** The content digest of a file (see ContentHash), reading only its data extents (and `within`). */
export async function contentDigest(path: string, within?: Region[]): Promise<string> {
  const size = (await stat(path)).size;
  const hash = new ContentHash(size);
  for await (const run of dataRuns(path, within)) hash.update(run.offset, run.data);
  return hash.digest();
}

/** pwrite all of `data` at `position` (a write may be short, e.g. just before ENOSPC). */
export async function writeFully(fd: number, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const n = await new Promise<number>((ok, fail) =>
      write(fd, data, done, data.length - done, position + done, (e, bytes) => (e ? fail(e) : ok(bytes))),
    );
    if (n === 0) throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
    done += n;
  }
}
