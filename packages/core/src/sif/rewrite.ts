import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { fromFsError, OverlayError } from '../errors';
import { replaceAtomically } from '../fs/atomic';
import { dataExtents } from '../fs/sparse';
import {
  DATA_PARTITION,
  DESCRIPTOR_LEN,
  encodeDescriptor,
  PARTITION_ALIGNMENT,
  readSif,
  type SifDescriptor,
  type SifFile,
  setDescriptorPlace,
  updateHeader,
} from './format';

const CHUNK = 4 * 1024 * 1024;
const BLOCK = 4096;
const ZERO_BLOCK = Buffer.alloc(BLOCK);

/**
 * How bytes land in the destination: `sparse` skips all-zero 4 KiB blocks (they read back as
 * zeros from a hole), `extents` copies the source's data extents as they are (holes stay holes,
 * written zeros stay allocated), `full` writes every byte (an allocated overlay stays allocated,
 * so it cannot hit ENOSPC later inside a container).
 */
export type CopyMode = 'sparse' | 'extents' | 'full';

const nowSeconds = () => Math.floor(Date.now() / 1000);

function intersect(extents: Array<[number, number]>, start: number, end: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const [a, b] of extents) {
    const s = Math.max(a, start);
    const e = Math.min(b, end);
    if (s < e) out.push([s, e]);
  }
  return out;
}

async function copyRange(
  src: FileHandle,
  srcExtents: Array<[number, number]>,
  srcStart: number,
  length: number,
  dst: FileHandle,
  dstStart: number,
  mode: CopyMode,
): Promise<void> {
  const end = srcStart + length;
  const ranges: Array<[number, number]> =
    mode === 'full' ? [[srcStart, end]] : intersect(srcExtents, srcStart, end);
  const buf = Buffer.allocUnsafe(CHUNK);
  for (const [a, b] of ranges) {
    // sparse: read whole blocks (relative to srcStart) so zero blocks can be skipped
    const from = mode === 'sparse' ? a - ((a - srcStart) % BLOCK) : a;
    for (let pos = from; pos < b; pos += CHUNK) {
      const want = Math.min(CHUNK, b - pos);
      const { bytesRead } = await src.read(buf, 0, want, pos);
      if (bytesRead < want) buf.fill(0, bytesRead, want);
      const data = buf.subarray(0, want);
      const at = dstStart + (pos - srcStart);
      if (mode !== 'sparse') {
        await writeAll(dst, data, at);
        continue;
      }
      let runStart = -1;
      for (let o = 0; o < want; o += BLOCK) {
        const block = data.subarray(o, Math.min(o + BLOCK, want));
        const zero = block.length === BLOCK ? block.equals(ZERO_BLOCK) : block.every((x) => x === 0);
        if (!zero && runStart < 0) runStart = o;
        else if (zero && runStart >= 0) {
          await writeAll(dst, data.subarray(runStart, o), at + runStart);
          runStart = -1;
        }
      }
      if (runStart >= 0) await writeAll(dst, data.subarray(runStart, want), at + runStart);
    }
  }
}

async function writeAll(fh: FileHandle, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    if (bytesWritten <= 0) throw new OverlayError('E_NO_SPACE', 'short write: no space left on device');
    done += bytesWritten;
  }
}

async function openOrThrow(path: string, flags: string): Promise<FileHandle> {
  try {
    return await fsp.open(path, flags);
  } catch (e) {
    throw fromFsError(e, path);
  }
}

/** Bytes of [start, start+len) of a file that are data extents (not holes). */
export async function allocatedBytesInRange(path: string, start: number, len: number): Promise<number> {
  return intersect(await dataExtents(path), start, start + len).reduce((n, [a, b]) => n + b - a, 0);
}

/** Whether the SIF's bytes [start, start+len) are all allocated (no hole). */
export async function rangeIsAllocated(path: string, start: number, len: number): Promise<boolean> {
  return (await allocatedBytesInRange(path, start, len)) === len;
}

/**
 * Copy one object's bytes out of a SIF into `out` (created or truncated; not renamed: callers
 * that publish wrap this in replaceAtomically). Sparse by default: zero blocks become holes.
 */
export async function extractObjectTo(
  sifPath: string,
  d: SifDescriptor,
  out: string,
  mode: CopyMode = 'sparse',
): Promise<void> {
  const src = await openOrThrow(sifPath, 'r');
  try {
    const dst = await openOrThrow(out, 'w');
    try {
      await dst.truncate(d.size);
      const extents = mode === 'full' ? [] : await dataExtents(sifPath);
      await copyRange(src, extents, d.offset, d.size, dst, 0, mode);
      await dst.sync();
    } catch (e) {
      throw fromFsError(e, out); // a full disk is E_NO_SPACE
    } finally {
      await dst.close();
    }
  } finally {
    await src.close();
  }
}

export type SifChange =
  | {
      kind: 'add';
      /** File whose bytes become the new object. */
      source: string;
      dataType?: number;
      partition?: { fsType: number; partType: number; arch: string };
      groupId: number;
      name?: string;
      mode?: CopyMode;
    }
  | { kind: 'replace'; id: number; source: string; mode?: CopyMode }
  | { kind: 'remove'; id: number };

export interface RewriteResult {
  sif: SifFile;
  /** The id of the added, replaced or removed object. */
  id: number;
}

/** Smallest offset >= cursor with the same remainder modulo 4096 as `old` (keeps every alignment). */
const placeAfter = (cursor: number, old: number) =>
  cursor + ((((old - cursor) % PARTITION_ALIGNMENT) + PARTITION_ALIGNMENT) % PARTITION_ALIGNMENT);

/**
 * Rewrite a SIF with one object added, replaced or removed, crash-safely: the new SIF is built
 * under a temporary name next to it and renamed over it, so a SIGKILL at any moment leaves the
 * old file or the new one. The header (id, creation time, launch script, arch) and every other
 * descriptor keep their bytes; objects before the changed one keep their offsets, objects after
 * it move by whole 4 KiB steps (alignment kept). Ids never change: an added object takes the
 * first free slot and the id Apptainer would give it (slot + 1).
 * The caller holds the lock (see lockSifOverlay).
 */
export async function rewriteSif(
  path: string,
  change: SifChange,
  opts: { onProgress?: (line: string) => void } = {},
): Promise<RewriteResult> {
  const sif = await readSif(path);
  const st = await fsp.stat(path);
  const byOffset = [...sif.descriptors].sort((a, b) => a.offset - b.offset || a.slot - b.slot);
  const dataEnd = Math.max(sif.header.dataOffset, ...sif.descriptors.map((d) => d.offset + d.size));
  const time = nowSeconds();
  const changed = new Map<number, Buffer>(); // slot -> new descriptor bytes
  let freeDelta = 0;
  let start: number;
  let newLength: number;
  let target: SifDescriptor | undefined;
  let later: SifDescriptor[] = [];
  let id: number;
  let mode: CopyMode = 'extents';

  const sourceSize =
    change.kind === 'remove'
      ? 0
      : (
          await fsp.stat(change.source).catch((e) => {
            throw fromFsError(e, change.source);
          })
        ).size;

  if (change.kind === 'add') {
    const used = new Set(sif.descriptors.map((d) => d.slot));
    let slot = 0;
    while (used.has(slot)) slot++;
    if (slot >= sif.header.descriptorsTotal)
      throw new OverlayError('E_INVALID_INPUT', `${path} has no free descriptor slot for another object`, {
        details: { descriptorsTotal: sif.header.descriptorsTotal },
      });
    const ids = new Set(sif.descriptors.map((d) => d.id));
    id = slot + 1;
    if (ids.has(id)) id = Math.max(...ids) + 1;
    start = Math.ceil(dataEnd / PARTITION_ALIGNMENT) * PARTITION_ALIGNMENT;
    newLength = sourceSize;
    mode = change.mode ?? 'extents';
    changed.set(
      slot,
      encodeDescriptor({
        dataType: change.dataType ?? DATA_PARTITION,
        id,
        groupId: change.groupId,
        offset: start,
        size: sourceSize,
        sizeWithPadding: start - dataEnd + sourceSize,
        time,
        name: change.name,
        partition: change.partition,
      }),
    );
    freeDelta = -1;
  } else {
    target = sif.descriptors.find((d) => d.id === change.id);
    if (!target) throw new OverlayError('E_NOT_FOUND', `${path} has no object with id ${change.id}`);
    id = target.id;
    start = target.offset;
    newLength = change.kind === 'replace' ? sourceSize : 0;
    const t = target;
    const overlapping = byOffset.find((d) => d !== t && d.offset < t.offset && d.offset + d.size > t.offset);
    if (overlapping)
      throw new OverlayError('E_INTEGRITY', `${path}: objects ${overlapping.id} and ${t.id} overlap`);
    later = byOffset.filter((d) => d !== t && d.offset >= t.offset);
    if (change.kind === 'replace') {
      mode = change.mode ?? ((await rangeIsAllocated(path, t.offset, t.size)) ? 'full' : 'sparse');
      const raw = Buffer.from(t.raw);
      setDescriptorPlace(raw, {
        offset: t.offset,
        size: sourceSize,
        sizeWithPadding: t.sizeWithPadding - t.size + sourceSize,
        time,
      });
      changed.set(t.slot, raw);
    } else {
      changed.set(t.slot, Buffer.alloc(DESCRIPTOR_LEN)); // what `sif del` leaves: a zeroed slot
      freeDelta = 1;
    }
  }

  // where the objects after the changed one go
  let cursor = start + newLength;
  const moves: Array<{ d: SifDescriptor; to: number }> = [];
  for (const d of later) {
    const to = placeAfter(cursor, d.offset);
    moves.push({ d, to });
    const raw = Buffer.from(d.raw);
    setDescriptorPlace(raw, { offset: to, size: d.size, sizeWithPadding: to - cursor + d.size });
    changed.set(d.slot, raw);
    cursor = to + d.size;
  }
  const before = byOffset.filter((d) => d.offset < start && d !== target);
  const prefixEnd = change.kind === 'add' ? Math.min(st.size, start) : start;
  const finalEnd = Math.max(
    sif.header.dataOffset,
    ...before.map((d) => d.offset + d.size),
    change.kind === 'remove' ? 0 : start + newLength,
    cursor === start ? 0 : cursor,
  );

  await replaceAtomically(
    path,
    async (tmp) => {
      const src = await openOrThrow(path, 'r');
      const dst = await openOrThrow(tmp, 'r+');
      try {
        const extents = await dataExtents(path);
        opts.onProgress?.('copying the SIF header and the objects before the overlay');
        await copyRange(src, extents, 0, prefixEnd, dst, 0, 'extents');
        await dst.truncate(finalEnd);
        if (change.kind !== 'remove') {
          opts.onProgress?.(`writing the ${change.kind === 'add' ? 'new' : 'new version of the'} partition`);
          const source = await openOrThrow(change.source, 'r');
          try {
            await copyRange(source, await dataExtents(change.source), 0, sourceSize, dst, start, mode);
          } finally {
            await source.close();
          }
        }
        for (const { d, to } of moves) await copyRange(src, extents, d.offset, d.size, dst, to, 'extents');
        for (const [slot, raw] of changed)
          await writeAll(dst, raw, sif.header.descriptorsOffset + slot * DESCRIPTOR_LEN);
        const header = updateHeader(sif.rawHeader, {
          modifiedAt: time,
          descriptorsFree: sif.header.descriptorsFree + freeDelta,
          dataSize: finalEnd - sif.header.dataOffset,
        });
        await writeAll(dst, header, 0);
        await dst.chmod(st.mode & 0o7777);
        if (process.getuid?.() === 0) await dst.chown(st.uid, st.gid);
      } finally {
        await dst.close();
        await src.close();
      }
      const check = await readSif(tmp); // never rename a SIF we cannot read back
      if (
        check.header.id !== sif.header.id ||
        check.descriptors.length !== sif.descriptors.length - freeDelta
      )
        throw new OverlayError('E_INTERNAL', `rewritten SIF ${tmp} does not read back as expected`);
    },
    { mode: 0o600 },
  );
  return { sif: await readSif(path), id };
}
