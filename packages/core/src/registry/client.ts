/**
 * A small OCI distribution client over Node's fetch: the part of the distribution spec overlay
 * images and layers need (auth challenge, blobs, manifests, tags) and nothing else.
 *
 * Why our own: among npm clients, `oci-registry-client` 0.2.0 (one release) has no chunked upload,
 * `@sigstore/oci` keeps whole blobs in memory and cannot download, `@snyk/docker-registry-v2-client`
 * only pulls. `skopeo` (a Debian package) would do the transport but wants an OCI layout on disk
 * per artifact, which doubles the bytes written for a chunked image. So: fetch, one module.
 *
 * - Auth: the 401 challenge decides. `Basic` sends the credentials; `Bearer` (ghcr.io, Docker Hub,
 *   Harbor, distribution's token auth) fetches a token for `repository:NAME:pull[,push]` from the
 *   realm, with the credentials as Basic if we have any (anonymous otherwise).
 * - Credentials (first found): OVERLAY_REGISTRY_USERNAME/OVERLAY_REGISTRY_PASSWORD (CI);
 *   `auths` in $DOCKER_CONFIG/config.json or ~/.docker/config.json (docker/podman/skopeo/oras
 *   login); `auths` in Apptainer's ~/.apptainer/docker-config.json (apptainer registry login,
 *   $APPTAINER_CONFIGDIR); GITHUB_TOKEN for ghcr.io.
 * - HTTPS, except loopback hosts or `insecure` (Apptainer's --no-https).
 * - 5xx, 429 and dropped connections are retried a bounded number of times (E_REGISTRY after).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isOverlayError, OverlayError } from '../errors';

/** OCI 1.1's empty config (`{}`), what artifacts without a config point to. */
export const EMPTY_CONFIG = {
  mediaType: 'application/vnd.oci.empty.v1+json',
  digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a',
  size: 2,
};
export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

export interface OrasRef {
  host: string;
  repo: string;
  tag?: string;
  digest?: string;
}

const REF_RE =
  /^oras:\/\/([a-z0-9.-]+(?::\d+)?|\[[0-9a-f:]+\](?::\d+)?)\/([a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)(?::([A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?(?:@(sha256:[a-f0-9]{64}))?$/;

/** Parse `oras://HOST/REPO[:TAG][@sha256:…]` (Apptainer's URI form). */
export function parseOrasRef(uri: string, what = 'reference'): OrasRef {
  const m = REF_RE.exec(uri);
  if (!m)
    throw new OverlayError(
      'E_INVALID_INPUT',
      `${what} ${JSON.stringify(uri)} is not oras://HOST/REPO[:TAG]`,
      {
        hint: 'e.g. oras://ghcr.io/OWNER/env:v1 (repository names are lower case)',
      },
    );
  return { host: m[1]!, repo: m[2]!, tag: m[3], digest: m[4] };
}

export const formatRef = (r: OrasRef) =>
  `oras://${r.host}/${r.repo}${r.tag ? `:${r.tag}` : ''}${r.digest ? `@${r.digest}` : ''}`;

export const sha256Digest = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export interface Credentials {
  username: string;
  password: string;
  source: string;
}

function decodeAuth(entry: { auth?: string; username?: string; password?: string }) {
  if (entry.username && entry.password) return { username: entry.username, password: entry.password };
  if (!entry.auth) return undefined;
  const text = Buffer.from(entry.auth, 'base64').toString('utf8');
  const i = text.indexOf(':');
  return i > 0 ? { username: text.slice(0, i), password: text.slice(i + 1) } : undefined;
}

/** A docker config `auths` key ("https://host/v1/", "host") as a bare host. */
function authKeyHost(key: string): string {
  const host = key.replace(/^[a-z]+:\/\//, '').replace(/\/.*$/, '');
  return ['docker.io', 'registry-1.docker.io', 'index.docker.io'].includes(host) ? 'docker.io' : host;
}

async function fromConfigFile(path: string, host: string): Promise<Credentials | undefined> {
  let json: { auths?: Record<string, { auth?: string; username?: string; password?: string }> };
  try {
    json = JSON.parse(await readFile(path, 'utf8'));
  } catch {
    return undefined; // absent or unreadable: not a source
  }
  const want = authKeyHost(host);
  for (const [key, entry] of Object.entries(json.auths ?? {})) {
    if (authKeyHost(key) !== want) continue;
    const c = decodeAuth(entry ?? {});
    if (c) return { ...c, source: path };
  }
  return undefined;
}

/** Credentials for a registry host from the places the ecosystem keeps them (see the module comment). */
export async function findCredentials(
  host: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Credentials | undefined> {
  if (env.OVERLAY_REGISTRY_USERNAME && env.OVERLAY_REGISTRY_PASSWORD)
    return {
      username: env.OVERLAY_REGISTRY_USERNAME,
      password: env.OVERLAY_REGISTRY_PASSWORD,
      source: 'OVERLAY_REGISTRY_USERNAME/OVERLAY_REGISTRY_PASSWORD',
    };
  const home = env.HOME || homedir();
  const dockerDir = env.DOCKER_CONFIG || join(home, '.docker');
  const apptainerDir = env.APPTAINER_CONFIGDIR || join(home, '.apptainer');
  for (const file of [join(dockerDir, 'config.json'), join(apptainerDir, 'docker-config.json')]) {
    const c = await fromConfigFile(file, host);
    if (c) return c;
  }
  if (host === 'ghcr.io' && env.GITHUB_TOKEN)
    return {
      username: env.GITHUB_ACTOR || 'github-actions',
      password: env.GITHUB_TOKEN,
      source: 'GITHUB_TOKEN',
    };
  return undefined;
}

const isLoopback = (host: string) => /^(localhost|127(?:\.\d{1,3}){3}|\[::1\])(?::\d+)?$/.test(host);

const MAX_ATTEMPTS = Number(process.env.OVERLAY_REGISTRY_ATTEMPTS) || 4;

/** A registry's failure worth another try (5xx, 429, a dropped connection). */
class Transient extends Error {}

export interface ClientOptions {
  /** Plain HTTP for a non-loopback host (Apptainer's --no-https). */
  insecure?: boolean;
  env?: NodeJS.ProcessEnv;
  /** One line per retry (a front end shows it as progress). */
  onRetry?: (message: string) => void;
}

type Body = Buffer | (() => AsyncIterable<Uint8Array>);

interface Req {
  method: string;
  /** Path below /v2/<repo>/ or an absolute URL (upload locations). */
  path: string;
  headers?: Record<string, string>;
  body?: Body;
  /** Statuses the caller handles; anything else is an error. */
  ok: number[];
  /** Extra repositories the token must cover (cross-repository mount). */
  alsoPull?: string;
}

export class RegistryClient {
  readonly base: string;
  private auth = new Map<string, string>(); // scope -> Authorization header
  private challenge?: { scheme: 'basic' | 'bearer'; realm?: string; service?: string };
  private creds?: Credentials | null;

  constructor(
    readonly host: string,
    readonly repo: string,
    private readonly opts: ClientOptions = {},
  ) {
    const scheme = isLoopback(host) || opts.insecure ? 'http' : 'https';
    this.base = `${scheme}://${host}/v2/${repo}/`;
  }

  private where() {
    return `${this.host}/${this.repo}`;
  }

  private async credentials(): Promise<Credentials | undefined> {
    if (this.creds === undefined) this.creds = (await findCredentials(this.host, this.opts.env)) ?? null;
    return this.creds ?? undefined;
  }

  private scopeFor(method: string, path: string, alsoPull?: string): string {
    // deleting a manifest is its own action in token auth (distribution, Harbor)
    const actions =
      method === 'GET' || method === 'HEAD'
        ? 'pull'
        : method === 'DELETE' && path.startsWith('manifests/')
          ? 'pull,push,delete'
          : 'pull,push';
    const own = `repository:${this.repo}:${actions}`;
    return alsoPull ? `${own} repository:${alsoPull}:pull` : own;
  }

  /** Answer a 401 challenge: fills this.auth for the scope, or throws E_AUTH. */
  private async authenticate(header: string | null, scope: string, failedBefore: boolean): Promise<void> {
    const creds = await this.credentials();
    const who = creds ? `as ${creds.username} (credentials from ${creds.source})` : 'without credentials';
    const hint = creds
      ? 'check the user name and password/token (and that it may read/write this repository)'
      : `log in first (docker/podman/oras login ${this.host}, apptainer registry login) or set OVERLAY_REGISTRY_USERNAME and OVERLAY_REGISTRY_PASSWORD`;
    if (failedBefore || !header)
      throw new OverlayError('E_AUTH', `${this.where()} refused access ${who}`, { hint });
    const scheme = /^\s*(\w+)/.exec(header)?.[1]?.toLowerCase();
    const param = (name: string) => new RegExp(`${name}="([^"]*)"`, 'i').exec(header)?.[1];
    if (scheme === 'basic') {
      if (!creds) throw new OverlayError('E_AUTH', `${this.where()} needs credentials`, { hint });
      this.challenge = { scheme: 'basic' };
      this.auth.set(scope, `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`);
      return;
    }
    if (scheme !== 'bearer' || !param('realm'))
      throw new OverlayError('E_AUTH', `${this.where()} asks for an unsupported authentication (${header})`);
    this.challenge = { scheme: 'bearer', realm: param('realm'), service: param('service') };
    this.auth.set(scope, await this.token(scope, creds, hint, who));
  }

  private async token(
    scope: string,
    creds: Credentials | undefined,
    hint: string,
    who: string,
  ): Promise<string> {
    const url = new URL(this.challenge!.realm!);
    if (this.challenge!.service) url.searchParams.set('service', this.challenge!.service);
    for (const s of scope.split(' ')) url.searchParams.append('scope', s);
    const headers: Record<string, string> = {};
    if (creds)
      headers.authorization = `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
    let res: Response;
    try {
      res = await fetch(url, { headers });
    } catch (e) {
      throw new Transient(`token service ${url.origin}: ${(e as Error).message}`);
    }
    if (res.status >= 500 || res.status === 429) throw new Transient(`token service answered ${res.status}`);
    if (!res.ok)
      throw new OverlayError('E_AUTH', `${this.where()}: the token service refused ${who}`, { hint });
    const body = (await res.json().catch(() => ({}))) as { token?: string; access_token?: string };
    const token = body.token || body.access_token;
    if (!token) throw new OverlayError('E_REGISTRY', `token service ${url.origin} answered no token`);
    return `Bearer ${token}`;
  }

  /** One HTTP exchange with auth (a 401 is answered once); transient failures throw Transient. */
  private async send(r: Req): Promise<Response> {
    const url = /^https?:\/\//.test(r.path) ? r.path : new URL(r.path, this.base).toString();
    const scope = this.scopeFor(r.method, r.path, r.alsoPull);
    for (let authTry = 0; ; authTry++) {
      const headers: Record<string, string> = { ...r.headers };
      // a Basic challenge holds for every scope; a token is per scope
      const auth =
        this.auth.get(scope) ?? (this.challenge?.scheme === 'basic' ? [...this.auth.values()][0] : undefined);
      if (auth) headers.authorization = auth;
      let res: Response;
      try {
        const body = r.body === undefined ? undefined : Buffer.isBuffer(r.body) ? r.body : r.body();
        res = await fetch(url, {
          method: r.method,
          headers,
          body: body as RequestInit['body'],
          redirect: 'follow',
          ...(body && !Buffer.isBuffer(body) ? { duplex: 'half' } : {}),
        } as RequestInit);
      } catch (e) {
        const cause = (e as { cause?: { code?: string; message?: string } }).cause;
        if (cause?.code === 'EPROTO' || /wrong version number|SSL/i.test(cause?.message ?? ''))
          throw new OverlayError('E_REGISTRY', `${this.host} does not speak HTTPS`, {
            hint: 'for a plain-HTTP registry pass --no-https',
          });
        throw new Transient(`${r.method} ${url}: ${cause?.message ?? (e as Error).message}`);
      }
      if (res.status === 401 && authTry === 0) {
        await res.body?.cancel();
        await this.authenticate(res.headers.get('www-authenticate'), scope, false);
        continue;
      }
      if (r.ok.includes(res.status)) return res;
      const text = await res.text().catch(() => '');
      if (res.status === 401 || res.status === 403) await this.authenticate(null, scope, true);
      if (res.status >= 500 || res.status === 429)
        throw new Transient(`${r.method} ${url} answered ${res.status} ${text.slice(0, 200)}`);
      throw new OverlayError(
        'E_REGISTRY',
        `${this.where()}: ${r.method} answered ${res.status} ${text.slice(0, 300)}`,
      );
    }
  }

  /** Run `op` again on transient failures, a bounded number of times with backoff. */
  private async retrying<T>(what: string, op: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await op();
      } catch (e) {
        if (!(e instanceof Transient) && !isConnectionDrop(e)) throw e;
        if (attempt >= MAX_ATTEMPTS)
          throw new OverlayError(
            'E_REGISTRY',
            `${this.where()}: ${what} failed ${attempt} times: ${(e as Error).message}`,
            {
              hint: 'the registry is failing or unreachable; try again later',
            },
          );
        this.opts.onRetry?.(`${what}: ${(e as Error).message}; retrying (${attempt}/${MAX_ATTEMPTS - 1})`);
        await sleep(250 * 2 ** (attempt - 1));
      }
    }
  }

  async ping(): Promise<void> {
    await this.retrying('ping', async () => {
      const res = await this.send({ method: 'GET', path: 'tags/list', ok: [200, 404] });
      await res.body?.cancel();
    });
  }

  async hasBlob(digest: string): Promise<boolean> {
    return this.retrying('check blob', async () => {
      const res = await this.send({ method: 'HEAD', path: `blobs/${digest}`, ok: [200, 404] });
      return res.status === 200;
    });
  }

  /** Cross-repository mount: true when the registry linked the blob (201), false when it did not. */
  async mountBlob(digest: string, from: string): Promise<boolean> {
    return this.retrying('mount blob', async () => {
      const res = await this.send({
        method: 'POST',
        path: `blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`,
        ok: [201, 202],
        alsoPull: from,
      });
      await res.body?.cancel();
      if (res.status === 201) return true;
      // 202: the registry opened an upload instead; cancel it
      const loc = res.headers.get('location');
      if (loc)
        await this.send({ method: 'DELETE', path: new URL(loc, this.base).toString(), ok: [204, 404] }).catch(
          () => {},
        );
      return false;
    });
  }

  private async startUpload(): Promise<string> {
    const res = await this.send({ method: 'POST', path: 'blobs/uploads/', ok: [202] });
    await res.body?.cancel();
    const loc = res.headers.get('location');
    if (!loc) throw new OverlayError('E_REGISTRY', `${this.where()}: upload started without a Location`);
    return new URL(loc, this.base).toString();
  }

  private static withDigest(location: string, digest: string): string {
    const u = new URL(location);
    u.searchParams.set('digest', digest);
    return u.toString();
  }

  /** Monolithic upload of an in-memory blob (POST, then PUT with the bytes). */
  async uploadBlob(data: Buffer, digest = sha256Digest(data)): Promise<void> {
    await this.retrying('upload blob', async () => {
      const loc = await this.startUpload();
      const res = await this.send({
        method: 'PUT',
        path: RegistryClient.withDigest(loc, digest),
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(data.length) },
        body: data,
        ok: [201],
      });
      await res.body?.cancel();
    });
  }

  /**
   * Chunked upload of a file (POST, PATCH per part with Content-Range, PUT with the digest): large
   * blobs never sit in memory, and no single request outlives a proxy's time limit.
   */
  async uploadFile(path: string, size: number, digest: string, partBytes = 64 * 1024 * 1024): Promise<void> {
    await this.retrying('upload blob', async () => {
      let loc = await this.startUpload();
      for (let start = 0; start < size; start += partBytes) {
        const end = Math.min(size, start + partBytes);
        const res = await this.send({
          method: 'PATCH',
          path: loc,
          headers: {
            'content-type': 'application/octet-stream',
            'content-length': String(end - start),
            'content-range': `${start}-${end - 1}`,
          },
          body: () => createReadStream(path, { start, end: end - 1 }),
          ok: [202],
        });
        await res.body?.cancel();
        loc = new URL(res.headers.get('location') ?? loc, this.base).toString();
      }
      const res = await this.send({
        method: 'PUT',
        path: RegistryClient.withDigest(loc, digest),
        headers: { 'content-type': 'application/octet-stream', 'content-length': '0' },
        body: Buffer.alloc(0),
        ok: [201],
      });
      await res.body?.cancel();
    });
  }

  /**
   * Stream a blob to `sink` (called again from the start after a dropped connection: `reset` is
   * called first), verifying its digest: a mismatch is E_INTEGRITY and is not retried.
   */
  async readBlob(
    digest: string,
    consume: (chunk: Uint8Array) => Promise<void> | void,
    reset: () => Promise<void> | void = () => {},
  ): Promise<number> {
    return this.retrying('download blob', async () => {
      await reset();
      const res = await this.send({ method: 'GET', path: `blobs/${digest}`, ok: [200, 404] });
      if (res.status === 404) {
        await res.body?.cancel();
        throw new OverlayError('E_NOT_FOUND', `${this.where()} has no blob ${digest}`);
      }
      const hash = createHash('sha256');
      let n = 0;
      try {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          hash.update(chunk);
          n += chunk.length;
          await consume(chunk);
        }
      } catch (e) {
        if (isOverlayError(e)) throw e;
        throw new Transient(`blob ${digest.slice(0, 19)}… cut after ${n} bytes: ${(e as Error).message}`);
      }
      const got = `sha256:${hash.digest('hex')}`;
      if (got !== digest)
        throw new OverlayError('E_INTEGRITY', `${this.where()}: blob ${digest} arrived with digest ${got}`, {
          hint: 'the registry holds a damaged blob; push the artifact again',
        });
      return n;
    });
  }

  /** A small blob in memory (verified). */
  async getBlob(digest: string): Promise<Buffer> {
    let parts: Buffer[] = [];
    await this.readBlob(
      digest,
      (c) => {
        parts.push(Buffer.from(c));
      },
      () => {
        parts = [];
      },
    );
    return Buffer.concat(parts);
  }

  async putManifest(reference: string, body: Buffer, mediaType: string): Promise<string> {
    return this.retrying('put manifest', async () => {
      const res = await this.send({
        method: 'PUT',
        path: `manifests/${reference}`,
        headers: { 'content-type': mediaType },
        body,
        ok: [201],
      });
      await res.body?.cancel();
      return sha256Digest(body);
    });
  }

  /** A manifest by tag or digest, with its digest checked when asked by digest. */
  async getManifest(reference: string): Promise<{ body: Buffer; digest: string; mediaType: string }> {
    return this.retrying('get manifest', async () => {
      const res = await this.send({
        method: 'GET',
        path: `manifests/${reference}`,
        headers: {
          accept: [
            'application/vnd.oci.image.manifest.v1+json',
            'application/vnd.oci.image.index.v1+json',
            'application/vnd.docker.distribution.manifest.v2+json',
          ].join(', '),
        },
        ok: [200, 404],
      });
      if (res.status === 404) {
        await res.body?.cancel();
        throw new OverlayError('E_NOT_FOUND', `${this.where()} has no ${reference}`, {
          hint: `list what is there: skopeo list-tags docker://${this.where()}`,
        });
      }
      const body = Buffer.from(await res.arrayBuffer());
      const digest = sha256Digest(body);
      if (reference.startsWith('sha256:') && digest !== reference)
        throw new OverlayError(
          'E_INTEGRITY',
          `${this.where()}: manifest ${reference} arrived with digest ${digest}`,
        );
      return { body, digest, mediaType: res.headers.get('content-type') ?? '' };
    });
  }

  /** Does a tag exist (HEAD on the manifest)? */
  async hasManifest(reference: string): Promise<boolean> {
    return this.retrying('check manifest', async () => {
      const res = await this.send({
        method: 'HEAD',
        path: `manifests/${reference}`,
        headers: { accept: 'application/vnd.oci.image.manifest.v1+json' },
        ok: [200, 404],
      });
      return res.status === 200;
    });
  }

  /** Delete a manifest by digest (registries that allow it; distribution needs delete enabled). */
  async deleteManifest(digest: string): Promise<boolean> {
    return this.retrying('delete manifest', async () => {
      const res = await this.send({ method: 'DELETE', path: `manifests/${digest}`, ok: [202, 404, 405] });
      await res.body?.cancel();
      if (res.status === 405)
        throw new OverlayError('E_CACHE', `${this.where()} does not allow deleting through the API`, {
          hint: "delete it in the registry's web interface, or let its retention rules remove it",
        });
      return res.status === 202;
    });
  }

  /** Can we push here? Opens an upload (needs push rights) and cancels it. */
  async checkPush(): Promise<void> {
    await this.retrying('check push access', async () => {
      const loc = await this.startUpload();
      await this.send({ method: 'DELETE', path: loc, ok: [204, 404, 405] })
        .then((r) => r.body?.cancel())
        .catch(() => {});
    });
  }

  /** Every tag (following the Link header's pages); none for a repository that does not exist. */
  async listTags(): Promise<string[]> {
    const tags: string[] = [];
    let path: string | undefined = 'tags/list?n=1000';
    while (path) {
      const page: string = path;
      const { list, next } = await this.retrying('list tags', async () => {
        const res = await this.send({ method: 'GET', path: page, ok: [200, 404] });
        if (res.status === 404) {
          await res.body?.cancel();
          return { list: [] as string[], next: undefined };
        }
        const json = (await res.json()) as { tags?: string[] | null };
        const link = /<([^>]+)>;\s*rel="next"/.exec(res.headers.get('link') ?? '')?.[1];
        return { list: json.tags ?? [], next: link ? new URL(link, this.base).toString() : undefined };
      });
      tags.push(...list);
      path = next;
    }
    return tags;
  }
}

/** undici reports a connection cut mid-body as a TypeError("terminated") or a socket error. */
function isConnectionDrop(e: unknown): boolean {
  if (isOverlayError(e)) return false;
  const msg = `${(e as Error)?.message ?? ''} ${((e as { cause?: Error })?.cause as Error)?.message ?? ''}`;
  return /terminated|socket|ECONNRESET|EPIPE|other side closed|fetch failed/i.test(msg);
}
