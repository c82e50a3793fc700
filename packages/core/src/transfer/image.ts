import { closeSync, fdatasyncSync, ftruncateSync, openSync, write } from 'node:fs';
import { type FileHandle, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { packedRuns, packRegions } from '../cache/pack';
import { fromFsError, isOverlayError, OverlayError } from '../errors';
import { exists, fsyncPath, removeStaleTemps, tempPathFor, withScratchDir } from '../fs/atomic';
import { ContentHash, type Region, writeFully } from '../fs/sparse';
import { detectFormat, readHead, requireExt3 } from '../image/format';
import { acquireLock, type Lock } from '../lock/ofd';
import { EMPTY_CONFIG, OCI_MANIFEST, type RegistryClient, sha256Digest } from '../registry/client';
import { runTool } from '../tools/run';

/**
 * An ext3 overlay image in a registry: one OCI manifest whose layers are the image's chunks.
 *
 * Chunk boundaries follow the filesystem, not the bytes: an image is cut into its block groups
 * (128 MiB for 4 KiB blocks), the head of each group (where ext3 keeps the superblock copy,
 * descriptors, bitmaps and inode table) into 1 MiB windows, the rest into 4 MiB windows. Offsets
 * in a filesystem never shift, so a window nothing wrote to is byte-identical in the next version
 * of the image, while the metadata a build rewrites everywhere (bitmaps, inode tables, the
 * superblock's counters) only costs small windows. The journal is written at a moving position, so
 * a small update touches one or two of its windows, not all of it.
 *
 * A chunk carries the window's blocks exactly as the cache archive does (cache/pack.ts packedRuns:
 * non-zero 4 KiB blocks the filesystem has in use, so stale blocks of deleted files never travel)
 * and in its record form (u64 offset,
 * u32 length, bytes; see cache/pack.ts), after a magic line and up to an end record, zstd level 3.
 * Holes and zero blocks are never sent (sparse in, sparse out). Each layer's annotations give its
 * window and the sha256 of its uncompressed records, so a pull can tell which windows of an older
 * image at the target already hold the right bytes without downloading them.
 */
export const IMAGE_ARTIFACT_TYPE = 'application/vnd.overlay-action.image.v1';
export const CHUNK_MEDIA_TYPE = 'application/vnd.overlay-action.image.chunk.v1+zstd';
export const IMAGE_FORMAT_VERSION = 1;

const A = 'org.overlay-action';
const CHUNK_MAGIC = Buffer.from('OVERLAY-ACTION-CHUNK\n');
const END = 0xffff_ffff_ffff_ffffn;
const META_WINDOW = 2 ** 20;
const DATA_WINDOW = 4 * 2 ** 20;
const BLOCK = 4096;
const ZERO_BLOCK = Buffer.alloc(BLOCK);

export interface ChunkDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations: Record<string, string>;
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType: string;
  artifactType: string;
  config: typeof EMPTY_CONFIG;
  layers: ChunkDescriptor[];
  annotations: Record<string, string>;
}

export interface RegistryImageInfo {
  sizeBytes: number;
  sha256: string;
  dataBytes: number;
  chunks: number;
}

/** How an image is cut: block-group size and the length of each group's metadata head. */
export interface Layout {
  groupBytes: number;
  metaSpan: number;
}

/**
 * The layout from the superblock: a group's head holds (in backup groups) the superblock copy,
 * the descriptors and the blocks reserved for their growth, then both bitmaps and the inode table,
 * rounded up to whole 1 MiB windows. Nonsense values fall back to 128 MiB groups, 8 MiB heads.
 */
export function layoutOf(head: Buffer): Layout {
  const fallback = { groupBytes: 128 * 2 ** 20, metaSpan: 8 * 2 ** 20 };
  if (head.length < 2048 || head.readUInt16LE(1024 + 56) !== 0xef53) return fallback;
  const sb = 1024;
  const bs = 1024 << head.readUInt32LE(sb + 24);
  const blocksPerGroup = head.readUInt32LE(sb + 32);
  const inodesPerGroup = head.readUInt32LE(sb + 40);
  const inodeSize = head.readUInt32LE(sb + 76) >= 1 ? head.readUInt16LE(sb + 88) : 128;
  const blocksCount = head.readUInt32LE(sb + 4);
  const reservedGdt = head.readUInt16LE(sb + 206);
  const groups = Math.ceil(blocksCount / blocksPerGroup);
  const gdtBlocks = Math.ceil((groups * 32) / bs);
  const headBlocks = 1 + gdtBlocks + reservedGdt + 2 + Math.ceil((inodesPerGroup * inodeSize) / bs);
  const groupBytes = bs * blocksPerGroup;
  const metaSpan = Math.ceil((headBlocks * bs) / META_WINDOW) * META_WINDOW;
  if (
    !Number.isSafeInteger(groupBytes) ||
    groupBytes < META_WINDOW ||
    groupBytes % BLOCK ||
    metaSpan > groupBytes
  )
    return fallback;
  return { groupBytes, metaSpan };
}

function windowStart(offset: number, l: Layout): number {
  const groupStart = offset - (offset % l.groupBytes);
  const within = offset - groupStart;
  return within < l.metaSpan
    ? groupStart + Math.floor(within / META_WINDOW) * META_WINDOW
    : groupStart + l.metaSpan + Math.floor((within - l.metaSpan) / DATA_WINDOW) * DATA_WINDOW;
}

/** Where the window holding `offset` ends (see the module comment). */
export function windowEnd(offset: number, l: Layout, size: number): number {
  const groupStart = offset - (offset % l.groupBytes);
  const start = windowStart(offset, l);
  const end = start + (start - groupStart < l.metaSpan ? META_WINDOW : DATA_WINDOW);
  return Math.min(end, groupStart + l.groupBytes, size);
}

/**
 * Compress windows with one zstd run per batch (a spawn per 4 MiB window cost more than the
 * compression on a busy machine). Always file to file with the same flags, so the same window
 * always gives the same blob (a frame written from stdin would differ: no content size).
 */
async function compressBatch(raws: Buffer[]): Promise<Buffer[]> {
  return withScratchDir('chunks', async (dir) => {
    const files = raws.map((_, i) => join(dir, `w${i}`));
    await Promise.all(raws.map((r, i) => writeFile(files[i]!, r)));
    await runTool('zstd', ['-3', '-q', '--', ...files], { timeoutSeconds: 600 });
    return Promise.all(files.map((f) => readFile(`${f}.zst`)));
  });
}
const BATCH_WINDOWS = 8;

/** Decompress chunks with one zstd run (see compressBatch). */
async function decompressBatch(blobs: Buffer[]): Promise<Buffer[]> {
  return withScratchDir('chunks', async (dir) => {
    const files = blobs.map((_, i) => join(dir, `w${i}`));
    await Promise.all(blobs.map((b, i) => writeFile(`${files[i]}.zst`, b)));
    await runTool('zstd', ['-d', '-q', '--', ...files.map((f) => `${f}.zst`)], { timeoutSeconds: 600 });
    return Promise.all(files.map((f) => readFile(f)));
  });
}

interface RawChunk {
  start: number;
  end: number;
  raw: Buffer;
}

function encodeRecords(runs: Array<{ offset: number; data: Buffer }>): Buffer {
  const parts: Buffer[] = [CHUNK_MAGIC];
  for (const r of runs) {
    const h = Buffer.alloc(12);
    h.writeBigUInt64BE(BigInt(r.offset));
    h.writeUInt32BE(r.data.length, 8);
    parts.push(h, r.data);
  }
  const end = Buffer.alloc(12);
  end.writeBigUInt64BE(END);
  parts.push(end);
  return Buffer.concat(parts);
}

/** Records of a chunk, checked against its window. */
function decodeRecords(raw: Buffer, start: number, end: number): Array<{ offset: number; data: Buffer }> {
  const bad = (why: string) => new OverlayError('E_INTEGRITY', `corrupt image chunk at ${start}: ${why}`);
  if (!raw.subarray(0, CHUNK_MAGIC.length).equals(CHUNK_MAGIC)) throw bad('not an overlay-action chunk');
  const out: Array<{ offset: number; data: Buffer }> = [];
  let p = CHUNK_MAGIC.length;
  let next = start;
  for (;;) {
    if (p + 12 > raw.length) throw bad('truncated');
    const off = raw.readBigUInt64BE(p);
    const len = raw.readUInt32BE(p + 8);
    p += 12;
    if (off === END) break;
    const at = Number(off);
    if (len === 0 || at % BLOCK || at < next || at + len > end || p + len > raw.length)
      throw bad(`record at ${at} (${len} bytes) outside its window`);
    out.push({ offset: at, data: raw.subarray(p, p + len) });
    p += len;
    next = at + len;
  }
  if (p !== raw.length) throw bad('trailing bytes');
  return out;
}

/**
 * The image's windows in ascending order, each with its non-zero blocks as maximal runs (so the
 * records of a window do not depend on how the file's extents were read) and their encoding.
 */
async function* windows(
  image: string,
  layout: Layout,
  size: number,
  regions?: Region[],
): AsyncGenerator<RawChunk & { runs: Run[] }> {
  let cur: { start: number; end: number; runs: Run[] } | undefined;
  const done = (w: { start: number; end: number; runs: Run[] }) => {
    const runs = mergeRuns(w.runs);
    return { ...w, runs, raw: encodeRecords(runs) };
  };
  for await (const run of packedRuns(image, regions)) {
    let off = run.offset;
    let data = run.data;
    while (data.length) {
      if (cur && off >= cur.end) {
        yield done(cur);
        cur = undefined;
      }
      cur ??= { start: windowStart(off, layout), end: windowEnd(off, layout, size), runs: [] };
      const take = Math.min(data.length, cur.end - off);
      cur.runs.push({ offset: off, data: data.subarray(0, take) });
      off += take;
      data = data.subarray(take);
    }
  }
  if (cur) yield done(cur);
}

type Run = { offset: number; data: Buffer };

/** Keep at most `limit` promises running; `drain` waits for the rest and rethrows the first failure. */
function bounded(limit: number) {
  const running = new Set<Promise<void>>();
  let failure: unknown;
  return {
    async add(task: () => Promise<void>) {
      if (failure) throw failure;
      while (running.size >= limit) await Promise.race(running);
      if (failure) throw failure;
      const p: Promise<void> = task()
        .catch((e) => {
          failure ??= e;
        })
        .finally(() => running.delete(p));
      running.add(p);
    },
    async drain() {
      await Promise.all(running);
      if (failure) throw failure;
    },
  };
}

export interface TransferProgress {
  chunks: number;
  chunksDone: number;
  /** Chunks the registry already had (push) or the old image already held (pull). */
  chunksSkipped: number;
  bytesMoved: number;
}

function progressReporter(onProgress: ((m: string) => void) | undefined, verb: string) {
  let last = 0;
  return (p: TransferProgress, force = false) => {
    if (!onProgress) return;
    const now = Date.now();
    if (!force && now - last < 2000) return;
    last = now;
    onProgress(
      `${verb} ${p.chunksDone}/${p.chunks || '?'} chunks, ${(p.bytesMoved / 2 ** 20).toFixed(1)} MiB moved, ${p.chunksSkipped} reused`,
    );
  };
}

export interface PushImageResult extends RegistryImageInfo {
  digest: string;
  chunksUploaded: number;
  /** Chunks the repository already had (not uploaded). */
  chunksSkipped: number;
  /** Of those, windows identical to the tag's previous version (not even compressed). */
  chunksUnchanged: number;
  bytesUploaded: number;
}

/**
 * Push an ext3 image as chunks (uploading only those the repository lacks) and tag its manifest.
 * `annotations` are added to the manifest's (the cache store records its key there).
 */
export async function pushImage(
  client: RegistryClient,
  imagePath: string,
  tag: string,
  opts: { annotations?: Record<string, string>; onProgress?: (m: string) => void; mountFrom?: string } = {},
): Promise<PushImageResult> {
  const image = resolve(imagePath);
  await requireExt3(image);
  const lock = await acquireLock(image, 'shared'); // no writer while we read
  try {
    const [head, st] = await Promise.all([readHead(image), stat(image)]);
    const size = st.size;
    const layout = layoutOf(head);
    const hash = new ContentHash(size);
    const layers: ChunkDescriptor[] = [];
    const prog: TransferProgress = { chunks: 0, chunksDone: 0, chunksSkipped: 0, bytesMoved: 0 };
    const report = progressReporter(opts.onProgress, 'pushed');
    const pool = bounded(2);
    let dataBytes = 0;
    if (!(await client.hasBlob(EMPTY_CONFIG.digest))) await client.uploadBlob(Buffer.from('{}'));
    // the tag's previous version: its unchanged windows are taken as they are (no compression)
    const previous = await previousChunks(client, tag);
    let unchanged = 0;
    const upload = async (index: number, blob: Buffer, start: number, end: number, rawDigest: string) => {
      const digest = sha256Digest(blob);
      layers[index] = {
        mediaType: CHUNK_MEDIA_TYPE,
        digest,
        size: blob.length,
        annotations: {
          [`${A}.chunk.offset`]: String(start),
          [`${A}.chunk.end`]: String(end),
          [`${A}.chunk.raw-digest`]: rawDigest,
        },
      };
      let present = await client.hasBlob(digest);
      if (!present && opts.mountFrom) present = await client.mountBlob(digest, opts.mountFrom);
      if (present) prog.chunksSkipped++;
      else {
        await client.uploadBlob(blob, digest);
        prog.bytesMoved += blob.length;
      }
      prog.chunksDone++;
      report(prog);
    };
    type Pending = { index: number; start: number; end: number; raw: Buffer; rawDigest: string };
    let batch: Pending[] = [];
    // a batch is compressed by one zstd run, then its chunks go up (3 at a time); two batches at once
    const flush = async () => {
      const mine = batch;
      batch = [];
      if (!mine.length) return;
      await pool.add(async () => {
        const blobs = await compressBatch(mine.map((p) => p.raw));
        const ups = bounded(3);
        for (const [i, p] of mine.entries())
          await ups.add(() => upload(p.index, blobs[i]!, p.start, p.end, p.rawDigest));
        await ups.drain();
      });
    };
    for await (const w of windows(image, layout, size)) {
      for (const r of w.runs) {
        hash.update(r.offset, r.data);
        dataBytes += r.data.length;
      }
      const rawDigest = sha256Digest(w.raw);
      const known = previous.get(`${w.start}-${w.end}-${rawDigest}`);
      const index = layers.length;
      layers.push(undefined as unknown as ChunkDescriptor); // filled in below, in image order
      prog.chunks++;
      if (known) {
        await pool.add(async () => {
          if (await client.hasBlob(known.digest)) {
            layers[index] = known;
            unchanged++;
            prog.chunksSkipped++;
            prog.chunksDone++;
            report(prog);
          } else await upload(index, (await compressBatch([w.raw]))[0]!, w.start, w.end, rawDigest);
        });
        continue;
      }
      batch.push({ index, start: w.start, end: w.end, raw: w.raw, rawDigest });
      if (batch.length >= BATCH_WINDOWS) await flush();
    }
    await flush();
    await pool.drain();
    report(prog, true);
    const info: RegistryImageInfo = {
      sizeBytes: size,
      sha256: hash.digest(),
      dataBytes,
      chunks: layers.length,
    };
    const manifest: ImageManifest = {
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType: IMAGE_ARTIFACT_TYPE,
      config: EMPTY_CONFIG,
      layers,
      annotations: {
        [`${A}.format-version`]: String(IMAGE_FORMAT_VERSION),
        [`${A}.image.name`]: basename(image),
        [`${A}.image.size`]: String(size),
        [`${A}.image.content-digest`]: info.sha256,
        [`${A}.image.data-bytes`]: String(dataBytes),
        'org.opencontainers.image.created': new Date().toISOString(),
        ...opts.annotations,
      },
    };
    const digest = await client.putManifest(tag, Buffer.from(JSON.stringify(manifest)), OCI_MANIFEST);
    return {
      ...info,
      digest,
      chunksUploaded: prog.chunks - prog.chunksSkipped,
      chunksSkipped: prog.chunksSkipped,
      chunksUnchanged: unchanged,
      bytesUploaded: prog.bytesMoved,
    };
  } finally {
    lock.release();
  }
}

/** The chunks of the image the tag points to now (if it is one), by window and raw digest. */
async function previousChunks(client: RegistryClient, tag: string): Promise<Map<string, ChunkDescriptor>> {
  const out = new Map<string, ChunkDescriptor>();
  try {
    const { body } = await client.getManifest(tag);
    const m = parseImageManifest(body, tag);
    for (const l of m.layers) {
      const a = l.annotations;
      out.set(`${a[`${A}.chunk.offset`]}-${a[`${A}.chunk.end`]}-${a[`${A}.chunk.raw-digest`]}`, l);
    }
  } catch (e) {
    if (!isOverlayError(e, 'E_NOT_FOUND') && !isOverlayError(e, 'E_WRONG_ARTIFACT')) throw e;
  }
  return out;
}

/** Parse and check an image manifest: E_WRONG_ARTIFACT for another kind of artifact. */
export function parseImageManifest(body: Buffer, where: string): ImageManifest & { info: RegistryImageInfo } {
  let m: ImageManifest;
  try {
    m = JSON.parse(body.toString('utf8'));
  } catch {
    throw new OverlayError('E_WRONG_ARTIFACT', `${where} is not an OCI manifest`);
  }
  if (m.artifactType !== IMAGE_ARTIFACT_TYPE || !Array.isArray(m.layers))
    throw new OverlayError(
      'E_WRONG_ARTIFACT',
      `${where} is ${m.artifactType ? `a ${m.artifactType} artifact` : 'not an overlay image'} (expected ${IMAGE_ARTIFACT_TYPE})`,
      { hint: 'push it with overlayctl push, or pull container images with apptainer pull' },
    );
  const a = m.annotations ?? {};
  const version = Number(a[`${A}.format-version`]);
  if (version !== IMAGE_FORMAT_VERSION)
    throw new OverlayError(
      'E_WRONG_ARTIFACT',
      `${where} has image format ${version}, this overlayctl reads ${IMAGE_FORMAT_VERSION}`,
      {
        hint: 'use the overlayctl version that pushed it',
      },
    );
  const size = Number(a[`${A}.image.size`]);
  if (!Number.isSafeInteger(size) || size <= 0 || size % BLOCK)
    throw new OverlayError('E_WRONG_ARTIFACT', `${where}: implausible image size ${a[`${A}.image.size`]}`);
  for (const l of m.layers) {
    const s = Number(l.annotations?.[`${A}.chunk.offset`]);
    const e = Number(l.annotations?.[`${A}.chunk.end`]);
    if (l.mediaType !== CHUNK_MEDIA_TYPE || !(s >= 0 && e > s && e <= size && s % BLOCK === 0))
      throw new OverlayError('E_WRONG_ARTIFACT', `${where}: a layer is not an image chunk in bounds`);
  }
  return {
    ...m,
    info: {
      sizeBytes: size,
      sha256: a[`${A}.image.content-digest`] ?? '',
      dataBytes: Number(a[`${A}.image.data-bytes`]),
      chunks: m.layers.length,
    },
  };
}

/** Is the block at `offset` inside one of the sorted `regions`? */
function inRegions(regions: Region[], offset: number): boolean {
  let lo = 0;
  let hi = regions.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const [a, b] = regions[mid]!;
    if (offset < a) hi = mid - 1;
    else if (offset >= b) lo = mid + 1;
    else return true;
  }
  return false;
}

/** A window of an older image (open as `fd`, in-use `regions`) encoded as a chunk's records. */
async function windowFromFile(old: OldImage, start: number, end: number): Promise<Buffer> {
  const buf = Buffer.alloc(end - start);
  await old.fh.read(buf, 0, buf.length, start);
  const blocks: Run[] = [];
  for (let b = 0; b < buf.length; b += BLOCK) {
    const block = buf.subarray(b, b + BLOCK);
    if (!block.equals(ZERO_BLOCK) && inRegions(old.regions, start + b))
      blocks.push({ offset: start + b, data: block });
  }
  return encodeRecords(mergeRuns(blocks));
}

export interface PullImageResult extends RegistryImageInfo {
  digest: string;
  chunksDownloaded: number;
  chunksReused: number;
  bytesDownloaded: number;
}

/**
 * Pull an image manifest's chunks into a temp file beside `target`, reusing windows an image
 * already at `target` holds, then verify (content digest, read-only fsck) and rename over
 * `target`. Any failure or a kill leaves `target` as it was (a stale temp file at most).
 */
export async function pullImage(
  client: RegistryClient,
  manifestBody: Buffer,
  manifestDigest: string,
  targetPath: string,
  opts: { onProgress?: (m: string) => void; where: string },
): Promise<PullImageResult> {
  const m = parseImageManifest(manifestBody, opts.where);
  const target = resolve(targetPath);
  const size = m.info.sizeBytes;
  await removeStaleTemps(target);
  const tmp = tempPathFor(target);
  let fd: number;
  try {
    fd = openSync(tmp, 'wx', 0o644);
  } catch (e) {
    throw fromFsError(e, tmp);
  }
  let fdOpen = true;
  let lock: Lock | undefined;
  let old: OldImage | undefined;
  const prog: TransferProgress = { chunks: m.layers.length, chunksDone: 0, chunksSkipped: 0, bytesMoved: 0 };
  const report = progressReporter(opts.onProgress, 'pulled');
  try {
    ftruncateSync(fd, size);
    if (await exists(target)) old = await openOld(target);
    const hash = new ContentHash(size);
    let dataBytes = 0;
    // groups of 8 chunks: reused from the old image or downloaded side by side, decompressed by
    // one zstd run, written and hashed in manifest order while the next group loads
    const reused = new Set<number>();
    const groups = Math.ceil(m.layers.length / BATCH_WINDOWS);
    const loadGroup = async (g: number): Promise<Buffer[]> => {
      const first = g * BATCH_WINDOWS;
      const members = m.layers.slice(first, first + BATCH_WINDOWS);
      const raws: Buffer[] = new Array(members.length);
      const fetched: Array<{ k: number; blob: Buffer }> = [];
      await Promise.all(
        members.map(async (l, k) => {
          if (old) {
            const raw = await windowFromFile(
              old,
              Number(l.annotations[`${A}.chunk.offset`]),
              Number(l.annotations[`${A}.chunk.end`]),
            );
            if (sha256Digest(raw) === l.annotations[`${A}.chunk.raw-digest`]) {
              reused.add(first + k);
              raws[k] = raw;
              return;
            }
          }
          const blob = await client.getBlob(l.digest);
          prog.bytesMoved += blob.length;
          fetched.push({ k, blob });
        }),
      );
      if (fetched.length) {
        const out = await decompressBatch(fetched.map((f) => f.blob)).catch((err) => {
          throw new OverlayError('E_INTEGRITY', `${opts.where}: a chunk does not decompress`, { cause: err });
        });
        fetched.forEach((f, j) => {
          raws[f.k] = out[j]!;
        });
      }
      return raws;
    };
    let next: Promise<Buffer[]> | undefined = groups ? loadGroup(0) : undefined;
    for (let g = 0; g < groups; g++) {
      const raws = await next!;
      next = g + 1 < groups ? loadGroup(g + 1) : undefined;
      next?.catch(() => {}); // awaited on the next turn
      for (const [k, raw] of raws.entries()) {
        const i = g * BATCH_WINDOWS + k;
        const l = m.layers[i]!;
        const s = Number(l.annotations[`${A}.chunk.offset`]);
        const e = Number(l.annotations[`${A}.chunk.end`]);
        if (reused.has(i)) prog.chunksSkipped++;
        if (sha256Digest(raw) !== l.annotations[`${A}.chunk.raw-digest`])
          throw new OverlayError('E_INTEGRITY', `${opts.where}: chunk at ${s} does not match its manifest`, {
            hint: 'the registry holds a damaged chunk; push the image again',
          });
        for (const r of decodeRecords(raw, s, e)) {
          await writeFully(fd, r.data, r.offset);
          hash.update(r.offset, r.data);
          dataBytes += r.data.length;
        }
        prog.chunksDone++;
        report(prog);
      }
    }
    report(prog, true);
    const sha256 = hash.digest();
    if (sha256 !== m.info.sha256)
      throw new OverlayError(
        'E_INTEGRITY',
        `${opts.where}: pulled image's content digest ${sha256} is not ${m.info.sha256}`,
      );
    fdatasyncSync(fd);
    closeSync(fd);
    fdOpen = false;
    const fsck = await runTool('e2fsck', ['-fn', '-E', 'readahead_kb=0', tmp], {
      okExitCodes: Array.from({ length: 255 }, (_, i) => i + 1),
      timeoutSeconds: 1800,
    });
    if (fsck.exitCode !== 0)
      throw new OverlayError(
        'E_INTEGRITY',
        `${opts.where}: pulled image fails e2fsck (exit ${fsck.exitCode})`,
        {
          hint: 'the pushed image was damaged; check it with overlayctl check and push it again',
        },
      );
    if (old) {
      await old.fh.close();
      old = undefined;
    }
    if (await exists(target)) lock = await acquireLock(target, 'exclusive'); // not while Apptainer uses it
    await rename(tmp, target);
    await fsyncPath(dirname(target)).catch(() => {});
    return {
      ...m.info,
      dataBytes,
      digest: manifestDigest,
      chunksDownloaded: prog.chunks - prog.chunksSkipped,
      chunksReused: prog.chunksSkipped,
      bytesDownloaded: prog.bytesMoved,
    };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (!isOverlayError(e) && (code === 'ENOSPC' || code === 'EDQUOT'))
      throw new OverlayError('E_NO_SPACE', `no space left to pull into ${target}`);
    throw e;
  } finally {
    if (fdOpen) closeSync(fd);
    await old?.fh.close();
    lock?.release();
    await rm(tmp, { force: true });
  }
}

interface OldImage {
  fh: FileHandle;
  regions: Region[];
}

/** The old image at the target, when it is an ext image worth reusing windows from. */
async function openOld(path: string): Promise<OldImage | undefined> {
  try {
    const f = await detectFormat(path);
    if (f.format === 'squashfs') return undefined;
    const regions = await packRegions(path);
    return { fh: await open(path, 'r'), regions };
  } catch {
    return undefined; // unreadable: reuse nothing
  }
}

/** Join adjacent blocks into runs, as dataRuns yields them (so records match a push's). */
function mergeRuns(blocks: Run[]): Run[] {
  const out: Array<{ offset: number; data: Buffer }> = [];
  let cur: { offset: number; parts: Buffer[]; len: number } | undefined;
  for (const b of blocks) {
    if (cur && cur.offset + cur.len === b.offset) {
      cur.parts.push(b.data);
      cur.len += b.data.length;
    } else {
      if (cur) out.push({ offset: cur.offset, data: Buffer.concat(cur.parts) });
      cur = { offset: b.offset, parts: [b.data], len: b.data.length };
    }
  }
  if (cur) out.push({ offset: cur.offset, data: Buffer.concat(cur.parts) });
  return out;
}
