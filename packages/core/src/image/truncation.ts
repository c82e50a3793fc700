import { OverlayError } from '../errors';
import { formatBytes } from '../size';
import type { FormatInfo } from './format';

/** An image file shorter than its filesystem says: an interrupted copy, download or restore. */
export interface Truncation {
  fileBytes: number;
  filesystemBytes: number;
  missingBytes: number;
}

/**
 * The one test for truncation, on what `probeImage` read: the file holds fewer bytes than the
 * superblock's size (ext: block count × block size; SquashFS: bytes used). A longer file is fine.
 */
export function findTruncation(info: Pick<FormatInfo, 'fileBytes' | 'filesystemBytes'>): Truncation | null {
  const fs = info.filesystemBytes;
  if (fs === null || info.fileBytes >= fs) return null;
  return { fileBytes: info.fileBytes, filesystemBytes: fs, missingBytes: fs - info.fileBytes };
}

export function truncationMessage(path: string, t: Truncation): string {
  return `${path} is truncated: the file is ${t.fileBytes} bytes (${formatBytes(t.fileBytes)}) but its filesystem says ${t.filesystemBytes} bytes (${formatBytes(t.filesystemBytes)}); ${t.missingBytes} bytes are missing`;
}

/** Refuse a truncated image (E_TRUNCATED, both sizes) before anything opens it. */
export function requireWholeImage(
  path: string,
  info: Pick<FormatInfo, 'fileBytes' | 'filesystemBytes'>,
): void {
  const t = findTruncation(info);
  if (t)
    throw new OverlayError('E_TRUNCATED', truncationMessage(path, t), {
      hint: 'the missing bytes cannot be recovered by a repair: restore the image from a cache or a backup',
      details: { ...t },
    });
}
