import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { isOverlayError, OverlayError } from '../errors';
import { withScratchDir } from '../fs/atomic';
import { EMPTY_CONFIG, OCI_MANIFEST, parseOrasRef, RegistryClient } from '../registry/client';
import { validateKey } from './key';
import { CACHE_FORMAT_VERSION } from './pack';
import type { CacheStore, PutResult } from './store';

/**
 * A cache store in an OCI registry repository, `oras://HOST/REPO`: each entry is one manifest whose
 * single layer is the cache archive (the same bytes a directory store keeps).
 *
 * Keys to tags: a key is up to 512 characters of anything but commas, a tag is at most 128 of
 * [A-Za-z0-9_.-]. So the tag is `ovc-` + the first 40 hex digits of sha256(key), and the key itself
 * rides in the manifest's `org.overlay-action.cache.key` annotation (checked on every hit, so a
 * tag can never answer for another key). Restore-key prefixes list the repository's `ovc-` tags
 * and read those manifests' annotations; the newest (`org.opencontainers.image.created`) wins.
 *
 * Entries are immutable: a save under an existing tag is `exists`. Two saves racing for one key
 * can both pass that check (registries have no conditional PUT); both write valid entries of the
 * same key and the later tag wins. Registries prune by their own retention rules.
 */
export const CACHE_ARTIFACT_TYPE = 'application/vnd.overlay-action.cache.v1';
export const CACHE_ARCHIVE_MEDIA_TYPE = 'application/vnd.overlay-action.cache.archive.v1+zstd';
const KEY = 'org.overlay-action.cache.key';
const CREATED = 'org.opencontainers.image.created';

export const tagForKey = (key: string) =>
  `ovc-${createHash('sha256').update(key).digest('hex').slice(0, 40)}`;

interface EntryManifest {
  artifactType?: string;
  layers?: Array<{ mediaType: string; digest: string; size: number }>;
  annotations?: Record<string, string>;
}

async function fileDigest(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * 2 ** 20 }))
    hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

const scratch = <T>(fn: (dir: string) => Promise<T>) => withScratchDir('store', fn);

export class RegistryStore implements CacheStore {
  readonly kind = 'oras';
  private readonly client: RegistryClient;

  constructor(readonly spec: string) {
    const ref = parseOrasRef(spec, 'store');
    if (ref.tag || ref.digest)
      throw new OverlayError(
        'E_INVALID_INPUT',
        `store ${spec}: a registry store is oras://HOST/REPO, without a tag`,
        {
          hint: 'tags are derived from the cache keys',
        },
      );
    // plain HTTP: loopback, or OVERLAY_REGISTRY_PLAIN_HTTP=1 (a store spec has no flags)
    this.client = new RegistryClient(ref.host, ref.repo, {
      insecure: process.env.OVERLAY_REGISTRY_PLAIN_HTTP === '1',
    });
  }

  /** The manifest of the entry under `key`, or null (a tag whose annotation names another key is no entry). */
  private async entry(key: string): Promise<{ m: EntryManifest; digest: string } | null> {
    try {
      const { body, digest } = await this.client.getManifest(tagForKey(key));
      const m = JSON.parse(body.toString('utf8')) as EntryManifest;
      if (m.artifactType !== CACHE_ARTIFACT_TYPE || m.annotations?.[KEY] !== key) return null;
      return { m, digest };
    } catch (e) {
      if (isOverlayError(e, 'E_NOT_FOUND')) return null;
      throw e;
    }
  }

  private async listEntries(): Promise<Array<{ key: string; created: string; m: EntryManifest }>> {
    const tags = (await this.client.listTags()).filter((t) => t.startsWith('ovc-'));
    const out: Array<{ key: string; created: string; m: EntryManifest }> = [];
    for (let i = 0; i < tags.length; i += 4) {
      const batch = await Promise.all(
        tags.slice(i, i + 4).map(async (t) => {
          try {
            const m = JSON.parse((await this.client.getManifest(t)).body.toString('utf8')) as EntryManifest;
            const key = m.annotations?.[KEY];
            if (m.artifactType !== CACHE_ARTIFACT_TYPE || !key || tagForKey(key) !== t) return null;
            return { key, created: m.annotations?.[CREATED] ?? '', m };
          } catch (e) {
            if (isOverlayError(e, 'E_NOT_FOUND')) return null; // deleted meanwhile
            throw e;
          }
        }),
      );
      for (const b of batch) if (b) out.push(b);
    }
    return out;
  }

  async fetch<T>(
    keys: { primary: string; restoreKeys: string[] },
    use: (archive: string, key: string) => Promise<T>,
  ): Promise<{ key: string; value: T } | null> {
    let best: { key: string; m: EntryManifest } | null = null;
    const exact = await this.entry(keys.primary);
    if (exact) best = { key: keys.primary, m: exact.m };
    if (!best && keys.restoreKeys.length) {
      const all = (await this.listEntries()).sort((a, b) => b.created.localeCompare(a.created));
      for (const prefix of keys.restoreKeys) {
        best = all.find((e) => e.key.startsWith(prefix)) ?? null;
        if (best) break;
      }
    }
    const blob = best?.m.layers?.[0];
    if (!best || !blob || blob.mediaType !== CACHE_ARCHIVE_MEDIA_TYPE) return null;
    const key = best.key;
    return scratch(async (dir) => {
      const archive = join(dir, 'entry.ovc.zst');
      const fh = await open(archive, 'w');
      let pos = 0;
      try {
        await this.client.readBlob(
          blob.digest,
          async (chunk) => {
            await fh.write(chunk, 0, chunk.length, pos);
            pos += chunk.length;
          },
          async () => {
            await fh.truncate(0);
            pos = 0;
          },
        );
      } catch (e) {
        // a damaged blob: hand over what arrived, unpacking rejects it (a miss the core reports)
        if (!isOverlayError(e, 'E_INTEGRITY')) throw e;
      } finally {
        await fh.close();
      }
      return { key, value: await use(archive, key) };
    });
  }

  async put(
    key: string,
    write: (archive: string) => Promise<void>,
    opts: { replace?: boolean } = {},
  ): Promise<PutResult> {
    validateKey(key);
    if (!opts.replace && (await this.has(key))) return { status: 'exists' };
    return scratch(async (dir) => {
      const archive = join(dir, 'entry.ovc.zst');
      await write(archive);
      const [digest, st] = await Promise.all([fileDigest(archive), stat(archive)]);
      if (!(await this.client.hasBlob(digest))) await this.client.uploadFile(archive, st.size, digest);
      if (!(await this.client.hasBlob(EMPTY_CONFIG.digest))) await this.client.uploadBlob(Buffer.from('{}'));
      // another save of the same key may have finished while we uploaded: entries are immutable
      if (!opts.replace && (await this.has(key))) return { status: 'exists' };
      const manifest = {
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        artifactType: CACHE_ARTIFACT_TYPE,
        config: EMPTY_CONFIG,
        layers: [{ mediaType: CACHE_ARCHIVE_MEDIA_TYPE, digest, size: st.size }],
        annotations: {
          [KEY]: key,
          [CREATED]: new Date().toISOString(),
          'org.overlay-action.cache.format-version': String(CACHE_FORMAT_VERSION),
        },
      };
      const body = Buffer.from(JSON.stringify(manifest));
      await this.client.putManifest(tagForKey(key), body, OCI_MANIFEST);
      return { status: 'saved', bytes: st.size };
    });
  }

  async has(key: string): Promise<boolean> {
    return (await this.entry(key)) !== null;
  }

  async delete(key: string): Promise<boolean> {
    const e = await this.entry(key);
    if (!e) return false;
    try {
      return await this.client.deleteManifest(e.digest);
    } catch (err) {
      if (isOverlayError(err, 'E_CACHE'))
        throw new OverlayError('E_CACHE', `${err.message}: cannot delete cache entry ${key}`, {
          hint: `delete tag ${tagForKey(key)} in the registry's interface (or let its retention rules remove it)`,
        });
      throw err;
    }
  }

  async ensureWritable(): Promise<void> {
    try {
      await this.client.checkPush();
    } catch (e) {
      if (isOverlayError(e, 'E_AUTH')) throw e;
      throw new OverlayError('E_CACHE', `cannot write to ${this.spec}: ${(e as Error).message}`, {
        hint: isOverlayError(e) ? e.hint : undefined,
      });
    }
  }
}
