/** What a restore found: the exact key, a restore-key prefix match, or nothing usable. */
export type RestoreOutcome = 'hit' | 'partial' | 'miss';

export interface RestoreResult {
  outcome: RestoreOutcome;
  matchedKey?: string;
  /** Content digest of the restored image (for "save only if changed"). */
  sha256?: string;
  /** Why a candidate was not usable (corrupt, foreign, truncated). */
  warnings: string[];
  /** Entries that matched but failed verification (the caller may report them as corrupt). */
  rejected?: Array<{ key: string; reason: string }>;
}

export interface SaveResult {
  saved: boolean;
  key: string;
  reason?: 'exists' | 'unchanged';
  bytes?: number;
  /** Content digest of the image saved (or found unchanged). */
  sha256?: string;
}

/** A place cache entries live: a local directory, or the GitHub Actions cache (an adapter). */
export interface CacheStore {
  readonly kind: string;
  restore(keys: { primary: string; restoreKeys: string[] }, target: string): Promise<RestoreResult>;
  save(key: string, image: string): Promise<SaveResult>;
}
