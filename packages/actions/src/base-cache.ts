import { rm } from 'node:fs/promises';
import { arch, platform } from 'node:os';
import { join } from 'node:path';
import * as cache from '@actions/cache';
import { baseCacheKey, exists, imageCacheDir, isReference } from '@overlay-action/core';
import { saveToActionsCache } from './github-cache-store';

const MANIFEST_TYPES = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

/** docker://[host/]repo[:tag|@digest] or oras://host/repo[:tag|@digest] → registry coordinates. */
export function parseReference(ref: string): { host: string; repo: string; tag: string } | null {
  const m = /^(docker|oras):\/\/(.+)$/i.exec(ref);
  if (!m) return null;
  let rest = m[2]!;
  let tag = 'latest';
  const at = rest.indexOf('@');
  if (at >= 0) {
    tag = rest.slice(at + 1);
    rest = rest.slice(0, at);
  } else {
    const colon = rest.lastIndexOf(':');
    if (colon > rest.lastIndexOf('/')) {
      tag = rest.slice(colon + 1);
      rest = rest.slice(0, colon);
    }
  }
  const parts = rest.split('/');
  const first = parts[0]!;
  const hasHost = parts.length > 1 && (/[.:]/.test(first) || first === 'localhost');
  if (m[1]!.toLowerCase() === 'oras' && !hasHost) return null;
  const host = hasHost ? first : 'registry-1.docker.io';
  let repo = hasHost ? parts.slice(1).join('/') : rest;
  if (host === 'registry-1.docker.io' && !repo.includes('/')) repo = `library/${repo}`;
  return { host, repo, tag };
}

/**
 * The digest a reference names right now: from the reference itself when pinned, else a HEAD of
 * its manifest (OCI distribution API, anonymous bearer token when the registry asks for one).
 * null when the registry cannot say (offline, private): the base is then not cached.
 */
export async function referenceDigest(ref: string): Promise<string | null> {
  const r = parseReference(ref);
  if (!r) return null;
  if (/^sha256:[0-9a-f]{64}$/.test(r.tag)) return r.tag;
  const local = /^(127\.0\.0\.1|localhost)(:\d+)?$/.test(r.host);
  const url = `${local ? 'http' : 'https'}://${r.host}/v2/${r.repo}/manifests/${r.tag}`;
  const head = (auth?: string) =>
    fetch(url, {
      method: 'HEAD',
      headers: { Accept: MANIFEST_TYPES, ...(auth ? { Authorization: auth } : {}) },
      signal: AbortSignal.timeout(20_000),
    });
  try {
    let res = await head();
    const challenge = res.headers.get('www-authenticate') ?? '';
    if (res.status === 401 && /^bearer /i.test(challenge)) {
      const params = Object.fromEntries(
        [...challenge.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1]!.toLowerCase(), m[2]!]),
      );
      const tokenUrl = new URL(params.realm!);
      if (params.service) tokenUrl.searchParams.set('service', params.service);
      tokenUrl.searchParams.set('scope', params.scope ?? `repository:${r.repo}:pull`);
      const t = (await (await fetch(tokenUrl, { signal: AbortSignal.timeout(20_000) })).json()) as {
        token?: string;
        access_token?: string;
      };
      res = await head(`Bearer ${t.token ?? t.access_token}`);
    }
    const digest = res.ok ? res.headers.get('docker-content-digest') : null;
    return digest && /^sha256:[0-9a-f]{64}$/.test(digest) ? digest : null;
  } catch {
    return null;
  }
}

export interface BaseCacheState {
  key: string;
  path: string;
  /** The SIF was there before setup ran (restored from the cache, or already on this runner). */
  present: boolean;
}

/**
 * The pulled base image in the Actions cache, keyed by its reference and digest: restored to where
 * setup's base resolution looks for it, so nothing is pulled; saved by post when it was pulled.
 */
export async function restoreBase(
  ref: string,
  log: (line: string) => void,
): Promise<BaseCacheState | undefined> {
  if (!isReference(ref)) return undefined;
  const digest = await referenceDigest(ref);
  if (!digest) {
    log(`base ${ref}: its registry did not give a digest; the pulled image is not cached`);
    return undefined;
  }
  const path = join(imageCacheDir(), `${baseCacheKey(ref)}.sif`);
  const key = `overlay-base-${platform()}-${arch()}-${baseCacheKey(ref).slice(0, 16)}-${digest.replace(':', '-')}`;
  if (await exists(path)) return { key, path, present: true };
  let hit: string | undefined;
  try {
    hit = await cache.restoreCache([path], key);
  } catch (e) {
    log(`base ${ref}: cache restore failed: ${(e as Error).message}`);
  }
  if (hit) log(`base ${ref} (${digest}) restored from the Actions cache`);
  else await rm(path, { force: true }); // whatever a failed extraction left: setup pulls afresh
  return { key, path, present: Boolean(hit) && (await exists(path)) };
}

/** Post: save the pulled base image under its key (a refused or failed save is a line, not a failure). */
export async function saveBase(state: BaseCacheState, log: (line: string) => void): Promise<void> {
  if (state.present || !(await exists(state.path))) return;
  try {
    const r = await saveToActionsCache([state.path], state.key);
    log(
      r.status === 'saved'
        ? `base image saved to the Actions cache as ${state.key}`
        : r.status === 'exists'
          ? `base image ${state.key} is already cached`
          : `base image not cached: ${r.message}`,
    );
  } catch (e) {
    log(`base image not cached: ${(e as Error).message}`);
  }
}
