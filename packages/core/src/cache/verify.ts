import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { isOverlayError, OverlayError } from '../errors';
import { scratchDir } from '../fs/scratch';
import { type CheckResult, checkImage, checkResult } from '../image/check';
import { LocalStore } from './local-store';
import { unpackImage } from './pack';
import type { CacheStore } from './store';

/** One store entry's verdict, reported like an image's (`image` is the entry's archive). */
export interface EntryVerdict extends CheckResult {
  key: string;
  /** Size of the archive in the store. */
  bytes: number;
  /** The entry failed and was deleted from the store (removeBad). */
  removed: boolean;
}

export interface VerifyStoreOptions {
  /** Delete the entries that fail (corrupt), so the next restore misses instead of rejecting them. */
  removeBad?: boolean;
  timeoutSeconds?: number;
  /** Where the restore is rehearsed (default: the system temp directory). */
  workDir?: string;
  onResult?: (r: EntryVerdict) => void;
}

/** Only a store that can list its entries can be verified as a whole (a directory store). */
export function listableStore(store: CacheStore): LocalStore {
  if (store instanceof LocalStore) return store;
  throw new OverlayError(
    'E_INVALID_INPUT',
    `cache verify lists every entry; a ${store.kind} store cannot be listed`,
    {
      hint: 'verify a directory store (--store DIR)',
    },
  );
}

/**
 * Verify every entry of a store the way a restore would use it: unpack it into a private temp
 * directory (archive structure, content digest, a read-only fsck: the restore's own checks), then
 * check the restored image like any other (e2fsck -fy on a copy, Apptainer compatibility). No
 * image in use is ever touched: the restore target is a fresh temp file, and the entries' use
 * times are left alone.
 */
export async function verifyStore(store: LocalStore, opts: VerifyStoreOptions = {}): Promise<EntryVerdict[]> {
  const entries = (await store.entries()).sort((a, b) => a.key.localeCompare(b.key));
  const out: EntryVerdict[] = [];
  for (const entry of entries) {
    const started = Date.now();
    const dir = await scratchDir('overlay-verify', opts.workDir);
    const target = join(dir, 'restored.img');
    const base = { key: entry.key, bytes: entry.bytes, image: entry.archive };
    const failed = (status: 'corrupt' | 'error', problems: string[], error?: OverlayError) => ({
      ...checkResult(entry.archive, started, {
        status,
        problems,
        error: error ? { code: error.code, message: error.message } : undefined,
      }),
      ...base,
    });
    let verdict: Omit<EntryVerdict, 'removed'>;
    try {
      const restored = await unpackImage(entry.archive, target);
      if (!restored.ok) verdict = failed('corrupt', [restored.reason]);
      else {
        const r = await checkImage(target, { lockHeld: true, timeoutSeconds: opts.timeoutSeconds });
        const problems = r.problems.map((p) => p.split(target).join(entry.archive));
        verdict = { ...r, ...base, problems, durationMs: Date.now() - started };
      }
    } catch (e) {
      // an archive that vanished or cannot be read is a bad entry; a host problem is not
      const err = isOverlayError(e) ? e : new OverlayError('E_CACHE', (e as Error).message);
      verdict =
        err.code === 'E_NOT_FOUND' || err.code === 'E_CACHE'
          ? failed('corrupt', [err.message], err)
          : failed('error', [], err);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    let removed = false;
    if (opts.removeBad && verdict.status === 'corrupt') removed = await store.delete(entry.key);
    const result = { ...verdict, removed };
    opts.onResult?.(result);
    out.push(result);
  }
  return out;
}
