import { mkdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import * as cache from '@actions/cache';
import { type CacheStore, OverlayError, type PutResult } from '@overlay-action/core';

/** What @actions/cache reported while it ran: it returns -1 / undefined and only logs why. */
interface Captured {
  problems: string[];
  debug: string[];
}

/**
 * Run `fn` with the toolkit's warning/error annotations captured instead of printed (they are
 * re-reported as one line that says what happened); everything else passes through.
 */
async function capturing<T>(fn: () => Promise<T>): Promise<{ value: T; seen: Captured }> {
  const seen: Captured = { problems: [], debug: [] };
  const original = process.stdout.write.bind(process.stdout);
  process.stdout.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
    const m = /^::(warning|error|debug)[^:]*::(.*)$/s.exec(text.trimEnd());
    if (m?.[1] === 'debug') seen.debug.push(m[2]!);
    else if (m) {
      seen.problems.push(m[2]!.replace(/%0A/g, ' ').replace(/%25/g, '%'));
      return true;
    }
    return (original as (...a: unknown[]) => boolean)(chunk, ...rest);
  }) as typeof process.stdout.write;
  try {
    return { value: await fn(), seen };
  } finally {
    process.stdout.write = original;
  }
}

/**
 * The GitHub Actions cache as a CacheStore: the core packs the image into one archive file and
 * that file is what @actions/cache stores. Entries cannot be deleted or replaced from a job.
 */
export class GitHubCacheStore implements CacheStore {
  readonly kind = 'github';
  readonly spec = 'github-actions-cache';
  // @actions/cache versions an entry by the path strings it is given: a path relative to the
  // workspace is the same on every runner (RUNNER_TEMP is not), so save and restore always agree.
  private readonly relative = '.overlay-action-cache/overlay-image.ovc.zst';
  private get workspace() {
    return process.env.GITHUB_WORKSPACE || process.cwd();
  }
  private get dir() {
    return join(this.workspace, '.overlay-action-cache');
  }
  private get archive() {
    return join(this.workspace, this.relative);
  }

  /** Nothing of ours stays in the user's checkout, whatever happened. */
  private async clean(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }

  async ensureWritable(): Promise<void> {}

  async has(key: string): Promise<boolean> {
    try {
      const { value } = await capturing(() =>
        cache.restoreCache([this.relative], key, [], { lookupOnly: true }),
      );
      return value === key;
    } catch {
      return false;
    }
  }

  async delete(key: string): Promise<boolean> {
    throw new OverlayError('E_CACHE', `the Actions cache entry ${key} cannot be deleted from a job`, {
      hint: `delete it with \`gh cache delete ${key}\` (or in the repository's Actions → Caches page), then rerun`,
    });
  }

  async fetch<T>(
    keys: { primary: string; restoreKeys: string[] },
    use: (archive: string, key: string) => Promise<T>,
  ): Promise<{ key: string; value: T } | null> {
    try {
      await this.clean();
      await mkdir(this.dir, { recursive: true });
      const { value: matched, seen } = await capturing(async () => {
        try {
          return await cache.restoreCache([this.relative], keys.primary, keys.restoreKeys);
        } catch (e) {
          return Promise.reject(
            new OverlayError('E_CACHE', `Actions cache restore failed: ${(e as Error).message}`),
          );
        }
      });
      if (!matched) {
        // the toolkit swallowed a failed download or extraction: report it, as a miss
        for (const p of seen.problems) process.stdout.write(`cache restore: ${p}\n`);
        return null;
      }
      return { key: matched, value: await use(this.archive, matched) };
    } finally {
      await this.clean();
    }
  }

  async put(key: string, write: (archive: string) => Promise<void>, opts: { replace?: boolean } = {}) {
    if (opts.replace && (await this.has(key))) await this.delete(key);
    try {
      await this.clean();
      await mkdir(this.dir, { recursive: true });
      await write(this.archive);
      const bytes = (await stat(this.archive)).size;
      const { value: id, seen } = await capturing(async () => {
        try {
          return await cache.saveCache([this.relative], key);
        } catch (e) {
          if (e instanceof cache.ReserveCacheError) return -1;
          throw new OverlayError('E_CACHE', `Actions cache save failed: ${(e as Error).message}`);
        }
      });
      if (id !== -1) return { status: 'saved', bytes } satisfies PutResult;
      return await this.whyNotSaved(key, seen);
    } finally {
      await this.clean();
    }
  }

  /** saveCache returned -1: an existing entry, a refusal (read-only token, rate limit) or a failure. */
  private async whyNotSaved(key: string, seen: Captured): Promise<PutResult> {
    const said = [...seen.problems, ...seen.debug].join(' | ');
    if (/cache write denied/i.test(said))
      return {
        status: 'refused',
        message: 'this job has a read-only cache token (e.g. a fork pull request)',
      };
    if (/rate limit|\(429\)/i.test(said))
      return {
        status: 'refused',
        message: 'the Actions cache is throttling new entries (HTTP 429); try later',
      };
    if (await this.has(key)) return { status: 'exists' };
    if (seen.problems.length === 0 || /another job may be creating/i.test(said))
      return { status: 'refused', message: 'another job is saving this key right now' };
    throw new OverlayError(
      'E_CACHE',
      `saving ${key} to the Actions cache failed: ${seen.problems.join('; ')}`,
      {
        hint: 'the image itself is fine; a rerun saves it',
      },
    );
  }
}
