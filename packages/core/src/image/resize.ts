import { stat, truncate } from 'node:fs/promises';
import { isOverlayError, OverlayError } from '../errors';
import { replaceAtomically } from '../fs/atomic';
import { withLock } from '../lock/ofd';
import { runTool } from '../tools/run';
import { copyImageFile, isSparseFile } from './copy';
import { requireExt3 } from './format';
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
  await requireExt3(path);
  const previousSizeBytes = await withLock(path, 'exclusive', async () => {
    const before = (await stat(path)).size;
    if (before === sizeBytes) return before;
    if (sizeBytes < before) {
      const min = await minimumSizeBytes(path);
      if (sizeBytes < min) {
        throw new OverlayError(
          'E_SHRINK_TOO_SMALL',
          `${path} needs at least ${Math.ceil(min / 2 ** 20)} MiB; cannot shrink to ${Math.floor(sizeBytes / 2 ** 20)} MiB`,
          { details: { minimumBytes: min, requestedBytes: sizeBytes } },
        );
      }
    }
    const sparse = await isSparseFile(path);
    await replaceAtomically(path, async (tmp) => {
      opts.onProgress?.('copying the image');
      await copyImageFile(path, tmp);
      opts.onProgress?.('e2fsck -fy (resize2fs needs a checked filesystem)');
      const fsck = await runTool('e2fsck', ['-fy', tmp], { okExitCodes: [1, 2, 4], timeoutSeconds: 1800 });
      if (fsck.exitCode === 4)
        throw new OverlayError('E_INTEGRITY', `${path} has errors e2fsck cannot fix; run check --repair`);
      const sizeArg = `${Math.floor(sizeBytes / 1024)}K`;
      try {
        if (sizeBytes > before) {
          if (sparse) await truncate(tmp, sizeBytes);
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
          throw new OverlayError('E_SHRINK_TOO_SMALL', `${path} cannot shrink to ${sizeArg}: ${e.message}`);
        }
        throw e;
      }
      const check = await runTool('e2fsck', ['-fn', tmp], {
        okExitCodes: [1, 2, 4, 8],
        timeoutSeconds: 1800,
      });
      if (check.exitCode !== 0)
        throw new OverlayError('E_INTEGRITY', `resized copy of ${path} did not check clean`);
    });
    return before;
  });
  const info = await imageInfo(path);
  return { ...info, previousSizeBytes, changed: previousSizeBytes !== sizeBytes };
}
