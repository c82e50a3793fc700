import { readFile, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { contentDigest } from '../fs/sparse';
import type { CacheStore, RestoreResult, SaveResult } from './store';

/** `.NAME.overlay-cache.json` next to the image: what was restored, for "save only if changed". */
export function statePath(image: string): string {
  return join(dirname(image), `.${basename(image)}.overlay-cache.json`);
}

export async function readRestoreState(image: string): Promise<{ key: string; sha256: string } | null> {
  try {
    return JSON.parse(await readFile(statePath(image), 'utf8'));
  } catch {
    return null;
  }
}

export async function restoreImage(
  store: CacheStore,
  keys: { primary: string; restoreKeys: string[] },
  image: string,
): Promise<RestoreResult> {
  const r = await store.restore(keys, image);
  if (r.outcome !== 'miss' && r.matchedKey && r.sha256) {
    await writeFile(statePath(image), JSON.stringify({ key: r.matchedKey, sha256: r.sha256 }));
  }
  return r;
}

/** Save unless the image is byte-for-byte what was restored (then it is a no-op). */
export async function saveImage(
  store: CacheStore,
  key: string,
  image: string,
): Promise<SaveResult & { sha256: string }> {
  const [state, sha256] = await Promise.all([readRestoreState(image), contentDigest(image)]);
  if (state && state.sha256 === sha256) return { saved: false, key, reason: 'unchanged', sha256 };
  // only a restore records state: saving the same image to another store or key still saves
  return { ...(await store.save(key, image)), sha256 };
}

export async function forgetRestoreState(image: string): Promise<void> {
  await rm(statePath(image), { force: true });
}
