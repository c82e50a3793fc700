import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isOverlayError, OverlayError } from '../errors';
import { type CheckResult, checkImage } from '../image/check';
import type { LocalStore } from './local-store';
import { unpackImage } from './pack';

/** One store entry's verdict, reported like an image's (`path` is the entry's archive). */
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

/**
 * Verify every entry of a store the way a restore would use it: unpack it into a private temp
 * directory (archive structure, content digest against the trailer and the entry's record, a
 * read-only fsck), then check the restored image like any other (e2fsck -fy on a copy, Apptainer
 * compatibility). No image in use is ever touched: the restore target is a fresh temp file.
 */
export async function verifyStore(store: LocalStore, opts: VerifyStoreOptions = {}): Promise<EntryVerdict[]> {
  const entries = (await store.entries()).sort((a, b) => a.key.localeCompare(b.key));
  const out: EntryVerdict[] = [];
  for (const entry of entries) {
    const started = Date.now();
    const dir = await mkdtemp(join(opts.workDir ?? tmpdir(), 'overlay-verify-'));
    const target = join(dir, 'restored.img');
    let verdict: Omit<EntryVerdict, 'removed'>;
    const base = { key: entry.key, bytes: entry.bytes };
    const failed = (status: 'corrupt' | 'error', problems: string[], error?: OverlayError) => ({
      ...base,
      path: entry.archive,
      status,
      format: null,
      problems,
      e2fsckExit: null,
      method: null,
      superblock: null,
      truncated: null,
      apptainerCompatible: null,
      apptainerProblems: [],
      warnings: [],
      error: error ? { code: error.code, message: error.message } : undefined,
      seconds: Math.round((Date.now() - started) / 100) / 10,
    });
    try {
      const restored = await unpackImage(entry.archive, target);
      if (!restored.ok) verdict = failed('corrupt', [restored.reason]);
      else if (restored.manifest.sha256 !== entry.sha256)
        verdict = failed('corrupt', [
          'the archive holds another image than the entry records (digest mismatch)',
        ]);
      else {
        const r = await checkImage(target, { lockHeld: true, timeoutSeconds: opts.timeoutSeconds });
        const problems = r.problems.map((p) => p.split(target).join(entry.archive));
        verdict = {
          ...r,
          ...base,
          path: entry.archive,
          problems,
          seconds: Math.round((Date.now() - started) / 100) / 10,
        };
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
    if (opts.removeBad && verdict.status === 'corrupt') {
      await store.remove(entry);
      removed = true;
    }
    const result = { ...verdict, removed };
    opts.onResult?.(result);
    out.push(result);
  }
  return out;
}
