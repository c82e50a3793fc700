import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import { fromFsError, OverlayError } from '../errors';
import { replaceAtomically } from '../fs/atomic';
import {
  DATA_PARTITION,
  DEFAULT_DESCRIPTOR_CAPACITY,
  DEFAULT_DESCRIPTORS_OFFSET,
  DESCRIPTOR_LEN,
  encodeDescriptor,
  encodeHeader,
  FS_SQUASHFS,
  hostSifArch,
  PART_OVERLAY,
  PARTITION_ALIGNMENT,
  readSif,
} from './format';
import { extractObjectTo } from './rewrite';

export interface SifLayerResult {
  path: string;
  sizeBytes: number;
  /** The SIF's id (derived from the layer's bytes: the same layer always gives the same SIF). */
  id?: string;
}

async function requireSquashfs(path: string): Promise<number> {
  const fh = await fsp.open(path, 'r').catch((e) => {
    throw fromFsError(e, path);
  });
  try {
    const st = await fh.stat();
    const head = Buffer.alloc(4);
    await fh.read(head, 0, 4, 0);
    if (!st.isFile() || head.toString('latin1') !== 'hsqs')
      throw new OverlayError('E_UNKNOWN_FORMAT', `${path} is not a SquashFS layer`);
    return st.size;
  } finally {
    await fh.close();
  }
}

async function sha256File(path: string): Promise<Buffer> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest();
}

/**
 * Wrap a SquashFS layer in a SIF whose only object is that layer as an overlay partition: what
 * `apptainer sif new` + `apptainer sif add --datatype 4 --partfs 1 --parttype 4 --partarch 2
 * --groupid 1` make, usable as `apptainer exec --overlay layer.sif:ro` and pullable with
 * `oras://`. Deterministic (id from the layer's sha256, times 0), so the same layer always gives a
 * byte-identical SIF and the same registry digest. Written under a temp name and renamed.
 */
export async function wrapLayerInSif(layerSqfs: string, outSif: string): Promise<SifLayerResult> {
  const size = await requireSquashfs(layerSqfs);
  const digest = await sha256File(layerSqfs);
  // a version-4-shaped UUID from the digest
  digest[6] = (digest[6]! & 0x0f) | 0x40;
  digest[8] = (digest[8]! & 0x3f) | 0x80;
  const id = digest.subarray(0, 16).toString('hex');
  const uuid = `${id.slice(0, 8)}-${id.slice(8, 12)}-${id.slice(12, 16)}-${id.slice(16, 20)}-${id.slice(20)}`;
  const dataOffset = DEFAULT_DESCRIPTORS_OFFSET + DEFAULT_DESCRIPTOR_CAPACITY * DESCRIPTOR_LEN;
  const offset = Math.ceil(dataOffset / PARTITION_ALIGNMENT) * PARTITION_ALIGNMENT;
  const header = encodeHeader({
    id: uuid,
    time: 0,
    descriptorsFree: DEFAULT_DESCRIPTOR_CAPACITY - 1,
    dataSize: offset + size - dataOffset,
  });
  const descriptor = encodeDescriptor({
    dataType: DATA_PARTITION,
    id: 1,
    groupId: 1,
    offset,
    size,
    sizeWithPadding: offset - dataOffset + size,
    time: 0,
    partition: { fsType: FS_SQUASHFS, partType: PART_OVERLAY, arch: hostSifArch() },
  });
  await replaceAtomically(outSif, async (tmp) => {
    const fh = await fsp.open(tmp, 'r+');
    try {
      await fh.write(header, 0, header.length, 0);
      await fh.write(descriptor, 0, descriptor.length, DEFAULT_DESCRIPTORS_OFFSET);
      await fh.truncate(offset); // empty descriptor slots are zeros
      let pos = offset;
      for await (const chunk of createReadStream(layerSqfs, { highWaterMark: 4 * 1024 * 1024 })) {
        const b = chunk as Buffer;
        await fh.write(b, 0, b.length, pos);
        pos += b.length;
      }
      if (pos !== offset + size)
        throw new OverlayError('E_TOOL_FAILED', `${layerSqfs} changed while it was read`);
    } finally {
      await fh.close();
    }
  });
  return { path: outSif, sizeBytes: (await fsp.stat(outSif)).size, id: uuid };
}

/**
 * The SquashFS layer back out of a SIF made by wrapLayerInSif (or by `apptainer sif add` the same
 * way): its single SquashFS overlay/data partition, byte-identical, renamed into place.
 */
export async function layerFromSif(sif: string, outSqfs: string): Promise<SifLayerResult> {
  const file = await readSif(sif);
  const layers = file.descriptors.filter(
    (d) =>
      d.partition?.fsType === FS_SQUASHFS &&
      (d.partition.partType === PART_OVERLAY || d.partition.partType === 3),
  );
  if (layers.length === 0)
    throw new OverlayError('E_UNKNOWN_FORMAT', `${sif} holds no SquashFS layer partition`, {
      hint: 'a container SIF is not a layer; layers are SIFs with one SquashFS overlay partition',
    });
  if (layers.length > 1)
    throw new OverlayError(
      'E_INVALID_INPUT',
      `${sif} holds ${layers.length} SquashFS layer partitions; expected one`,
    );
  const d = layers[0]!;
  await replaceAtomically(outSqfs, async (tmp) => {
    await extractObjectTo(sif, d, tmp, 'extents');
    await requireSquashfs(tmp);
  });
  return { path: outSqfs, sizeBytes: d.size, id: file.header.id };
}

/**
 * A SIF given as a read-only layer (`--overlay layer.sif:ro`): it must hold an overlay partition
 * Apptainer can mount (SquashFS or ext3), as wrapLayerInSif and `apptainer overlay create` make.
 */
export async function requireSifLayer(path: string): Promise<void> {
  const file = await readSif(path);
  const ok = file.descriptors.some(
    (d) =>
      d.partition?.partType === PART_OVERLAY &&
      (d.partition.fsType === FS_SQUASHFS || d.partition.fsType === 2),
  );
  if (!ok)
    throw new OverlayError(
      'E_NOT_EXT3',
      `${path} is a SIF without an overlay partition; it cannot be a layer`,
      {
        hint: 'a layer SIF holds one SquashFS (or ext3) overlay partition, as registry layers do',
      },
    );
}
