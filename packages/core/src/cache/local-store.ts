import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { access, link, lstat, mkdir, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { fromFsError, OverlayError } from '../errors';
import { exists, tempPathFor } from '../fs/atomic';
import { validateKey } from './key';
import { ARCHIVE_SUFFIX } from './pack';
import type { CacheStore, PutResult } from './store';

interface EntryMeta {
  key: string;
  created: string;
  bytes: number;
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

/** One coded line for a store directory this user cannot create or write (no tool backtrace). */
function notWritable(dir: string, e: unknown): OverlayError {
  const code = (e as NodeJS.ErrnoException).code;
  const why =
    code === 'EACCES' || code === 'EPERM'
      ? 'permission denied'
      : code === 'EROFS'
        ? 'read-only filesystem'
        : (e as Error).message;
  return new OverlayError('E_CACHE', `cache store ${dir} is not writable by this user: ${why}`, {
    hint: `use a store directory you can write (--store DIR or OVERLAY_CACHE_STORE), or grant write permission on ${dir}`,
    cause: e,
  });
}

/**
 * A cache store in a directory (a laptop, a self-hosted runner, an HPC shared filesystem):
 * `<sha256(key)>.ovc.zst` + `<sha256(key)>.json`; the .json appearing publishes the entry.
 * Safe with concurrent writers and readers: temp files, link-based publish, no overwrite.
 */
export class LocalStore implements CacheStore {
  readonly kind = 'local';
  readonly dir: string;
  readonly spec: string;
  constructor(dir: string = defaultStoreDir()) {
    this.dir = dir;
    this.spec = resolve(dir);
  }

  private paths(key: string) {
    const base = join(this.dir, createHash('sha256').update(key).digest('hex').slice(0, 40));
    return { archive: `${base}${ARCHIVE_SUFFIX}`, meta: `${base}.json` };
  }

  /** Create the directory, refuse one others can plant files in, and fail early when it is not writable. */
  async ensureWritable(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o755 }).catch((e) => {
      const err = fromFsError(e, this.dir);
      throw err instanceof OverlayError ? err : notWritable(this.dir, e);
    });
    const st = await lstat(this.dir);
    if (!st.isDirectory()) throw new OverlayError('E_UNSAFE_PATH', `${this.dir} is not a directory`);
    if (st.mode & 0o002 && !(st.mode & 0o1000)) {
      throw new OverlayError(
        'E_UNSAFE_PATH',
        `cache store ${this.dir} is writable by everyone (mode ${(st.mode & 0o7777).toString(8)})`,
        { hint: `chmod o-w ${this.dir} (or +t)` },
      );
    }
    await access(this.dir, constants.W_OK | constants.X_OK).catch((e) => {
      throw notWritable(this.dir, e);
    });
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

  async has(key: string): Promise<boolean> {
    return exists(this.paths(key).meta);
  }

  async delete(key: string): Promise<boolean> {
    const { archive, meta } = this.paths(key);
    const had = await exists(meta);
    try {
      await rm(meta, { force: true }); // unpublish first; readers holding the archive keep it
      await rm(archive, { force: true });
    } catch (e) {
      throw notWritable(this.dir, e);
    }
    return had;
  }

  async put(
    key: string,
    write: (archive: string) => Promise<void>,
    opts: { replace?: boolean } = {},
  ): Promise<PutResult> {
    validateKey(key);
    await this.ensureWritable();
    const { archive, meta } = this.paths(key);
    if (!opts.replace && (await exists(meta))) return { status: 'exists' };
    const tmp = tempPathFor(archive);
    try {
      await write(tmp);
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
    const bytes = (await stat(tmp)).size;
    if (opts.replace) await this.delete(key);
    if (!(await publishOnce(tmp, archive))) return { status: 'exists' };
    const metaTmp = tempPathFor(meta);
    const entry: EntryMeta = { key, created: new Date().toISOString(), bytes };
    try {
      await writeFile(metaTmp, JSON.stringify(entry), { flag: 'wx' });
    } catch (e) {
      await rm(metaTmp, { force: true });
      await rm(archive, { force: true });
      throw fromFsError(e, metaTmp);
    }
    if (!(await publishOnce(metaTmp, meta))) return { status: 'exists' };
    return { status: 'saved', bytes };
  }

  async fetch<T>(
    keys: { primary: string; restoreKeys: string[] },
    use: (archive: string, key: string) => Promise<T>,
  ): Promise<{ key: string; value: T } | null> {
    const all = (await this.entries()).sort((a, b) => b.created.localeCompare(a.created));
    // like the Actions cache: the exact key, else the newest entry of the first prefix that matches
    let best = all.find((e) => e.key === keys.primary);
    for (const prefix of keys.restoreKeys) {
      if (best) break;
      best = all.find((e) => e.key.startsWith(prefix));
    }
    if (!best) return null;
    const value = await use(best.archive, best.key);
    const now = new Date();
    await utimes(best.meta, now, now).catch(() => {}); // least-recently-used bookkeeping
    return { key: best.key, value };
  }

  /** Delete least recently used entries until the store holds at most `maxBytes`. */
  async prune(maxBytes: number): Promise<{ removed: string[]; bytes: number }> {
    const all = (await this.entries()).sort((a, b) => a.lastUsed - b.lastUsed);
    let total = all.reduce((s, e) => s + e.bytes, 0);
    const removed: string[] = [];
    for (const e of all) {
      if (total <= maxBytes) break;
      await rm(e.meta, { force: true }); // unpublish first; readers holding the archive keep it
      await rm(e.archive, { force: true });
      total -= e.bytes;
      removed.push(e.key);
    }
    return { removed, bytes: total };
  }
}
