import { closeSync, fdatasyncSync, ftruncateSync, openSync, write } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { isOverlayError, OverlayError } from '../errors';
import { exists, fsyncPath, removeStaleTemps, tempPathFor } from '../fs/atomic';
import {
  ContentHash,
  contentDigest,
  type DataRun,
  dataRuns,
  type Region,
  RUN_MAX,
  writeFully,
} from '../fs/sparse';
import { readHead, requireExt3 } from '../image/format';
import { usedRegions } from '../image/used';
import { acquireLock, type Lock } from '../lock/ofd';
import { nativeLibc } from '../tools/native';
import { runTool, traced } from '../tools/run';
import { compressTo, decompressFrom, send, zstdVersion } from './zstd';

/** Bump when the archive layout or what it carries changes: part of every cache key. */
export const CACHE_FORMAT_VERSION = 3;
/** File name suffix of an archive. */
export const ARCHIVE_SUFFIX = '.ovc.zst';

/**
 * The archive is one zstd stream (level 3, checksummed, every core; see zstd.ts) holding:
 *   MAGIC, u32 length + header JSON, records, END record, u32 length + trailer JSON
 * where a record is u64 offset, u32 length (1..RUN_MAX), then that many bytes of the image.
 * Records carry only non-zero blocks the filesystem has in use (its block bitmaps say which: free
 * blocks of deleted files are not carried, since v3), in ascending order; everything else is a
 * hole. The trailer
 * holds the content digest, computed while the records were written (one read of the image).
 * A format of our own instead of tar: pack and unpack each touch the data once, in one process,
 * hashing on the way, which tar --sparse plus a separate digest pass cannot.
 */
const MAGIC = Buffer.from('OVERLAY-ACTION-CACHE\n');
const END = 0xffff_ffff_ffff_ffffn;
const MAX_JSON = 64 * 1024;

const formatUuid = (b: Buffer) =>
  b.toString('hex').replace(/^(.{8})(.{4})(.{4})(.{4})(.{12})$/, '$1-$2-$3-$4-$5');

export interface CacheManifest {
  formatVersion: number;
  imageName: string;
  sizeBytes: number;
  fsUuid: string;
  /** ContentHash over the packed blocks (imageContentDigest): non-zero 4 KiB blocks in use, offsets, size. */
  sha256: string;
  /** Bytes of image data in the archive (non-zero blocks). */
  dataBytes: number;
  tools: Record<string, string>;
  created: string;
}
type Header = Omit<CacheManifest, 'sha256' | 'dataBytes'>;
type Trailer = Pick<CacheManifest, 'sha256' | 'dataBytes'>;

function lengthPrefixed(json: object): Buffer {
  const body = Buffer.from(JSON.stringify(json));
  const len = Buffer.alloc(4);
  len.writeUInt32BE(body.length);
  return Buffer.concat([len, body]);
}

function recordHead(offset: bigint, length: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeBigUInt64BE(offset);
  b.writeUInt32BE(length, 8);
  return b;
}

/**
 * What pack carries of an image: the blocks its filesystem has in use (see usedRegions), or the
 * whole file when the bitmaps cannot be trusted. Sorted, disjoint, 4 KiB aligned.
 */
export async function packRegions(image: string): Promise<Region[]> {
  const size = (await stat(image)).size;
  const used = await usedRegions(image);
  if (!used) return [[0, size]];
  return used.map(([a, b]): Region => [a, Math.min(b, size)]).filter(([a, b]) => b > a);
}

/**
 * The image's content as pack carries it: runs of non-zero 4 KiB blocks in use (at most RUN_MAX
 * bytes each), ascending, reading only data extents. Registry chunking and the archive share it.
 */
export async function* packedRuns(image: string, regions?: Region[]): AsyncGenerator<DataRun> {
  yield* dataRuns(image, regions ?? (await packRegions(image)));
}

/** The content digest pack records for the image as it is now (equal after a round trip). */
export async function imageContentDigest(image: string): Promise<string> {
  return contentDigest(image, await packRegions(image));
}

/**
 * Pack an ext3 overlay into one archive whose cost follows the bytes in use: only data extents are
 * read (SEEK_DATA/SEEK_HOLE), zero blocks are dropped, zstd compresses on every core, and the
 * content digest is computed in the same pass. The archive is written to `archivePath` directly;
 * callers publish it atomically.
 */
export async function packImage(imagePath: string, archivePath: string): Promise<CacheManifest> {
  const image = resolve(imagePath);
  await requireExt3(image);
  const lock = await acquireLock(image, 'shared'); // no writer while we read
  try {
    // the UUID straight from the superblock bytes: a damaged journal must not stop a save
    const [head, st, zstd] = await Promise.all([readHead(image), stat(image), zstdVersion()]);
    const header: Header = {
      formatVersion: CACHE_FORMAT_VERSION,
      imageName: basename(image),
      sizeBytes: st.size,
      fsUuid: head.length >= 1144 ? formatUuid(head.subarray(1024 + 104, 1024 + 120)) : '',
      tools: { zstd, node: process.version },
      created: new Date().toISOString(),
    };
    const hash = new ContentHash(st.size);
    let trailer: Trailer | undefined;
    await traced('read + hash + compress', () =>
      compressTo(resolve(archivePath), async (sink) => {
        let dataBytes = 0;
        await send(sink, Buffer.concat([MAGIC, lengthPrefixed(header)]));
        for await (const run of packedRuns(image)) {
          hash.update(run.offset, run.data);
          dataBytes += run.data.length;
          await send(sink, recordHead(BigInt(run.offset), run.data.length));
          await send(sink, run.data);
        }
        trailer = { sha256: hash.digest(), dataBytes };
        await send(sink, Buffer.concat([recordHead(END, 0), lengthPrefixed(trailer)]));
      }),
    );
    return { ...header, ...trailer! };
  } finally {
    lock.release();
  }
}

/** Pulls exact byte counts out of a stream of chunks. */
class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private readonly source: AsyncIterator<Buffer>;
  constructor(stream: Readable) {
    this.source = stream[Symbol.asyncIterator]();
  }
  /** Exactly n bytes, or null at a clean end of stream (nothing buffered). */
  async take(n: number): Promise<Buffer | null> {
    while (this.buffered < n) {
      const next = await this.source.next();
      if (next.done) {
        if (this.buffered === 0) return null;
        throw new Error(`truncated archive (needed ${n} bytes, ${this.buffered} left)`);
      }
      this.chunks.push(next.value);
      this.buffered += next.value.length;
    }
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = all.length > n ? [all.subarray(n)] : [];
    this.buffered -= n;
    return all.subarray(0, n);
  }
  async need(n: number): Promise<Buffer> {
    const b = await this.take(n);
    if (!b) throw new Error('truncated archive');
    return b;
  }
  async json<T>(): Promise<T> {
    const len = (await this.need(4)).readUInt32BE(0);
    if (len > MAX_JSON) throw new Error(`implausible header length ${len}`);
    return JSON.parse((await this.need(len)).toString('utf8')) as T;
  }
}

// biome-ignore lint/suspicious/noExplicitAny: koffi function handle
let syncFileRange: any;
/** Start writeback of what was written so far without waiting, so the final fdatasync is short. */
function startWriteback(fd: number): void {
  try {
    syncFileRange ??= nativeLibc().lib.func(
      'int sync_file_range(int fd, int64_t off, int64_t n, unsigned int flags)',
    );
    syncFileRange(fd, 0, 0, 2 /* SYNC_FILE_RANGE_WRITE */);
  } catch {} // an optimisation only
}

class ArchiveError extends Error {}

/** Decode the archive stream into the file `fd`; returns the manifest it carried and what we computed. */
async function decode(stream: Readable, fd: number): Promise<{ manifest: CacheManifest; computed: Trailer }> {
  const reader = new ByteReader(stream);
  const magic = await reader.take(MAGIC.length);
  if (!magic?.equals(MAGIC)) throw new ArchiveError('foreign archive (not an overlay-action cache archive)');
  const header = await reader.json<Header>();
  if (header.formatVersion !== CACHE_FORMAT_VERSION)
    throw new ArchiveError(`cache format ${header.formatVersion}, expected ${CACHE_FORMAT_VERSION}`);
  const size = header.sizeBytes;
  if (!Number.isSafeInteger(size) || size <= 0 || size % 4096)
    throw new ArchiveError(`implausible image size ${size}`);
  ftruncateSync(fd, size); // all holes, then the records
  const hash = new ContentHash(size);
  let next = 0; // records are ascending and disjoint
  let dataBytes = 0;
  let sinceKick = 0;
  for (;;) {
    const head = await reader.need(12);
    const offset = head.readBigUInt64BE(0);
    const length = head.readUInt32BE(8);
    if (offset === END && length === 0) break;
    const at = Number(offset);
    if (length === 0 || length > RUN_MAX || at % 4096 || at < next || at + length > size)
      throw new ArchiveError(`corrupt archive (record at ${offset}, ${length} bytes)`);
    const data = await reader.need(length);
    // the write runs on libuv's thread pool while this thread hashes the same (read-only) bytes
    const written = writeFully(fd, data, at);
    hash.update(at, data);
    await written;
    next = at + length;
    dataBytes += length;
    sinceKick += length;
    if (sinceKick >= 64 * 1024 * 1024) {
      startWriteback(fd);
      sinceKick = 0;
    }
  }
  const trailer = await reader.json<Trailer>();
  if ((await reader.take(1)) !== null) throw new ArchiveError('trailing data after the archive');
  return { manifest: { ...header, ...trailer }, computed: { sha256: hash.digest(), dataBytes } };
}

export type UnpackOutcome = { ok: true; manifest: CacheManifest } | { ok: false; reason: string };

/**
 * Unpack and verify, then rename into place: the stream must parse (magic, version, records in
 * bounds and in order, nothing after the trailer), the content digest computed while writing must
 * match the archive's, and a read-only fsck must pass. Any failure is `{ok:false}` (a cache miss
 * for the caller), never a broken or overwritten image.
 */
export async function unpackImage(archivePath: string, targetPath: string): Promise<UnpackOutcome> {
  const archive = resolve(archivePath);
  const target = resolve(targetPath);
  await removeStaleTemps(target);
  const tmp = tempPathFor(target);
  let fd: number;
  try {
    fd = openSync(tmp, 'wx', 0o644);
  } catch (e) {
    throw new OverlayError('E_CACHE', `cannot create ${tmp}: ${(e as Error).message}`);
  }
  let lock: Lock | undefined;
  let fdOpen = true;
  try {
    let decoded: Awaited<ReturnType<typeof decode>>;
    try {
      decoded = await traced('decompress + write + hash', () =>
        decompressFrom(archive, (source) => decode(source, fd)),
      );
    } catch (e) {
      const cause = isOverlayError(e) && e.cause instanceof Error ? e.cause : (e as Error);
      if (isOverlayError(e, 'E_NO_SPACE') || (cause as NodeJS.ErrnoException).code === 'ENOSPC')
        throw new OverlayError('E_NO_SPACE', `no space left to restore ${target}`);
      const why = cause instanceof ArchiveError ? cause.message : `corrupt archive: ${cause.message}`;
      return { ok: false, reason: why };
    }
    const { manifest, computed } = decoded;
    if (computed.sha256 !== manifest.sha256 || computed.dataBytes !== manifest.dataBytes)
      return { ok: false, reason: 'content digest mismatch' };
    await traced('fdatasync', () => fdatasyncSync(fd)); // durable before it can replace anything (mostly written back already)
    closeSync(fd);
    fdOpen = false;
    // the image was just written, so its blocks are in the page cache: e2fsck's readahead only
    // costs (measured 1.7 s vs 0.3 s on the bench image, mostly WILLNEED over inode-table holes)
    const fsck = await runTool('e2fsck', ['-fn', '-E', 'readahead_kb=0', tmp], {
      okExitCodes: Array.from({ length: 255 }, (_, i) => i + 1), // any verdict is a verdict (12 = aborted)
      timeoutSeconds: 1800,
    });
    if (fsck.exitCode !== 0)
      return { ok: false, reason: `restored image fails e2fsck (exit ${fsck.exitCode})` };
    if (await exists(target)) lock = await acquireLock(target, 'exclusive'); // not while Apptainer uses it
    await rename(tmp, target);
    await fsyncPath(dirname(target)).catch(() => {});
    return { ok: true, manifest };
  } finally {
    if (fdOpen) closeSync(fd);
    lock?.release();
    await rm(tmp, { force: true });
  }
}
