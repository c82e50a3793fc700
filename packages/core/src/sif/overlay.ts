import { promises as fsp } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isOverlayError, OverlayError } from '../errors';
import { exists, removeStaleTemps, replaceAtomically, tempPathFor } from '../fs/atomic';
import type { CheckResult } from '../image/check';
import type { CreateOptions } from '../image/create';
import { requireExt3 } from '../image/format';
import type { ImageInfo, SifSummary } from '../image/info';
import type { ResizeResult } from '../image/resize';
import { acquireLock, type Lock, type LockMode, type LockRange, probeLock } from '../lock/ofd';
import { runTool } from '../tools/run';
import {
  DATA_SIGNATURE,
  FS_EXT3,
  hostSifArch,
  overlayPartitions,
  PART_OVERLAY,
  primaryPartition,
  readSif,
  type SifDescriptor,
  type SifFile,
  sifRefusals,
} from './format';
import { allocatedBytesInRange, extractObjectTo, rewriteSif } from './rewrite';

export function summarizeSif(sif: SifFile): SifSummary {
  const overlay = overlayPartitions(sif)[0];
  return {
    id: sif.header.id,
    arch: sif.header.archName,
    createdAt: sif.header.createdAt,
    modifiedAt: sif.header.modifiedAt,
    signed: sif.descriptors.some((d) => d.dataType === DATA_SIGNATURE),
    encrypted: sif.descriptors.some((d) => d.partition?.fsType === 5 || d.partition?.fsType === 6),
    objects: sif.descriptors.map((d) => ({
      id: d.id,
      type: d.type,
      name: d.name,
      groupId: d.groupId,
      linkedId: d.linkedId,
      offset: d.offset,
      size: d.size,
      ...(d.partition ? { fs: d.partition.fs, partType: d.partition.part, arch: d.partition.archName } : {}),
    })),
    overlayId: overlay?.id ?? null,
  };
}

const addHint = (path: string) =>
  `add one: overlayctl create ${path} --size 1G, or overlayctl embed overlay.img ${path}`;

/** The SIF and its writable overlay partition; a clear E_NOT_EXT3 when it has none. */
export async function findSifOverlay(path: string): Promise<{ sif: SifFile; overlay: SifDescriptor }> {
  const sif = await readSif(path);
  const overlays = overlayPartitions(sif);
  if (overlays.length === 0) {
    const kinds = sif.descriptors
      .filter((d) => d.partition)
      .map((d) => `${d.partition!.fs} ${d.partition!.part}`)
      .join(', ');
    throw new OverlayError(
      'E_NOT_EXT3',
      `${path} is a SIF container without a writable overlay partition (partitions: ${kinds || 'none'})`,
      { hint: addHint(path), details: { sif: summarizeSif(sif) } },
    );
  }
  if (overlays.length > 1)
    throw new OverlayError(
      'E_INVALID_INPUT',
      `${path} has ${overlays.length} ext3 overlay partitions (ids ${overlays.map((o) => o.id).join(', ')}); Apptainer would use only one`,
      { hint: `remove the extra ones with apptainer sif del ID ${path}` },
    );
  return { sif, overlay: overlays[0]! };
}

/** The byte range Apptainer locks for this partition (pkg/image lockSection: offset, size). */
export const overlayLockRange = (overlay: SifDescriptor): LockRange => ({
  start: overlay.offset,
  length: overlay.size,
});

/**
 * Lock the overlay partition the way Apptainer does: an OFD lock on its byte range inside the
 * SIF (write lock for `--writable`, read lock otherwise). So a running `apptainer exec --writable
 * app.sif` makes this fail with E_LOCKED, and while we hold it Apptainer refuses to start.
 */
export function lockSifOverlay(
  path: string,
  overlay: SifDescriptor,
  mode: LockMode,
  opts: { waitSeconds?: number } = {},
): Promise<Lock> {
  return acquireLock(path, mode, { ...opts, range: overlayLockRange(overlay) });
}

const fileId = async (path: string) => {
  const st = await fsp.stat(path);
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}`;
};

/**
 * Lock the overlay partition and read the SIF again under the lock: another writer may have
 * replaced the SIF (a resize renames a new file over it) between our read and our lock, and a
 * descriptor read before the lock must never be used to copy bytes. Retries a few times, then
 * reports E_LOCKED.
 */
export async function lockedSifOverlay(
  path: string,
  mode: LockMode,
): Promise<{ sif: SifFile; overlay: SifDescriptor; lock: Lock }> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const id = await fileId(path);
    const { overlay } = await findSifOverlay(path);
    const lock = await lockSifOverlay(path, overlay, mode);
    try {
      const again = await findSifOverlay(path);
      const same =
        (await fileId(path)) === id &&
        again.overlay.id === overlay.id &&
        again.overlay.offset === overlay.offset &&
        again.overlay.size === overlay.size;
      if (same) return { ...again, lock };
    } catch (e) {
      lock.release();
      throw e;
    }
    lock.release();
  }
  throw new OverlayError('E_LOCKED', `${path} keeps changing under another writer`, {
    hint: 'wait for the other job to finish, then retry',
  });
}

/**
 * The whole SIF locked against our other writers while an overlay partition is added (a SIF
 * without an overlay has no partition range to lock; Apptainer takes no lock on such a SIF).
 */
async function lockedSifForAdd(path: string): Promise<{ sif: SifFile; lock: Lock }> {
  await readSifForAdd(path); // refusals first: they say more than a lock would
  const id = await fileId(path);
  const lock = await acquireLock(path, 'exclusive');
  try {
    if ((await fileId(path)) !== id)
      throw new OverlayError('E_LOCKED', `${path} was replaced by another writer; retry`);
    return { sif: await readSifForAdd(path), lock };
  } catch (e) {
    lock.release();
    throw e;
  }
}

/** Who holds a lock on the SIF's overlay partition ('free' | 'read' | 'write'). */
export async function probeSifOverlayLock(path: string) {
  const { overlay } = await findSifOverlay(path);
  return probeLock(path, overlayLockRange(overlay));
}

/** e2fsprogs' `file?offset=N` form: debugfs/dumpe2fs read the partition in place, without a copy. */
export function partitionDevice(path: string, d: SifDescriptor): string | null {
  return path.includes('?') ? null : `${path}?offset=${d.offset}`;
}

function refuseModification(path: string, sif: SifFile, what: string): void {
  const why = sifRefusals(sif);
  if (why.length)
    throw new OverlayError('E_INVALID_INPUT', `cannot ${what} ${path}: ${why.join(' and ')}`, {
      hint: 'Apptainer refuses this too: a signature would no longer match, an encrypted image cannot be changed; use a standalone overlay image (--overlay) instead',
    });
}

/**
 * A private work directory: next to the SIF when the result goes back into it (same filesystem,
 * and named like our other temp files so a later run removes what a SIGKILL left), else in TMPDIR.
 */
async function withWorkDir<T>(
  sifPath: string,
  nextToSif: boolean,
  fn: (dir: string) => Promise<T>,
): Promise<T> {
  let dir: string;
  if (nextToSif) {
    await removeStaleTemps(sifPath);
    dir = tempPathFor(sifPath);
    await fsp.mkdir(dir, { mode: 0o700 });
  } else {
    dir = await mkdtemp(join(tmpdir(), 'overlay-sif-'));
  }
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * A copy of the overlay's metadata only (e2image -r reading at the partition's offset): what info
 * and a read-only check need, without reading or writing the partition's data blocks (a 50 GB
 * overlay would otherwise be copied to TMPDIR). Falls back to a full sparse copy when e2image
 * cannot read the filesystem (a destroyed superblock), as the image check does.
 */
async function metadataCopy(path: string, overlay: SifDescriptor, out: string): Promise<void> {
  try {
    await runTool('e2image', ['-r', '-o', String(overlay.offset), path, out], { timeoutSeconds: 600 });
  } catch (e) {
    if (isOverlayError(e, 'E_TIMEOUT') || isOverlayError(e, 'E_NO_SPACE')) throw e;
    await rm(out, { force: true });
    await extractObjectTo(path, overlay, out);
  }
}

/** ImageInfo of the embedded overlay, reported for the SIF (path, size and allocation are the SIF's). */
async function infoFor(
  path: string,
  overlay: SifDescriptor,
  sif: SifFile,
  image: string,
): Promise<ImageInfo> {
  const { imageInfo } = await import('../image/info');
  const info = await imageInfo(image);
  const allocated = await allocatedBytesInRange(path, overlay.offset, overlay.size);
  return {
    ...info,
    image: path,
    sizeBytes: overlay.size,
    allocatedBytes: allocated,
    sparse: allocated < overlay.size,
    sif: summarizeSif(sif),
  };
}

/** `info` of a SIF: its objects, and for its overlay partition the same facts as for an image. */
export async function sifInfo(path: string): Promise<ImageInfo> {
  await removeStaleTemps(path);
  const sif = await readSif(path);
  const overlay = overlayPartitions(sif)[0];
  const st = await fsp.stat(path);
  if (!overlay) {
    return {
      image: path,
      format: 'sif',
      superblock: null,
      truncated: null,
      sizeBytes: st.size,
      allocatedBytes: st.blocks * 512,
      sparse: st.blocks * 512 < st.size,
      blockSize: null,
      usedBytes: null,
      freeBytes: null,
      inodesTotal: null,
      inodesUsed: null,
      inodesUsedPercent: null,
      inodeRatio: null,
      reservedPercent: null,
      uuid: null,
      clean: null,
      apptainerCompatible: false,
      apptainerProblems: [`no writable overlay partition (${addHint(path)})`],
      upper: null,
      sif: summarizeSif(sif),
    };
  }
  const locked = await lockedSifOverlay(path, 'shared').catch((e) => {
    if (isOverlayError(e, 'E_LOCKED')) return null; // a writer is running: report what is on disk
    throw e;
  });
  const lock = locked?.lock;
  const current = locked ?? { sif, overlay };
  try {
    return await withWorkDir(path, false, async (dir) => {
      const image = join(dir, 'overlay.img');
      await metadataCopy(path, current.overlay, image);
      return infoFor(path, current.overlay, current.sif, image);
    });
  } finally {
    lock?.release();
  }
}

/**
 * e2fsck's findings when the only fault is the superblock's free block/inode totals (not a group's).
 * Apptainer's unprivileged mount of a SIF partition (fuse2fs under an LD_PRELOAD offset shim)
 * writes fuse2fs's superblock update at the SIF's own offset 1024 (header padding) instead of
 * the partition's, so after every such session the partition's totals are stale. The kernel
 * recomputes them at mount and e2fsck -fn does not count them as errors; only -fy "fixes" them.
 */
const STALE_TOTALS =
  /^(Free (blocks|inodes) count wrong \(\d+, counted=\d+\)\.?( \(repair: fix\))?|Fix\? yes)$/;
export const onlyStaleTotals = (r: CheckResult) =>
  r.status === 'corrupt' &&
  r.e2fsckExit === 1 &&
  r.problems.length > 0 &&
  r.problems.every((p) => STALE_TOTALS.test(p));

/**
 * check / check --repair of the embedded overlay: the same e2fsck verdicts as a standalone image
 * (checkImage on a sparse copy of the partition). A repair writes the repaired partition back by
 * rewriting the SIF under a temp name and renaming it (rewriteSif): the container partition and
 * every other object keep their bytes, and a SIGKILL leaves the old SIF or the new one.
 */
export async function checkSifOverlay(
  path: string,
  opts: { repair?: boolean; lockHeld?: boolean } = {},
): Promise<CheckResult> {
  const { checkImage, checkResult } = await import('../image/check');
  const started = Date.now();
  const fail = (e: unknown, status: CheckResult['status'] = 'error'): CheckResult => {
    const err = isOverlayError(e) ? e : new OverlayError('E_TOOL_FAILED', (e as Error).message);
    return checkResult(path, started, {
      status: err.code === 'E_INTEGRITY' ? 'corrupt' : status,
      error: { code: err.code, message: err.message },
    });
  };
  let lock: Lock | undefined;
  try {
    await removeStaleTemps(path);
    let { sif, overlay } = await findSifOverlay(path);
    if (opts.repair) refuseModification(path, sif, 'repair the overlay of');
    try {
      if (!opts.lockHeld)
        ({ sif, overlay, lock } = await lockedSifOverlay(path, opts.repair ? 'exclusive' : 'shared'));
    } catch (e) {
      if (isOverlayError(e, 'E_LOCKED')) return fail(e, 'locked');
      throw e;
    }
    return await withWorkDir(path, !!opts.repair, async (dir) => {
      const image = join(dir, 'overlay.img');
      // a repair needs the data too; a check only the metadata
      if (opts.repair) await extractObjectTo(path, overlay, image);
      else await metadataCopy(path, overlay, image);
      let r = await checkImage(image, { repair: opts.repair, lockHeld: true });
      if (!opts.repair && onlyStaleTotals(r)) {
        r = {
          ...r,
          status: 'clean',
          problems: [],
          warnings: [
            ...r.warnings,
            `stale superblock free block/inode totals (${r.problems.filter((p) => p !== 'Fix? yes').join(' ')}), left by an unprivileged Apptainer session on the SIF; harmless, check --repair refreshes them`,
          ],
        };
      }
      if (r.status === 'repaired') {
        await requireExt3(image); // never put back anything Apptainer would reject
        await rewriteSif(path, { kind: 'replace', id: overlay.id, source: image });
      }
      return { ...r, image: path, durationMs: Date.now() - started };
    });
  } catch (e) {
    return fail(e);
  } finally {
    lock?.release();
  }
}

/**
 * Grow or shrink the embedded overlay: resize a sparse copy of the partition (the standalone
 * resize steps, resizeCopy), then rewrite the SIF with it (rewriteSif: new file + rename, ids,
 * header and every other object kept; objects after the overlay move by whole 4 KiB steps).
 */
export async function resizeSifOverlay(
  path: string,
  sizeBytes: number,
  opts: { onProgress?: (line: string) => void } = {},
): Promise<ResizeResult> {
  const { assertCanShrinkTo, resizeCopy } = await import('../image/resize');
  await removeStaleTemps(path);
  const found = await findSifOverlay(path);
  refuseModification(path, found.sif, 'resize the overlay of');
  let before = found.overlay.size;
  if (before !== sizeBytes) {
    const { overlay, lock } = await lockedSifOverlay(path, 'exclusive');
    before = overlay.size;
    try {
      await withWorkDir(path, true, async (dir) => {
        const image = join(dir, 'overlay.img');
        opts.onProgress?.('copying the overlay partition out of the SIF');
        await extractObjectTo(path, overlay, image);
        await requireExt3(image);
        if (sizeBytes < before) await assertCanShrinkTo(image, sizeBytes, path);
        const sparse = (await allocatedBytesInRange(path, overlay.offset, overlay.size)) < overlay.size;
        // the work copy stays sparse; the SIF gets the partition back as allocated as it was
        await resizeCopy(path, image, before, sizeBytes, { sparse: true, onProgress: opts.onProgress });
        opts.onProgress?.('writing the SIF with the resized overlay');
        await rewriteSif(path, {
          kind: 'replace',
          id: overlay.id,
          source: image,
          mode: sparse ? 'sparse' : 'full',
        });
      });
    } finally {
      lock.release();
    }
  }
  const info = await sifInfo(path);
  return { ...info, previousSizeBytes: before, changed: before !== sizeBytes };
}

/** Refuse what Apptainer refuses before adding an overlay partition. */
async function readSifForAdd(path: string): Promise<SifFile> {
  const sif = await readSif(path);
  refuseModification(path, sif, 'add an overlay partition to');
  const existing = overlayPartitions(sif)[0];
  if (existing)
    throw new OverlayError(
      'E_EXISTS',
      `${path} already has a writable overlay partition (id ${existing.id}, ${existing.size} bytes)`,
      {
        hint: `resize it with overlayctl resize ${path} --size …, or delete it first: apptainer sif del ${existing.id} ${path}`,
      },
    );
  if (!primaryPartition(sif))
    throw new OverlayError(
      'E_INVALID_INPUT',
      `${path} has no root filesystem partition to put an overlay on`,
    );
  return sif;
}

async function addOverlay(path: string, sif: SifFile, image: string, onProgress?: (l: string) => void) {
  const arch = sif.header.arch !== '00' ? sif.header.arch : hostSifArch();
  onProgress?.('writing the SIF with the overlay partition');
  // the root filesystem's group, as `apptainer overlay create` does (Apptainer ignores other groups)
  const group = primaryPartition(sif)?.groupId || 1;
  const { sif: after } = await rewriteSif(path, {
    kind: 'add',
    source: image,
    groupId: group,
    partition: { fsType: FS_EXT3, partType: PART_OVERLAY, arch },
  });
  return after;
}

/** `create app.sif --size …` on an existing SIF: build the overlay with our profiles, then add it. */
export async function createSifOverlay(opts: CreateOptions): Promise<ImageInfo> {
  const { createImage } = await import('../image/create');
  await removeStaleTemps(opts.path);
  const { sif, lock } = await lockedSifForAdd(opts.path);
  try {
    await withWorkDir(opts.path, true, async (dir) => {
      const image = join(dir, 'overlay.img');
      await createImage({ ...opts, path: image, force: false });
      await addOverlay(opts.path, sif, image, opts.onProgress);
    });
  } finally {
    lock.release();
  }
  return sifInfo(opts.path);
}

/** `embed IMAGE SIF`: add an existing ext3 overlay image as the SIF's writable overlay partition. */
export async function embedOverlay(
  image: string,
  sifPath: string,
  opts: { onProgress?: (line: string) => void } = {},
): Promise<ImageInfo> {
  await requireExt3(image);
  await removeStaleTemps(sifPath);
  const { sif, lock: sifLock } = await lockedSifForAdd(sifPath);
  try {
    // the image must not change while it is copied, nor be in use by a writer
    const lock = await acquireLock(image, 'shared');
    try {
      await addOverlay(sifPath, sif, image, opts.onProgress);
    } finally {
      lock.release();
    }
  } finally {
    sifLock.release();
  }
  return sifInfo(sifPath);
}

/** `extract SIF IMAGE`: the embedded overlay as a standalone image (sparse), renamed into place. */
export async function extractOverlay(
  sifPath: string,
  image: string,
  opts: { force?: boolean; onProgress?: (line: string) => void } = {},
): Promise<ImageInfo> {
  await findSifOverlay(sifPath);
  if ((await exists(image)) && !opts.force)
    throw new OverlayError('E_EXISTS', `${image} already exists`, { hint: 'pass --force to replace it' });
  const { overlay, lock } = await lockedSifOverlay(sifPath, 'shared');
  try {
    opts.onProgress?.(`copying ${overlay.size} bytes (sparse)`);
    const mode = (await fsp.stat(sifPath)).mode & 0o666;
    await replaceAtomically(image, (tmp) => extractObjectTo(sifPath, overlay, tmp), { mode });
  } finally {
    lock.release();
  }
  const { imageInfo } = await import('../image/info');
  return imageInfo(image);
}

/** The SIF's objects, one line each, for `info` without --json. */
export function renderSifObjects(s: SifSummary): string {
  const lines = [`  SIF ${s.id} (${s.arch})${s.signed ? ', signed' : ''}${s.encrypted ? ', encrypted' : ''}`];
  for (const o of s.objects) {
    const what = o.fs ? `${o.fs} ${o.partType} partition` : o.type;
    const mark = o.id === s.overlayId ? '  <- writable overlay' : '';
    lines.push(`    id ${o.id}: ${what}, ${o.size} bytes at ${o.offset}, group ${o.groupId}${mark}`);
  }
  return lines.join('\n');
}
