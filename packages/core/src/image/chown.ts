import { replaceAtomically } from '../fs/atomic';
import { withLock } from '../lock/ofd';
import { copyImageFile } from './copy';
import type { Owner } from './create';
import { runDebugfs } from './debugfs';
import { requireExt3 } from './format';
import { type ImageInfo, imageInfo } from './info';

/** `ls -p` lines are `/inode/mode/uid/gid/name/size/`; a name may itself contain slashes? no: not in ext. */
const LS_LINE = /^\/(\d+)\/(\d+)\/\d+\/\d+\/(.*)\/[^/]*\/$/;

/** Every inode under the given directory inodes (breadth-first, one debugfs run per depth). */
export async function listInodesUnder(image: string, roots: number[]): Promise<number[]> {
  const seen = new Set<number>(roots);
  let level = roots;
  while (level.length) {
    const out = await runDebugfs(
      image,
      level.map((ino) => `ls -p <${ino}>`),
    );
    const next: number[] = [];
    for (const line of out.split('\n')) {
      const m = LS_LINE.exec(line);
      if (!m) continue;
      const ino = Number(m[1]);
      const name = m[3];
      if (name === '.' || name === '..' || ino === 0 || seen.has(ino)) continue;
      seen.add(ino);
      const mode = Number.parseInt(m[2]!, 8);
      if ((mode & 0o170000) === 0o040000) next.push(ino);
    }
    level = next;
  }
  return [...seen];
}

async function inodeOf(image: string, path: string): Promise<number | null> {
  const out = await runDebugfs(image, [`stat ${path}`], { allowErrors: /not found/i }).catch(() => '');
  const m = /Inode:\s*(\d+)/.exec(out);
  return m ? Number(m[1]) : null;
}

/**
 * Give every inode of upper/ (and upper/, work/ themselves) a new owner, on the image file
 * without a mount or Apptainer: debugfs rewrites the inodes of a copy, which then replaces the image.
 */
export async function chownImage(
  path: string,
  owner: Owner,
  onProgress: (line: string) => void = () => {},
): Promise<ImageInfo & { inodesChanged: number }> {
  await requireExt3(path);
  let count = 0;
  await withLock(path, 'exclusive', () =>
    replaceAtomically(path, async (tmp) => {
      onProgress(`copying ${path}`);
      await copyImageFile(path, tmp);
      const roots = (await Promise.all(['/upper', '/work'].map((p) => inodeOf(tmp, p)))).filter(
        (x): x is number => x !== null,
      );
      const inodes = await listInodesUnder(tmp, roots);
      count = inodes.length;
      const cmds = inodes.flatMap((ino) => [
        `sif <${ino}> uid ${owner.uid}`,
        `sif <${ino}> gid ${owner.gid}`,
      ]);
      for (let i = 0; i < cmds.length; i += 20000) {
        onProgress(`new owner: inodes ${i / 2 + 1}-${Math.min(cmds.length, i + 20000) / 2} of ${count}`);
        await runDebugfs(tmp, cmds.slice(i, i + 20000), { write: true });
      }
    }),
  );
  return { ...(await imageInfo(path)), inodesChanged: count };
}
