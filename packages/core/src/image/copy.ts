import { chmod, chown, stat } from 'node:fs/promises';
import { runTool } from '../tools/run';

/**
 * Copy an image for a crash-safe rewrite: a sparse image stays sparse (holes are not read back
 * as data), an allocated one stays allocated; mode (and owner, when we are root) follow the source.
 */
export async function copyImageFile(src: string, dst: string): Promise<void> {
  const st = await stat(src);
  const sparse = st.blocks * 512 < st.size;
  await runTool('cp', [sparse ? '--sparse=always' : '--sparse=never', '--', src, dst], {
    timeoutSeconds: 3600,
  });
  await chmod(dst, st.mode & 0o7777);
  if (process.getuid?.() === 0) await chown(dst, st.uid, st.gid);
}

export async function isSparseFile(path: string): Promise<boolean> {
  const st = await stat(path);
  return st.blocks * 512 < st.size;
}
