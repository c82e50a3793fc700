import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { isOverlayError, OverlayError } from '../errors';
import { exists, fsyncPath, removeStaleTemps, tempPathFor } from '../fs/atomic';
import { contentDigest } from '../fs/sparse';
import { readHead, requireExt3 } from '../image/format';

const formatUuid = (b: Buffer) =>
  b.toString('hex').replace(/^(.{8})(.{4})(.{4})(.{4})(.{12})$/, '$1-$2-$3-$4-$5');

import { acquireLock, type Lock } from '../lock/ofd';
import { runTool } from '../tools/run';

/** Bump when the archive layout changes: part of every cache key. */
export const CACHE_FORMAT_VERSION = 1;
const MANIFEST = 'manifest.json';
const IMAGE_MEMBER = 'image.img';

export interface CacheManifest {
  formatVersion: number;
  imageName: string;
  sizeBytes: number;
  fsUuid: string;
  /** contentDigest(): sha256 over the non-zero 4 KiB blocks and their offsets, plus the size. */
  sha256: string;
  tools: Record<string, string>;
  created: string;
}

// zstd through tar's --zstd (no shell string); these env vars make it multi-threaded and fast.
const ZSTD_ENV = { ...process.env, ZSTD_NBTHREADS: '0', ZSTD_CLEVEL: '3' };

async function toolVersions(): Promise<Record<string, string>> {
  const v = async (tool: string, args: string[]) =>
    (await runTool(tool, args).catch(() => ({ stdout: '?' }))).stdout.split('\n')[0]!.trim();
  return { tar: await v('tar', ['--version']), zstd: await v('zstd', ['--version']) };
}

/**
 * Pack an ext3 overlay into one .tar.zst whose cost follows the bytes in use: GNU tar --sparse
 * walks only the data extents, zstd compresses on every core. The manifest travels first.
 */
export async function packImage(imagePath: string, archivePath: string): Promise<CacheManifest> {
  // tar's -C options are relative to each other: use absolute paths throughout
  const image = resolve(imagePath);
  const archive = resolve(archivePath);
  await requireExt3(image);
  const lock = await acquireLock(image, 'shared'); // no writer while we read
  const stage = tempPathFor(archive);
  try {
    // the UUID straight from the superblock bytes: a damaged journal must not stop a save
    const [head, sha256, tools] = await Promise.all([readHead(image), contentDigest(image), toolVersions()]);
    const manifest: CacheManifest = {
      formatVersion: CACHE_FORMAT_VERSION,
      imageName: basename(image),
      sizeBytes: (await stat(image)).size,
      fsUuid: head.length >= 1144 ? formatUuid(head.subarray(1024 + 104, 1024 + 120)) : '',
      sha256,
      tools,
      created: new Date().toISOString(),
    };
    await mkdir(stage, { mode: 0o700 });
    await writeFile(join(stage, MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
    // the image keeps its own name on disk; --transform stores it as IMAGE_MEMBER
    const escaped = basename(image).replace(/[\\^$.*[\]/&,]/g, '\\$&');
    await runTool(
      'tar',
      [
        '--sparse',
        '--zstd',
        '--format=posix',
        '-cf',
        archive,
        '-C',
        stage,
        MANIFEST,
        '-C',
        dirname(image),
        `--transform=s,^${escaped}$,${IMAGE_MEMBER},`,
        '--',
        basename(image),
      ],
      { env: ZSTD_ENV, timeoutSeconds: 3600 },
    );
    return manifest;
  } finally {
    lock.release();
    await rm(stage, { recursive: true, force: true });
  }
}

export type UnpackOutcome = { ok: true; manifest: CacheManifest } | { ok: false; reason: string };

/**
 * Unpack and verify, then rename into place: members must be exactly the manifest and the image
 * (nothing else, no paths), the content digest must match, and a read-only fsck must pass. Any
 * failure is `{ok:false}` (a cache miss for the caller), never a broken or overwritten image.
 */
export async function unpackImage(archivePath: string, targetPath: string): Promise<UnpackOutcome> {
  const archive = resolve(archivePath);
  const target = resolve(targetPath);
  await removeStaleTemps(target);
  const listing = await runTool('tar', ['--zstd', '-tf', archive], {
    env: ZSTD_ENV,
    timeoutSeconds: 600,
  }).catch((e) => e as OverlayError);
  if (listing instanceof OverlayError) return { ok: false, reason: `unreadable archive: ${listing.message}` };
  const members = listing.stdout.split('\n').filter(Boolean);
  if (members.length !== 2 || members[0] !== MANIFEST || members[1] !== IMAGE_MEMBER) {
    return { ok: false, reason: `foreign archive (members: ${members.slice(0, 4).join(', ')})` };
  }
  const stage = tempPathFor(target);
  await mkdir(stage, { mode: 0o700 }).catch((e) => {
    throw isOverlayError(e)
      ? e
      : new OverlayError('E_CACHE', `cannot create ${stage}: ${(e as Error).message}`);
  });
  let lock: Lock | undefined;
  try {
    try {
      await runTool(
        'tar',
        ['--sparse', '--zstd', '--no-same-owner', '-xf', archive, '-C', stage, '--', ...members],
        {
          env: ZSTD_ENV,
          timeoutSeconds: 3600,
        },
      );
    } catch (e) {
      if (isOverlayError(e, 'E_NO_SPACE')) throw e;
      return { ok: false, reason: `corrupt archive: ${(e as Error).message}` };
    }
    let manifest: CacheManifest;
    try {
      manifest = JSON.parse(await readFile(join(stage, MANIFEST), 'utf8'));
    } catch {
      return { ok: false, reason: 'unreadable manifest' };
    }
    if (manifest.formatVersion !== CACHE_FORMAT_VERSION) {
      return {
        ok: false,
        reason: `cache format ${manifest.formatVersion}, expected ${CACHE_FORMAT_VERSION}`,
      };
    }
    const restored = join(stage, IMAGE_MEMBER);
    if (
      (await stat(restored)).size !== manifest.sizeBytes ||
      (await contentDigest(restored)) !== manifest.sha256
    ) {
      return { ok: false, reason: 'content digest mismatch' };
    }
    const fsck = await runTool('e2fsck', ['-fn', restored], {
      okExitCodes: Array.from({ length: 255 }, (_, i) => i + 1), // any verdict is a verdict (12 = aborted)
      timeoutSeconds: 1800,
    });
    if (fsck.exitCode !== 0)
      return { ok: false, reason: `restored image fails e2fsck (exit ${fsck.exitCode})` };
    if (await exists(target)) lock = await acquireLock(target, 'exclusive'); // not while Apptainer uses it
    await fsyncPath(restored);
    await rename(restored, target);
    await fsyncPath(dirname(target)).catch(() => {});
    return { ok: true, manifest };
  } finally {
    lock?.release();
    await rm(stage, { recursive: true, force: true });
  }
}
