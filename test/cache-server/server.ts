// A small GitHub Actions cache service (v2, twirp JSON) for tests: the real @actions/cache client
// talks to it over loopback, and the archives live in a real Azure-Blob-compatible server (azurite,
// spawned as a child process). See README.md beside this file for what is and isn't implemented.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  BlobSASPermissions,
  BlobServiceClient,
  type ContainerClient,
  generateBlobSASQueryParameters,
  RestError,
  SASProtocol,
  StorageSharedKeyCredential,
} from '@azure/storage-blob';

/** Azurite's well-known development account (public, documented by Microsoft; not a secret). */
const ACCOUNT = 'devstoreaccount1';
const ACCOUNT_KEY =
  'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';
const CONTAINER = 'actions-cache';
const SERVICE = 'github.actions.results.api.v1.CacheService';
const AZURITE_BIN = fileURLToPath(new URL('../../node_modules/.bin/azurite-blob', import.meta.url));

export interface CacheEntry {
  /** Creation order: a higher id is a newer entry. */
  id: number;
  key: string;
  version: string;
  blobName: string;
  createdAt: Date;
  /** Set by FinalizeCacheEntryUpload; only finalized entries can be restored. */
  finalized: boolean;
  sizeBytes?: number;
}

export interface CacheServerOptions {
  /** Bearer token the service requires (ACTIONS_RUNTIME_TOKEN); random when omitted. */
  token?: string;
  /** Lifetime of the signed upload/download URLs, in seconds (default 3600). */
  sasTtlSeconds?: number;
}

/**
 * Faults a test can switch on while the server runs (what GitHub's service does today):
 * - createEntry `write-denied`: a read-only token (fork pull requests) — ok:false with the
 *   `cache write denied:` message the toolkit recognises; `throttled`: HTTP 429 (200 new entries
 *   per minute per repository).
 * - finalize `fail`: the upload is not accepted (non-retryable), so nothing is saved.
 * - download `truncate`: the download URL serves the first half of the archive (what a broken
 *   download or a foreign service can leave).
 */
export interface CacheServerFaults {
  createEntry?: 'write-denied' | 'throttled';
  finalize?: 'fail';
  download?: 'truncate';
}

export interface CacheServer {
  /** Switch faults on (replaces the previous set; `{}` switches them off). */
  setFaults(faults: CacheServerFaults): void;
  /** Origin of the twirp service, e.g. http://127.0.0.1:40123 (ACTIONS_RESULTS_URL). */
  url: string;
  token: string;
  /** Everything a process running @actions/cache needs to use this service. */
  env: Record<string, string>;
  /** Blob endpoint of azurite, e.g. http://127.0.0.1:40124/devstoreaccount1. */
  azuriteUrl: string;
  /** A snapshot of the entries, oldest first (pending ones included). */
  entries(): CacheEntry[];
  stop(): Promise<void>;
}

type TwirpCode =
  | 'invalid_argument'
  | 'malformed'
  | 'unauthenticated'
  | 'bad_route'
  | 'not_found'
  | 'already_exists'
  | 'failed_precondition'
  | 'resource_exhausted'
  | 'internal';

const TWIRP_STATUS: Record<TwirpCode, number> = {
  invalid_argument: 400,
  malformed: 400,
  unauthenticated: 401,
  bad_route: 404,
  not_found: 404,
  already_exists: 409,
  failed_precondition: 412,
  resource_exhausted: 429,
  internal: 500,
};

class TwirpError extends Error {
  readonly code: TwirpCode;
  constructor(code: TwirpCode, msg: string) {
    super(msg);
    this.code = code;
  }
}

type Json = Record<string, unknown>;

function str(body: Json, field: string, required = true): string {
  const v = body[field];
  if (v === undefined && !required) return '';
  if (typeof v !== 'string' || (required && v === '')) {
    throw new TwirpError('invalid_argument', `${field} is required and must be a string`);
  }
  return v;
}

/** Starts azurite (blob service only) on a free loopback port; resolves once it listens. */
async function startAzurite(location: string): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(
    process.execPath,
    [
      AZURITE_BIN,
      ...['--blobHost', '127.0.0.1', '--blobPort', '0', '--location', location],
      ...['--silent', '--skipApiVersionCheck', '--disableTelemetry'],
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  const origin = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error('azurite did not start within 30 s')), 30_000);
    const fail = (err: Error) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${err.message}\n${output}`));
    };
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const m = /successfully listens on (http:\/\/127\.0\.0\.1:\d+)/.exec(output);
      if (m?.[1]) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('error', fail);
    child.once('exit', (code, signal) => fail(new Error(`azurite exited early (${code ?? signal})`)));
  });
  child.removeAllListeners('exit');
  child.removeAllListeners('error');
  // Keep draining its output so a full pipe never blocks it.
  child.stdout?.resume();
  child.stderr?.resume();
  return { child, url: `${origin}/${ACCOUNT}` };
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

async function readJson(req: IncomingMessage): Promise<Json> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > 1024 * 1024) throw new TwirpError('malformed', 'request body too large');
    chunks.push(chunk);
  }
  try {
    const body: unknown = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new Error('not an object');
    return body as Json;
  } catch (err) {
    throw new TwirpError('malformed', `request body is not a JSON object: ${(err as Error).message}`);
  }
}

function send(res: ServerResponse, status: number, body: Json): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

export async function startCacheServer(opts: CacheServerOptions = {}): Promise<CacheServer> {
  const token = opts.token ?? randomBytes(16).toString('hex');
  const ttlMs = (opts.sasTtlSeconds ?? 3600) * 1000;
  const location = mkdtempSync(join(tmpdir(), 'cache-server-azurite-'));
  const credential = new StorageSharedKeyCredential(ACCOUNT, ACCOUNT_KEY);

  let azurite: { child: ChildProcess; url: string } | undefined;
  let container: ContainerClient;
  const killOnExit = () => azurite?.child.kill('SIGKILL');
  process.once('exit', killOnExit);
  try {
    azurite = await startAzurite(location);
    container = new BlobServiceClient(azurite.url, credential).getContainerClient(CONTAINER);
    await container.createIfNotExists();
  } catch (err) {
    if (azurite) await stopChild(azurite.child);
    process.off('exit', killOnExit);
    rmSync(location, { recursive: true, force: true });
    throw err;
  }

  const entries: CacheEntry[] = [];
  let nextId = 1;
  let faults: CacheServerFaults = {};
  let baseUrl = '';

  const signedUrl = (blobName: string, permissions: string): string => {
    const sas = generateBlobSASQueryParameters(
      {
        containerName: CONTAINER,
        blobName,
        permissions: BlobSASPermissions.parse(permissions),
        expiresOn: new Date(Date.now() + ttlMs),
        protocol: SASProtocol.HttpsAndHttp,
      },
      credential,
    );
    return `${container.getBlobClient(blobName).url}?${sas.toString()}`;
  };

  const methods: Record<string, (body: Json) => Promise<Json>> = {
    async CreateCacheEntry(body) {
      const key = str(body, 'key');
      const version = str(body, 'version');
      if (faults.createEntry === 'write-denied')
        return { ok: false, message: 'cache write denied: the token of this job is read-only' };
      if (faults.createEntry === 'throttled')
        throw new TwirpError('resource_exhausted', 'too many cache entries created');
      if (entries.some((e) => e.key === key && e.version === version)) {
        throw new TwirpError('already_exists', `cache entry ${key} (version ${version}) already exists`);
      }
      const id = nextId++;
      const entry: CacheEntry = {
        id,
        key,
        version,
        blobName: `entries/${id}`,
        createdAt: new Date(),
        finalized: false,
      };
      entries.push(entry);
      // Create + write: what the Azure SDK needs for a single-shot Put Blob or blocks + block list.
      return { ok: true, signed_upload_url: signedUrl(entry.blobName, 'cw') };
    },

    async FinalizeCacheEntryUpload(body) {
      const key = str(body, 'key');
      const version = str(body, 'version');
      const raw = body.size_bytes ?? '0'; // int64: a JSON string on the wire (a number is accepted too)
      const size = typeof raw === 'string' || typeof raw === 'number' ? Number(raw) : Number.NaN;
      if (!Number.isSafeInteger(size) || size < 0) {
        throw new TwirpError('invalid_argument', `size_bytes must be a non-negative integer, got ${raw}`);
      }
      const entry = entries.find((e) => e.key === key && e.version === version);
      if (!entry) throw new TwirpError('not_found', `no cache entry ${key} (version ${version}) was created`);
      if (faults.finalize === 'fail')
        throw new TwirpError('failed_precondition', `the upload of ${key} was not accepted (injected fault)`);
      if (entry.finalized)
        throw new TwirpError('failed_precondition', `cache entry ${key} is already finalized`);
      let uploaded: number | undefined;
      try {
        uploaded = (await container.getBlobClient(entry.blobName).getProperties()).contentLength;
      } catch (err) {
        if (err instanceof RestError && err.statusCode === 404) {
          throw new TwirpError('failed_precondition', `nothing was uploaded for cache entry ${key}`);
        }
        throw err;
      }
      if (uploaded !== size) {
        throw new TwirpError(
          'invalid_argument',
          `size_bytes ${size} does not match the upload (${uploaded} B)`,
        );
      }
      entry.finalized = true;
      entry.sizeBytes = size;
      return { ok: true, entry_id: String(entry.id) };
    },

    async GetCacheEntryDownloadURL(body) {
      const key = str(body, 'key');
      const version = str(body, 'version');
      const restoreKeys = body.restore_keys ?? [];
      if (!Array.isArray(restoreKeys) || !restoreKeys.every((k) => typeof k === 'string')) {
        throw new TwirpError('invalid_argument', 'restore_keys must be a list of strings');
      }
      const usable = entries.filter((e) => e.finalized && e.version === version);
      // The primary key matches exactly; then each restore key, in order, as a prefix, newest first.
      let match = usable.find((e) => e.key === key);
      for (const prefix of restoreKeys as string[]) {
        if (match) break;
        match = usable.filter((e) => e.key.startsWith(prefix)).sort((a, b) => b.id - a.id)[0];
      }
      if (!match) return { ok: false };
      const url =
        faults.download === 'truncate' ? `${baseUrl}/truncated/${match.id}` : signedUrl(match.blobName, 'r');
      return { ok: true, signed_download_url: url, matched_key: match.key };
    },
  };

  const server = createServer((req, res) => {
    void (async () => {
      try {
        const prefix = `/twirp/${SERVICE}/`;
        const path = new URL(req.url ?? '/', 'http://x').pathname;
        const truncated = /^\/truncated\/(\d+)$/.exec(path);
        if (req.method === 'GET' && truncated) {
          const entry = entries.find((e) => e.id === Number(truncated[1]));
          if (!entry) throw new TwirpError('not_found', 'no such entry');
          const all = await container.getBlobClient(entry.blobName).downloadToBuffer();
          const half = all.subarray(0, Math.floor(all.length / 2));
          res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': half.length });
          res.end(half);
          return;
        }
        const method = path.startsWith(prefix) ? methods[path.slice(prefix.length)] : undefined;
        if (req.method !== 'POST' || !method) {
          throw new TwirpError('bad_route', `no handler for ${req.method} ${path}`);
        }
        if (req.headers.authorization !== `Bearer ${token}`) {
          throw new TwirpError('unauthenticated', 'missing or wrong bearer token');
        }
        if (!(req.headers['content-type'] ?? '').startsWith('application/json')) {
          throw new TwirpError('bad_route', 'only the JSON encoding (application/json) is supported');
        }
        send(res, 200, await method(await readJson(req)));
      } catch (err) {
        const e = err instanceof TwirpError ? err : new TwirpError('internal', String(err));
        send(res, TWIRP_STATUS[e.code], { code: e.code, msg: e.message });
      }
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  baseUrl = url;
  const blobUrl = azurite.url;
  const child = azurite.child;

  return {
    url,
    token,
    azuriteUrl: blobUrl,
    env: {
      ACTIONS_RESULTS_URL: `${url}/`,
      ACTIONS_RUNTIME_TOKEN: token,
      ACTIONS_CACHE_SERVICE_V2: 'true',
      // Any host other than github.com / *.ghe.com / *.localhost makes the client fall back to v1.
      GITHUB_SERVER_URL: 'https://github.com',
    },
    setFaults: (f) => {
      faults = { ...f };
    },
    entries: () => entries.map((e) => ({ ...e, createdAt: new Date(e.createdAt) })),
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await stopChild(child);
      process.off('exit', killOnExit);
      rmSync(location, { recursive: true, force: true });
    },
  };
}
