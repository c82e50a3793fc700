import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { imageContentDigest } from './pack';
import type { CacheStore, RestoreResult, SaveResult } from './store';

/** `.NAME.overlay-cache.json` next to the image: what was restored, for "save only if changed". */
export function statePath(image: string): string {
  return join(dirname(image), `.${basename(image)}.overlay-cache.json`);
}

interface RestoreState {
  key: string;
  sha256: string;
  /** The restored file's identity; any write or metadata change moves ctime. */
  file?: string;
}

async function fileIdentity(image: string): Promise<string> {
  const s = await stat(image, { bigint: true });
  return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
}

export async function readRestoreState(image: string): Promise<RestoreState | null> {
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
    const state: RestoreState = { key: r.matchedKey, sha256: r.sha256, file: await fileIdentity(image) };
    await writeFile(statePath(image), JSON.stringify(state));
  }
  return r;
}

/**
 * Save unless the image is what was restored (then it is a no-op). The file's identity (inode,
 * size, mtime, ctime) answers without reading when nothing touched it; otherwise the content
 * digest decides. Without a restore record the save streams the image once (pack hashes as it goes).
 */
export async function saveImage(store: CacheStore, key: string, image: string): Promise<SaveResult> {
  const state = await readRestoreState(image);
  if (state) {
    if (state.file && state.file === (await fileIdentity(image)))
      return { saved: false, key, reason: 'unchanged', sha256: state.sha256 };
    const sha256 = await imageContentDigest(image);
    if (state.sha256 === sha256) return { saved: false, key, reason: 'unchanged', sha256 };
  }
  // only a restore records state: saving the same image to another store or key still saves
  return store.save(key, image);
}

export async function forgetRestoreState(image: string): Promise<void> {
  await rm(statePath(image), { force: true });
}
