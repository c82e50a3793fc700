import { stat, truncate } from 'node:fs/promises';
import { isOverlayError, OverlayError } from '../errors';
import { replaceAtomically } from '../fs/atomic';
import { withLock } from '../lock/ofd';
import { runTool } from '../tools/run';
import { copyImageFile, isSparseFile } from './copy';
import { isSifFile, requireExt3 } from './format';
import { type ImageInfo, imageInfo } from './info';
import { readSuperblock } from './superblock';

export interface ResizeResult extends ImageInfo {
  previousSizeBytes: number;
  changed: boolean;
}

/** Bytes the filesystem needs at least (resize2fs -P), read without writing. */
export async function minimumSizeBytes(path: string): Promise<number> {
  const sb = await readSuperblock(path);
  const { stdout } = await runTool('resize2fs', ['-P', path], { timeoutSeconds: 600 });
  const blocks = Number(/minimum size of the filesystem:\s*(\d+)/i.exec(stdout)?.[1]);
  if (!Number.isFinite(blocks))
    throw new OverlayError('E_TOOL_FAILED', `resize2fs -P gave no estimate for ${path}`);
  return blocks * sb.blockSize;
}

/** E_SHRINK_TOO_SMALL when the filesystem in `image` needs more than `sizeBytes` (`label` names it). */
export async function assertCanShrinkTo(image: string, sizeBytes: number, label = image): Promise<void> {
  const min = await minimumSizeBytes(image);
  if (sizeBytes < min) {
    throw new OverlayError(
      'E_SHRINK_TOO_SMALL',
      `${label} needs at least ${Math.ceil(min / 2 ** 20)} MiB; cannot shrink to ${Math.floor(sizeBytes / 2 ** 20)} MiB`,
      { details: { minimumBytes: min, requestedBytes: sizeBytes } },
    );
  }
}

/**
 * The resize steps on a private copy (`tmp`, `before` bytes): e2fsck -fy, resize2fs, and a clean
 * e2fsck -fn of the result. Used on the copy next to an image and on a SIF's extracted overlay.
 */
export async function resizeCopy(
  label: string,
  tmp: string,
  before: number,
  sizeBytes: number,
  opts: { sparse: boolean; onProgress?: (line: string) => void },
): Promise<void> {
  opts.onProgress?.('e2fsck -fy (resize2fs needs a checked filesystem)');
  const fsck = await runTool('e2fsck', ['-fy', tmp], { okExitCodes: [1, 2, 4], timeoutSeconds: 1800 });
  if (fsck.exitCode === 4)
    throw new OverlayError('E_INTEGRITY', `${label} has errors e2fsck cannot fix; run check --repair`);
  const sizeArg = `${Math.floor(sizeBytes / 1024)}K`;
  try {
    if (sizeBytes > before) {
      if (opts.sparse) await truncate(tmp, sizeBytes);
      else await runTool('fallocate', ['-l', String(sizeBytes), tmp]);
      opts.onProgress?.(`resize2fs ${sizeArg}`);
      await runTool('resize2fs', [tmp, sizeArg], { timeoutSeconds: 1800 });
    } else {
      opts.onProgress?.(`resize2fs ${sizeArg}`);
      await runTool('resize2fs', [tmp, sizeArg], { timeoutSeconds: 1800 });
      await truncate(tmp, sizeBytes);
    }
  } catch (e) {
    if (
      isOverlayError(e, 'E_TOOL_FAILED') &&
      /smaller than minimum|No space left on device/i.test(e.message)
    ) {
      throw new OverlayError('E_SHRINK_TOO_SMALL', `${label} cannot shrink to ${sizeArg}: ${e.message}`);
    }
    throw e;
  }
  const check = await runTool('e2fsck', ['-fn', tmp], {
    okExitCodes: [1, 2, 4, 8],
    timeoutSeconds: 1800,
  });
  if (check.exitCode !== 0)
    throw new OverlayError('E_INTEGRITY', `resized copy of ${label} did not check clean`);
}

/**
 * Grow or shrink an ext3 overlay. Crash-safe: the work happens on a copy next to the image
 * (sparse stays sparse, allocated stays allocated) that replaces it only once it checks clean,
 * so a SIGKILL at any moment leaves the old image or the new one.
 */
export async function resizeImage(
  path: string,
  sizeBytes: number,
  opts: { onProgress?: (line: string) => void } = {},
): Promise<ResizeResult> {
  if (await isSifFile(path)) return (await import('../sif/overlay')).resizeSifOverlay(path, sizeBytes, opts);
  await requireExt3(path);
  const previousSizeBytes = await withLock(path, 'exclusive', async () => {
    const before = (await stat(path)).size;
    if (before === sizeBytes) return before;
    if (sizeBytes < before) await assertCanShrinkTo(path, sizeBytes);
    const sparse = await isSparseFile(path);
    await replaceAtomically(path, async (tmp) => {
      opts.onProgress?.('copying the image');
      await copyImageFile(path, tmp);
      await resizeCopy(path, tmp, before, sizeBytes, { sparse, onProgress: opts.onProgress });
    });
    return before;
  });
  const info = await imageInfo(path);
  return { ...info, previousSizeBytes, changed: previousSizeBytes !== sizeBytes };
}
