import type { Region } from '../fs/sparse';
import { runTool } from '../tools/run';
import { parseDumpe2fs } from './superblock';

const ALIGN = 4096;

/**
 * The byte ranges of the blocks an ext2/3/4 filesystem has in use, from its block bitmaps
 * (`dumpe2fs` free-block ranges, inverted), widened to 4 KiB boundaries. Free blocks may hold the
 * bytes of deleted files: nothing reads them, so nothing needs to carry them.
 *
 * `undefined` when the bitmaps cannot be trusted: the journal still holds writes (a replay may
 * allocate blocks the bitmap calls free), the filesystem is not clean, or dumpe2fs fails (damage).
 * Callers then treat every byte as in use.
 */
export async function usedRegions(image: string): Promise<Region[] | undefined> {
  const r = await runTool('dumpe2fs', [image], { timeoutSeconds: 600 }).catch(() => undefined);
  if (!r) return undefined;
  const sb = parseDumpe2fs(r.stdout);
  if (sb.state !== 'clean' || sb.features.includes('needs_recovery') || !sb.blockSize || !sb.blockCount)
    return undefined;
  const free: Region[] = [];
  for (const m of r.stdout.matchAll(/^[ \t]+Free blocks: (.*)$/gm)) {
    for (const part of (m[1] as string).split(',')) {
      const t = part.trim();
      if (!t) continue;
      const [a, b] = t.split('-').map(Number) as [number, number | undefined];
      free.push([a, (b ?? a) + 1]);
    }
  }
  // every group must have been listed: a partial listing would drop blocks in use
  const listed = free.reduce((n, [a, b]) => n + b - a, 0);
  if (listed !== sb.freeBlocks) return undefined;
  free.sort((x, y) => x[0] - y[0]);
  const used: Region[] = [];
  let at = 0;
  for (const [a, b] of [...free, [sb.blockCount, sb.blockCount] as Region]) {
    if (a > at) {
      const start = Math.floor((at * sb.blockSize) / ALIGN) * ALIGN;
      const end = Math.ceil((a * sb.blockSize) / ALIGN) * ALIGN;
      const last = used[used.length - 1];
      if (last && start <= last[1]) last[1] = Math.max(last[1], end);
      else used.push([start, end]);
    }
    at = Math.max(at, b);
  }
  return used;
}
