import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findTool, runTool } from '../tools/run';

/**
 * Mount an ext3 image with fuse2fs (userspace: works unprivileged, and as root the kernel never
 * parses the image's metadata). `fakeroot` lets us read every file whatever its owner.
 */
export async function withFuse2fs<T>(
  image: string,
  mode: 'ro' | 'rw',
  fn: (mnt: string) => Promise<T>,
): Promise<T> {
  const mnt = await mkdtemp(join(tmpdir(), 'overlay-fuse-'));
  const options = mode === 'ro' ? 'ro,fakeroot' : 'rw,fakeroot';
  await runTool('fuse2fs', ['-o', options, image, mnt], { timeoutSeconds: 120 });
  try {
    return await fn(mnt);
  } finally {
    const unmount = findTool('fusermount3')
      ? 'fusermount3'
      : findTool('fusermount')
        ? 'fusermount'
        : 'umount';
    await runTool(unmount, unmount === 'umount' ? [mnt] : ['-u', mnt], { timeoutSeconds: 120 }).catch(
      async () => {
        await runTool(unmount, unmount === 'umount' ? ['-l', mnt] : ['-uz', mnt]).catch(() => {});
      },
    );
    await rm(mnt, { recursive: true, force: true }).catch(() => {});
  }
}
