/** What a restore found: the exact key, a restore-key prefix match, or nothing usable. */
export type RestoreOutcome = 'hit' | 'partial' | 'miss';

export interface RestoreResult {
  outcome: RestoreOutcome;
  matchedKey?: string;
  /** Content digest of the restored image (for "save only if changed"). */
  sha256?: string;
  /** Why a candidate was not usable (corrupt, foreign, truncated, other settings). */
  warnings: string[];
  /** Entries that matched but failed verification (the caller may report them as corrupt). */
  rejected?: Array<{ key: string; reason: string }>;
}

/**
 * Why a save stored nothing: `exists` (entries are immutable), `unchanged` (the image is what was
 * restored from this store under this key, and that entry is still there), `refused` (the store
 * declined: a read-only cache token, a rate limit; not an error of the job).
 */
export type SaveSkip = 'exists' | 'unchanged' | 'refused';

export interface SaveResult {
  saved: boolean;
  key: string;
  reason?: SaveSkip;
  /** What the store said when it refused (read-only token, throttled). */
  message?: string;
  /** An entry under this key that failed verification was replaced. */
  replaced?: boolean;
  bytes?: number;
  /** Content digest of the image saved (or found unchanged). */
  sha256?: string;
}

/** What a store's put did with the archive. A failed upload is thrown (OverlayError E_CACHE). */
export type PutResult =
  | { status: 'saved'; bytes: number }
  | { status: 'exists' }
  | { status: 'refused'; message: string };

/**
 * A place cache entries live. A store moves archive bytes and matches keys; packing, unpacking and
 * verification stay in the core (cache/state.ts). Stores are chosen from a spec string by
 * openStore (cache/stores.ts); the GitHub Actions cache is an adapter in packages/actions.
 */
export interface CacheStore {
  /** 'local', 'github', 'oras', …: for messages. */
  readonly kind: string;
  /** The spec this store was opened from (what state records; "same store" compares it). */
  readonly spec: string;
  /**
   * Find the best entry (the exact key, else the newest entry matching the first restore-key
   * prefix that matches anything) and hand its archive file to `use`. Whatever the store wrote to
   * get that file is removed when fetch returns or throws. null: nothing matched.
   */
  fetch<T>(
    keys: { primary: string; restoreKeys: string[] },
    use: (archive: string, key: string) => Promise<T>,
  ): Promise<{ key: string; value: T } | null>;
  /**
   * Store an entry: `write` creates the archive at the path the store gives it; the store then
   * publishes it under `key`. An existing entry is kept (`exists`) unless `replace` (the caller
   * proved that entry bad). Temp files are removed on every path.
   */
  put(
    key: string,
    write: (archive: string) => Promise<void>,
    opts?: { replace?: boolean },
  ): Promise<PutResult>;
  /** Whether an entry exists under exactly this key. */
  has(key: string): Promise<boolean>;
  /** Remove the entry under `key`; false when there was none. Throws when the store cannot delete. */
  delete(key: string): Promise<boolean>;
  /** Fail early (one coded error naming the place) when entries cannot be written. */
  ensureWritable(): Promise<void>;
}
