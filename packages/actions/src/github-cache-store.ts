import { mkdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import * as cache from '@actions/cache';
import {
  type CacheStore,
  packImage,
  type RestoreResult,
  type SaveResult,
  unpackImage,
} from '@overlay-action/core';

/**
 * The GitHub Actions cache as a CacheStore. The image is packed by the core (sparse-aware,
 * with its manifest) into one archive file, and that file is what @actions/cache stores. The
 * archive path must be the same at save and restore time (it is part of the cache version).
 */
export class GitHubCacheStore implements CacheStore {
  readonly kind = 'github';
  // @actions/cache versions an entry by the path strings it is given: a path relative to the
  // workspace is the same on every runner (RUNNER_TEMP is not), so save and restore always agree.
  private readonly relative = '.overlay-action-cache/overlay-image.ovc.zst';
  private get dir() {
    return join(process.env.GITHUB_WORKSPACE || process.cwd(), '.overlay-action-cache');
  }
  private get archive() {
    return join(process.env.GITHUB_WORKSPACE || process.cwd(), this.relative);
  }

  async restore(keys: { primary: string; restoreKeys: string[] }, target: string): Promise<RestoreResult> {
    await mkdir(this.dir, { recursive: true });
    await rm(this.archive, { force: true });
    const warnings: string[] = [];
    let matched: string | undefined;
    try {
      matched = await cache.restoreCache([this.relative], keys.primary, keys.restoreKeys);
    } catch (e) {
      warnings.push(`cache restore failed: ${(e as Error).message}`);
    }
    if (!matched) return { outcome: 'miss', warnings };
    const r = await unpackImage(this.archive, target);
    await rm(this.dir, { recursive: true, force: true });
    if (!r.ok) {
      const reason = `cache entry ${matched} not usable: ${r.reason}`;
      return {
        outcome: 'miss',
        warnings: [...warnings, reason],
        rejected: [{ key: matched, reason: r.reason }],
      };
    }
    return {
      outcome: matched === keys.primary ? 'hit' : 'partial',
      matchedKey: matched,
      sha256: r.manifest.sha256,
      warnings,
    };
  }

  async save(key: string, image: string): Promise<SaveResult> {
    await mkdir(this.dir, { recursive: true });
    await rm(this.archive, { force: true });
    try {
      const { sha256 } = await packImage(image, this.archive);
      const bytes = (await stat(this.archive)).size;
      // -1: the entry exists or is being written by another job (entries are immutable)
      const id = await cache.saveCache([this.relative], key);
      return id === -1 ? { saved: false, key, reason: 'exists' } : { saved: true, key, bytes, sha256 };
    } catch (e) {
      if (e instanceof cache.ReserveCacheError) return { saved: false, key, reason: 'exists' };
      throw e;
    } finally {
      await rm(this.dir, { recursive: true, force: true });
    }
  }
}
