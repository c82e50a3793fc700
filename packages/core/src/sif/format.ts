import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { fromFsError, OverlayError } from '../errors';
import { isSifHead } from '../image/format';

/*
 * The SIF container format (Apptainer/Singularity), read and written directly. Layout, as
 * documented by the format's reference implementation (github.com/apptainer/sif, pkg/sif):
 *   - a 128-byte global header at offset 0 (all integers little-endian, no padding);
 *   - a table of fixed-size 585-byte descriptors (48 slots by default, at offset 4096);
 *   - the data objects they point at (partitions aligned to 4096 bytes).
 * We write the format ourselves instead of driving `apptainer sif add/del`: those edit the file
 * in place (a crash leaves a half-written SIF), cannot resize or replace an object keeping its
 * id and offset, and need Apptainer installed where overlayctl runs (CI runners, cache hosts).
 * Every rewrite here builds a new file and renames it over the old one (rewrite.ts).
 */

export const SIF_MAGIC = 'SIF_MAGIC';
export const HEADER_LEN = 128;
export const DESCRIPTOR_LEN = 585;
export const DEFAULT_DESCRIPTOR_CAPACITY = 48;
export const DEFAULT_DESCRIPTORS_OFFSET = 4096;
export const PARTITION_ALIGNMENT = 4096;
const GROUP_MASK = 0xf0000000;
/** Far above any real SIF (Apptainer makes 48); bounds what a hostile header can make us allocate. */
const MAX_DESCRIPTORS = 65536;

export const SIF_DATA_TYPES = {
  16385: 'deffile',
  16386: 'envVars',
  16387: 'labels',
  16388: 'partition',
  16389: 'signature',
  16390: 'genericJson',
  16391: 'generic',
  16392: 'cryptoMessage',
  16393: 'sbom',
  16394: 'ociRootIndex',
  16395: 'ociBlob',
} as const;
export const DATA_PARTITION = 0x4004;
export const DATA_SIGNATURE = 0x4005;
export const DATA_CRYPTO_MESSAGE = 0x4008;

export const SIF_FS_TYPES = {
  1: 'squashfs',
  2: 'ext3',
  3: 'archive',
  4: 'raw',
  5: 'encryptedSquashfs',
  6: 'gocryptfsSquashfs',
} as const;
export const FS_SQUASHFS = 1;
export const FS_EXT3 = 2;

export const SIF_PART_TYPES = { 1: 'system', 2: 'primarySystem', 3: 'data', 4: 'overlay' } as const;
export const PART_PRIMARY_SYSTEM = 2;
export const PART_OVERLAY = 4;

/** SIF architecture codes ("02" = amd64) by Node's process.arch. */
const ARCH_BY_NODE: Record<string, string> = {
  ia32: '01',
  x64: '02',
  arm: '03',
  arm64: '04',
  ppc64: '06', // Node's ppc64 is little-endian
  mips: '07',
  mipsel: '08',
  s390x: '11',
  riscv64: '12',
  loong64: '13',
};
const ARCH_NAMES: Record<string, string> = {
  '00': 'unknown',
  '01': '386',
  '02': 'amd64',
  '03': 'arm',
  '04': 'arm64',
  '05': 'ppc64',
  '06': 'ppc64le',
  '07': 'mips',
  '08': 'mipsle',
  '09': 'mips64',
  '10': 'mips64le',
  '11': 's390x',
  '12': 'riscv64',
  '13': 'loong64',
};
export const hostSifArch = (): string => ARCH_BY_NODE[process.arch] ?? '00';
export const sifArchName = (code: string): string => ARCH_NAMES[code] ?? 'unknown';

export interface SifHeader {
  launchScript: string;
  version: string;
  /** Architecture code of the primary partition ("02"); archName is its Go name ("amd64"). */
  arch: string;
  archName: string;
  /** The SIF's id (a UUID); kept by every rewrite. */
  id: string;
  createdAt: number;
  modifiedAt: number;
  descriptorsFree: number;
  descriptorsTotal: number;
  descriptorsOffset: number;
  descriptorsSize: number;
  dataOffset: number;
  dataSize: number;
}

export interface SifPartitionMeta {
  fsType: number;
  fs: string;
  partType: number;
  part: string;
  arch: string;
  archName: string;
}

export interface SifDescriptor {
  /** Index in the descriptor table. */
  slot: number;
  dataType: number;
  type: string;
  id: number;
  /** Object group (0 = none); the overlay Apptainer uses belongs to the root filesystem's group (1). */
  groupId: number;
  linkedId: number;
  linkedIsGroup: boolean;
  offset: number;
  size: number;
  sizeWithPadding: number;
  createdAt: number;
  modifiedAt: number;
  name: string;
  partition?: SifPartitionMeta;
  signature?: { hashType: number; entity: string };
  /** The 585 bytes as on disk, rewritten field by field so unknown bytes survive. */
  raw: Buffer;
}

export interface SifFile {
  path: string;
  fileSize: number;
  header: SifHeader;
  /** Used descriptors, in table order. */
  descriptors: SifDescriptor[];
  /** Raw header bytes. */
  rawHeader: Buffer;
}

const cstr = (b: Buffer, start: number, len: number): string => {
  const s = b.subarray(start, start + len);
  const nul = s.indexOf(0);
  return s.subarray(0, nul < 0 ? s.length : nul).toString('latin1');
};
const i64 = (b: Buffer, at: number): number => Number(b.readBigInt64LE(at));

export function parseHeader(b: Buffer): SifHeader {
  const arch = cstr(b, 45, 3);
  return {
    launchScript: cstr(b, 0, 32),
    version: cstr(b, 42, 3),
    arch,
    archName: sifArchName(arch),
    id: formatUuid(b.subarray(48, 64)),
    createdAt: i64(b, 64),
    modifiedAt: i64(b, 72),
    descriptorsFree: i64(b, 80),
    descriptorsTotal: i64(b, 88),
    descriptorsOffset: i64(b, 96),
    descriptorsSize: i64(b, 104),
    dataOffset: i64(b, 112),
    dataSize: i64(b, 120),
  };
}

export function parseDescriptor(raw: Buffer, slot: number): SifDescriptor | null {
  if (raw[4] === 0) return null; // unused slot
  const dataType = raw.readInt32LE(0);
  const groupRaw = raw.readUInt32LE(9);
  const linkRaw = raw.readUInt32LE(13);
  const d: SifDescriptor = {
    slot,
    dataType,
    type: SIF_DATA_TYPES[dataType as keyof typeof SIF_DATA_TYPES] ?? 'unknown',
    id: raw.readUInt32LE(5),
    groupId: (groupRaw & ~GROUP_MASK) >>> 0,
    linkedId: (linkRaw & ~GROUP_MASK) >>> 0,
    linkedIsGroup: (linkRaw & GROUP_MASK) >>> 0 === GROUP_MASK,
    offset: i64(raw, 17),
    size: i64(raw, 25),
    sizeWithPadding: i64(raw, 33),
    createdAt: i64(raw, 41),
    modifiedAt: i64(raw, 49),
    name: cstr(raw, 73, 128),
    raw,
  };
  const extra = 201;
  if (dataType === DATA_PARTITION) {
    const fsType = raw.readInt32LE(extra);
    const partType = raw.readInt32LE(extra + 4);
    const arch = cstr(raw, extra + 8, 3);
    d.partition = {
      fsType,
      fs: SIF_FS_TYPES[fsType as keyof typeof SIF_FS_TYPES] ?? 'unknown',
      partType,
      part: SIF_PART_TYPES[partType as keyof typeof SIF_PART_TYPES] ?? 'unknown',
      arch,
      archName: sifArchName(arch),
    };
  } else if (dataType === DATA_SIGNATURE) {
    d.signature = { hashType: raw.readInt32LE(extra), entity: cstr(raw, extra + 4, 256) };
  }
  return d;
}

function formatUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function uuidBytes(id: string): Buffer {
  const hex = id.replace(/-/g, '');
  if (!/^[0-9a-f]{32}$/i.test(hex)) throw new OverlayError('E_INVALID_INPUT', `not a UUID: ${id}`);
  return Buffer.from(hex, 'hex');
}

const damaged = (path: string, why: string) =>
  new OverlayError('E_INTEGRITY', `${path} is a damaged SIF file: ${why}`, {
    hint: 'the SIF header or descriptor table is not usable; restore the file from a copy',
  });

/** Parse a SIF's header and descriptor table (no data is read). Refuses damaged or truncated files. */
export async function readSif(path: string): Promise<SifFile> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(path, 'r');
  } catch (e) {
    throw fromFsError(e, path);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new OverlayError('E_UNKNOWN_FORMAT', `${path} is not a regular file`);
    const rawHeader = Buffer.alloc(HEADER_LEN);
    const { bytesRead } = await fh.read(rawHeader, 0, HEADER_LEN, 0);
    if (!isSifHead(rawHeader.subarray(0, bytesRead)))
      throw new OverlayError('E_UNKNOWN_FORMAT', `${path} is not a SIF file`);
    if (bytesRead < HEADER_LEN) throw damaged(path, 'truncated header');
    const header = parseHeader(rawHeader);
    if (header.version !== '01')
      throw new OverlayError(
        'E_UNKNOWN_FORMAT',
        `${path} is SIF version ${header.version}; only 01 is known`,
      );
    const { descriptorsOffset: off, descriptorsTotal: total, descriptorsSize: size } = header;
    if (total < 0 || total > MAX_DESCRIPTORS || size !== total * DESCRIPTOR_LEN || off < HEADER_LEN)
      throw damaged(path, 'descriptor table fields are inconsistent');
    if (off + size > st.size) throw damaged(path, 'the file ends inside the descriptor table');
    const table = Buffer.alloc(size);
    await fh.read(table, 0, size, off);
    const descriptors: SifDescriptor[] = [];
    for (let i = 0; i < total; i++) {
      const d = parseDescriptor(Buffer.from(table.subarray(i * DESCRIPTOR_LEN, (i + 1) * DESCRIPTOR_LEN)), i);
      if (!d) continue;
      if (d.offset < 0 || d.size < 0 || d.offset + d.size > st.size)
        throw damaged(path, `object ${d.id} (${d.type}) extends past the end of the file (truncated)`);
      descriptors.push(d);
    }
    return { path, fileSize: st.size, header, descriptors, rawHeader };
  } finally {
    await fh.close();
  }
}

/** Signature objects or encrypted root filesystems: what Apptainer refuses to add an overlay to. */
export function sifRefusals(sif: SifFile): string[] {
  const why: string[] = [];
  const sigs = sif.descriptors.filter((d) => d.dataType === DATA_SIGNATURE);
  if (sigs.length) why.push(`it is signed (${sigs.length} signature object${sigs.length > 1 ? 's' : ''})`);
  const encrypted = sif.descriptors.filter(
    (d) => d.partition && (d.partition.fsType === 5 || d.partition.fsType === 6),
  );
  if (encrypted.length) why.push('its root filesystem is encrypted');
  return why;
}

/** The primary system partition (the container's root filesystem), if any. */
export const primaryPartition = (sif: SifFile): SifDescriptor | undefined =>
  sif.descriptors.find((d) => d.partition?.partType === PART_PRIMARY_SYSTEM);

/**
 * The writable ext3 overlay partition Apptainer uses with `--writable`: an ext3 partition of
 * type overlay in the root filesystem's group (Apptainer ignores overlays of other groups).
 */
export function overlayPartitions(sif: SifFile): SifDescriptor[] {
  const group = primaryPartition(sif)?.groupId ?? 0;
  return sif.descriptors.filter(
    (d) =>
      d.partition?.partType === PART_OVERLAY &&
      d.partition.fsType === FS_EXT3 &&
      (group === 0 || d.groupId === group),
  );
}

/** A new descriptor's bytes (Apptainer's defaults: no link, uid/gid 0, times now). */
export function encodeDescriptor(d: {
  dataType: number;
  id: number;
  groupId: number;
  linkedId?: number;
  offset: number;
  size: number;
  sizeWithPadding: number;
  time: number;
  name?: string;
  partition?: { fsType: number; partType: number; arch: string };
}): Buffer {
  const raw = Buffer.alloc(DESCRIPTOR_LEN);
  raw.writeInt32LE(d.dataType, 0);
  raw[4] = 1;
  raw.writeUInt32LE(d.id, 5);
  raw.writeUInt32LE((d.groupId | GROUP_MASK) >>> 0, 9);
  raw.writeUInt32LE(d.linkedId ?? 0, 13);
  raw.writeBigInt64LE(BigInt(d.offset), 17);
  raw.writeBigInt64LE(BigInt(d.size), 25);
  raw.writeBigInt64LE(BigInt(d.sizeWithPadding), 33);
  raw.writeBigInt64LE(BigInt(d.time), 41);
  raw.writeBigInt64LE(BigInt(d.time), 49);
  if (d.name) raw.write(d.name.slice(0, 127), 73, 'latin1');
  if (d.partition) {
    raw.writeInt32LE(d.partition.fsType, 201);
    raw.writeInt32LE(d.partition.partType, 205);
    raw.write(d.partition.arch.slice(0, 2), 209, 'latin1');
  }
  return raw;
}

/** Place fields of an existing descriptor (offset, sizes, mtime), leaving every other byte. */
export function setDescriptorPlace(
  raw: Buffer,
  place: { offset: number; size: number; sizeWithPadding: number; time?: number },
): void {
  raw.writeBigInt64LE(BigInt(place.offset), 17);
  raw.writeBigInt64LE(BigInt(place.size), 25);
  raw.writeBigInt64LE(BigInt(place.sizeWithPadding), 33);
  if (place.time !== undefined) raw.writeBigInt64LE(BigInt(place.time), 49);
}

/** A fresh global header (Apptainer's `sif new` defaults) for a SIF we create from nothing. */
export function encodeHeader(h: {
  id?: string;
  arch?: string;
  time: number;
  descriptorsFree: number;
  descriptorsTotal?: number;
  dataSize: number;
}): Buffer {
  const total = h.descriptorsTotal ?? DEFAULT_DESCRIPTOR_CAPACITY;
  const b = Buffer.alloc(HEADER_LEN);
  b.write('#!/usr/bin/env run-singularity\n', 0, 'latin1');
  b.write(SIF_MAGIC, 32, 'latin1');
  b.write('01', 42, 'latin1');
  b.write((h.arch ?? '00').slice(0, 2), 45, 'latin1');
  uuidBytes(h.id ?? randomUUID()).copy(b, 48);
  b.writeBigInt64LE(BigInt(h.time), 64);
  b.writeBigInt64LE(BigInt(h.time), 72);
  b.writeBigInt64LE(BigInt(h.descriptorsFree), 80);
  b.writeBigInt64LE(BigInt(total), 88);
  b.writeBigInt64LE(BigInt(DEFAULT_DESCRIPTORS_OFFSET), 96);
  b.writeBigInt64LE(BigInt(total * DESCRIPTOR_LEN), 104);
  b.writeBigInt64LE(BigInt(DEFAULT_DESCRIPTORS_OFFSET + total * DESCRIPTOR_LEN), 112);
  b.writeBigInt64LE(BigInt(h.dataSize), 120);
  return b;
}

/** Update the header's mutable fields in a copy of its raw bytes (id, times of creation kept). */
export function updateHeader(
  raw: Buffer,
  h: { modifiedAt: number; descriptorsFree: number; dataSize: number },
): Buffer {
  const b = Buffer.from(raw);
  b.writeBigInt64LE(BigInt(h.modifiedAt), 72);
  b.writeBigInt64LE(BigInt(h.descriptorsFree), 80);
  b.writeBigInt64LE(BigInt(h.dataSize), 120);
  return b;
}

/** A JSON-able view of a descriptor (no raw bytes). */
export function describeObject(d: SifDescriptor) {
  const { raw: _raw, slot: _slot, ...rest } = d;
  return rest;
}
