import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { z } from 'zod';
import { isOverlayError, OverlayError } from '../errors';
import { checkImage } from '../image/check';
import { readSuperblock } from '../image/superblock';
import { imageContentDigest, packImage, unpackImage } from './pack';
import type { CacheStore, RestoreResult, SaveResult } from './store';

/**
 * "Changed since restore?" has one answer, kept in one place: `.NAME.overlay-cache.json` next to
 * the image records which store and key it came from, its content digest and the file's identity.
 * The CLI, setup and the action's post step all read it through saveImage.
 */
export function statePath(image: string): string {
  return join(dirname(image), `.${basename(image)}.overlay-cache.json`);
}

const restoreRecord = z.object({
  /** CacheStore.spec of the store the image came from. */
  store: z.string(),
  key: z.string(),
  sha256: z.string(),
  /** The file's identity; any write or metadata change moves ctime. */
  file: z.string(),
});
export type RestoreRecord = z.infer<typeof restoreRecord>;

async function fileIdentity(image: string): Promise<string> {
  const s = await stat(image, { bigint: true });
  return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
}

export async function readRestoreState(image: string): Promise<RestoreRecord | null> {
  try {
    return restoreRecord.parse(JSON.parse(await readFile(statePath(image), 'utf8')));
  } catch {
    return null;
  }
}

async function writeRestoreState(image: string, store: CacheStore, key: string, sha256: string) {
  const record: RestoreRecord = { store: store.spec, key, sha256, file: await fileIdentity(image) };
  await writeFile(statePath(image), JSON.stringify(record)).catch(() => {}); // only an optimisation
}

export async function forgetRestoreState(image: string): Promise<void> {
  await rm(statePath(image), { force: true });
}

/** Is the image still exactly what `record` says was restored (identity first, else content)? */
async function unchangedSince(record: RestoreRecord, image: string): Promise<boolean> {
  if (record.file === (await fileIdentity(image))) return true;
  return record.sha256 === (await imageContentDigest(image));
}

/**
 * Restore the best entry for `keys` into `image`: unpack verifies the archive (format, digest,
 * fsck) and renames into place only when it passes. `accept` may still refuse a verified image
 * (its settings cannot be reconciled with what was asked for): then the image is removed and the
 * result is a miss. Nothing the store fetched stays behind.
 */
export async function restoreImage(
  store: CacheStore,
  keys: { primary: string; restoreKeys: string[] },
  image: string,
  opts: { accept?: (image: string, key: string) => Promise<string | null> } = {},
): Promise<RestoreResult> {
  const found = await store.fetch(keys, (archive) => unpackImage(archive, image));
  if (!found) return { outcome: 'miss', warnings: [] };
  const { key, value: r } = found;
  if (!r.ok)
    return {
      outcome: 'miss',
      warnings: [`cache entry ${key} not usable: ${r.reason}`],
      rejected: [{ key, reason: r.reason }],
    };
  const refusal = opts.accept ? await opts.accept(image, key) : null;
  if (refusal) {
    await rm(image, { force: true });
    return { outcome: 'miss', warnings: [`cache entry ${key} not used: ${refusal}`] };
  }
  await writeRestoreState(image, store, key, r.manifest.sha256);
  return {
    outcome: key === keys.primary ? 'hit' : 'partial',
    matchedKey: key,
    sha256: r.manifest.sha256,
    warnings: [],
  };
}

/**
 * A saved entry must restore: the file holds the whole filesystem (always checked: it costs one
 * superblock read) and e2fsck finds it clean (`fsck: false` skips that, the user's choice).
 */
export async function verifyForSave(image: string, opts: { fsck?: boolean } = {}): Promise<void> {
  const sb = await readSuperblock(image).catch(() => null);
  const size = (await stat(image)).size;
  if (sb && size < sb.blockCount * sb.blockSize)
    throw new OverlayError(
      'E_INTEGRITY',
      `${image} is truncated (${size} bytes, its filesystem needs ${sb.blockCount * sb.blockSize}): not saving it`,
      { hint: 'restore or rebuild the image; a truncated copy cannot be cached' },
    );
  if (opts.fsck === false) return;
  const report = await checkImage(image, { repair: false });
  if (report.status === 'locked')
    throw new OverlayError('E_LOCKED', `${image} is in use by another process: not saving it`, {
      hint: 'save after the container using it has exited',
    });
  if (report.status !== 'clean')
    throw new OverlayError(
      'E_INTEGRITY',
      `${image} is ${report.status === 'error' ? 'not checkable' : 'corrupt'}${report.problems.length ? ` (${report.problems.slice(0, 3).join('; ')})` : ''}: not saving it`,
      { hint: `overlayctl check ${image} --repair, then save again`, details: { problems: report.problems } },
    );
}

/** Does the entry under `key` restore (format, digest, fsck)? Unpacked to a scratch file next to `near`. */
async function entryVerifies(store: CacheStore, key: string, near: string): Promise<boolean> {
  const scratch = join(dirname(near), `.${basename(near)}.verify-${process.pid}`);
  try {
    const found = await store.fetch({ primary: key, restoreKeys: [] }, (archive) =>
      unpackImage(archive, scratch),
    );
    return found?.key === key && found.value.ok;
  } finally {
    await rm(scratch, { force: true });
  }
}

/**
 * Save `image` under `key`:
 * - `unchanged` (no-op) only when the image is what was restored from this same store under this
 *   same key, and that entry still exists;
 * - the image is verified first (not truncated, e2fsck clean; `check: false` skips e2fsck);
 * - an existing entry is kept (`exists`), unless `replace` is `always` (the caller proved it bad)
 *   or `corrupt` (it is fetched and verified, and replaced only when it fails).
 */
export async function saveImage(
  store: CacheStore,
  key: string,
  image: string,
  opts: { check?: boolean; replace?: 'never' | 'corrupt' | 'always' } = {},
): Promise<SaveResult> {
  const record = await readRestoreState(image);
  if (record && record.store === store.spec && record.key === key && (await store.has(key))) {
    if (await unchangedSince(record, image))
      return { saved: false, key, reason: 'unchanged', sha256: record.sha256 };
  }
  await verifyForSave(image, { fsck: opts.check !== false });
  await store.ensureWritable();
  let replace = opts.replace === 'always';
  if (opts.replace === 'corrupt' && (await store.has(key))) {
    replace = !(await entryVerifies(store, key, image));
    if (!replace) return { saved: false, key, reason: 'exists' };
  }
  let sha256 = '';
  const put = await store.put(
    key,
    async (archive) => {
      try {
        sha256 = (await packImage(image, archive)).sha256;
      } catch (e) {
        if (isOverlayError(e)) throw e;
        throw new OverlayError(
          'E_CACHE',
          `cannot write the cache archive ${archive}: ${(e as Error).message}`,
        );
      }
    },
    { replace },
  );
  if (put.status === 'exists') return { saved: false, key, reason: 'exists' };
  if (put.status === 'refused') return { saved: false, key, reason: 'refused', message: put.message };
  await writeRestoreState(image, store, key, sha256);
  return { saved: true, key, bytes: put.bytes, sha256, ...(replace ? { replaced: true } : {}) };
}
