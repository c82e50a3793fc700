import { lstat, mkdtemp, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { replaceAtomically, requireParentDir } from '../fs/atomic';
import { requireSquashfs } from '../image/format';
import { runTool } from '../tools/run';
import { type Compression, sha256File } from './commit';
import { squashEntries } from './lower';

export interface SquashResult {
  layer: string;
  bytes: number;
  layers: number;
  whiteouts: number;
  sha256: string;
  durationMs: number;
}

/**
 * Merge a stack of layers (earliest first) into one, applying each layer's whiteouts to what the
 * earlier ones provided: deleted files are gone from the result, so long chains stop growing. A
 * whiteout stays in the result (as a 0:0 device) because the base image below may still have that
 * name. Ownership and xattrs are kept when run as root.
 */
export async function squashLayers(
  layers: string[],
  output: string,
  opts: { compression: Compression; onProgress?: (line: string) => void },
): Promise<SquashResult> {
  const started = Date.now();
  for (const layer of layers) await requireSquashfs(layer);
  await requireParentDir(output);
  const staging = await mkdtemp(join(dirname(output), '.squash-'));
  let whiteouts = 0;
  try {
    for (const layer of layers) {
      opts.onProgress?.(`applying ${layer}`);
      for (const e of await squashEntries(layer)) {
        const path = join(staging, e.path);
        const st = await lstat(path).catch(() => null);
        // a deletion removes what earlier layers had; a new entry replaces an earlier whiteout
        if (st && (e.whiteout || st.isCharacterDevice())) await rm(path, { recursive: true, force: true });
      }
      await runTool('unsquashfs', ['-f', '-no-progress', '-d', staging, layer], { timeoutSeconds: 3600 });
    }
    for (const e of await squashEntriesOfDir(staging)) if (e) whiteouts++;
    await replaceAtomically(output, async (tmp) => {
      await runTool('mksquashfs', [staging, tmp, '-noappend', '-no-progress', '-comp', opts.compression], {
        onLine: opts.onProgress,
        timeoutSeconds: 3600,
      });
    });
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
  const { size } = await lstat(output);
  return {
    layer: output,
    bytes: size,
    layers: layers.length,
    whiteouts,
    sha256: await sha256File(output),
    durationMs: Date.now() - started,
  };
}

async function squashEntriesOfDir(dir: string): Promise<boolean[]> {
  const { readdir } = await import('node:fs/promises');
  const out: boolean[] = [];
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true }))
    out.push(e.isCharacterDevice());
  return out;
}
