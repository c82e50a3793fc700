import { createHash } from 'node:crypto';
import { link, lstat, mkdir, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fromFsError, isOverlayError, OverlayError } from '../errors';
import { exists, tempPathFor } from '../fs/atomic';
import { validateKey } from './key';
import { ARCHIVE_SUFFIX, type CacheManifest, packImage, unpackImage } from './pack';
import type { CacheStore, RestoreResult, SaveResult } from './store';

interface EntryMeta {
  key: string;
  created: string;
  bytes: number;
  sha256: string;
}

export function defaultStoreDir(): string {
  return (
    process.env.OVERLAY_CACHE_STORE ||
    join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'overlay-action', 'store')
  );
}

/** Publish `tmp` at `final` only if nothing is there yet (link(2) fails with EEXIST): entries are immutable. */
async function publishOnce(tmp: string, final: string): Promise<boolean> {
  try {
    await link(tmp, final);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw fromFsError(e, final);
  } finally {
    await rm(tmp, { force: true });
  }
}

/**
 * A cache store in a directory (a laptop, a self-hosted runner, an HPC shared filesystem):
 * `<sha256(key)>.ovc.zst` + `<sha256(key)>.json`; the .json appearing publishes the entry.
 * Safe with concurrent writers and readers: temp files, link-based publish, no overwrite.
 */
export class LocalStore implements CacheStore {
  readonly kind = 'local';
  constructor(readonly dir: string = defaultStoreDir()) {}

  private paths(key: string) {
    const base = join(this.dir, createHash('sha256').update(key).digest('hex').slice(0, 40));
    return { archive: `${base}${ARCHIVE_SUFFIX}`, meta: `${base}.json` };
  }

  /** Refuse a directory others can plant files in (world-writable without the sticky bit). */
  async ensureDir(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o755 }).catch((e) => {
      throw fromFsError(e, this.dir);
    });
    const st = await lstat(this.dir);
    if (!st.isDirectory()) throw new OverlayError('E_UNSAFE_PATH', `${this.dir} is not a directory`);
    if (st.mode & 0o002 && !(st.mode & 0o1000)) {
      throw new OverlayError(
        'E_UNSAFE_PATH',
        `cache store ${this.dir} is writable by everyone (mode ${(st.mode & 0o7777).toString(8)})`,
        {
          hint: `chmod o-w ${this.dir} (or +t)`,
        },
      );
    }
  }

  async entries(): Promise<Array<EntryMeta & { lastUsed: number; meta: string; archive: string }>> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch {
      return [];
    }
    const out = [];
    for (const name of names.filter((n) => n.endsWith('.json') && !n.startsWith('.'))) {
      const meta = join(this.dir, name);
      try {
        const m = JSON.parse(await readFile(meta, 'utf8')) as EntryMeta;
        out.push({
          ...m,
          lastUsed: (await stat(meta)).mtimeMs,
          meta,
          archive: meta.replace(/\.json$/, ARCHIVE_SUFFIX),
        });
      } catch {}
    }
    return out;
  }

  async save(key: string, image: string): Promise<SaveResult> {
    validateKey(key);
    await this.ensureDir();
    const { archive, meta } = this.paths(key);
    if (await exists(meta)) return { saved: false, key, reason: 'exists' };
    const tmp = tempPathFor(archive);
    let manifest: CacheManifest;
    try {
      manifest = await packImage(image, tmp);
    } catch (e) {
      await rm(tmp, { force: true });
      throw isOverlayError(e)
        ? e
        : new OverlayError('E_CACHE', `cannot write to ${this.dir}: ${(e as Error).message}`);
    }
    const bytes = (await stat(tmp)).size;
    if (!(await publishOnce(tmp, archive))) return { saved: false, key, reason: 'exists' };
    const metaTmp = tempPathFor(meta);
    const entry: EntryMeta = { key, created: new Date().toISOString(), bytes, sha256: manifest.sha256 };
    try {
      await writeFile(metaTmp, JSON.stringify(entry), { flag: 'wx' });
    } catch (e) {
      await rm(metaTmp, { force: true });
      await rm(archive, { force: true });
      throw fromFsError(e, metaTmp);
    }
    if (!(await publishOnce(metaTmp, meta))) return { saved: false, key, reason: 'exists' };
    return { saved: true, key, bytes, sha256: manifest.sha256 };
  }

  async restore(keys: { primary: string; restoreKeys: string[] }, target: string): Promise<RestoreResult> {
    const all = (await this.entries()).sort((a, b) => b.created.localeCompare(a.created));
    const candidates: Array<{ entry: (typeof all)[number]; outcome: 'hit' | 'partial' }> = [];
    const exact = all.find((e) => e.key === keys.primary);
    if (exact) candidates.push({ entry: exact, outcome: 'hit' });
    for (const prefix of keys.restoreKeys) {
      for (const e of all)
        if (e.key.startsWith(prefix) && e !== exact) candidates.push({ entry: e, outcome: 'partial' });
    }
    const warnings: string[] = [];
    const rejected: Array<{ key: string; reason: string }> = [];
    // like the Actions cache, the best match is the answer: an unusable entry is a miss (no
    // silent fallback to an older entry), reported so the caller can rebuild and overwrite it
    const best = candidates[0];
    if (best) {
      const r = await unpackImage(best.entry.archive, target);
      if (r.ok) {
        const now = new Date();
        await utimes(best.entry.meta, now, now).catch(() => {}); // least-recently-used bookkeeping
        return { outcome: best.outcome, matchedKey: best.entry.key, sha256: r.manifest.sha256, warnings };
      }
      warnings.push(`cache entry ${best.entry.key} not usable: ${r.reason}`);
      rejected.push({ key: best.entry.key, reason: r.reason });
    }
    return { outcome: 'miss', warnings, rejected };
  }

  /** Delete one entry: unpublish first (the .json); readers holding the archive keep it. */
  async remove(e: { meta: string; archive: string }): Promise<void> {
    await rm(e.meta, { force: true });
    await rm(e.archive, { force: true });
  }

  /** Delete least recently used entries until the store holds at most `maxBytes`. */
  async prune(maxBytes: number): Promise<{ removed: string[]; bytes: number }> {
    const all = (await this.entries()).sort((a, b) => a.lastUsed - b.lastUsed);
    let total = all.reduce((s, e) => s + e.bytes, 0);
    const removed: string[] = [];
    for (const e of all) {
      if (total <= maxBytes) break;
      await this.remove(e);
      total -= e.bytes;
      removed.push(e.key);
    }
    return { removed, bytes: total };
  }
}
