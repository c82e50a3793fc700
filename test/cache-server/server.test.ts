// The test cache service against the REAL @actions/cache client, run in child processes (so the
// client reads the service's ACTIONS_* variables fresh), with the archives stored in azurite.
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CacheServer, startCacheServer } from './server';

const NODE = fileURLToPath(new URL('../../node_modules/.bin/node', import.meta.url));
const CLIENT = fileURLToPath(new URL('./fixtures/cache-client.mjs', import.meta.url));
const SERVICE = 'twirp/github.actions.results.api.v1.CacheService';

let server: CacheServer;
let root: string;
let n = 0;

beforeAll(async () => {
  server = await startCacheServer();
  root = mkdtempSync(join(tmpdir(), 'cache-server-test-'));
});
afterAll(async () => {
  await server?.stop();
  if (root) rmSync(root, { recursive: true, force: true });
});

/** A fresh, empty workspace directory (the client's GITHUB_WORKSPACE and cwd). */
function workspace(): string {
  const dir = join(root, `ws-${++n}`);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** Writes files (relative path → content) under dir. */
function writeTree(dir: string, files: Record<string, string | Buffer>): void {
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(join(dir, path, '..'), { recursive: true });
    writeFileSync(join(dir, path), content);
  }
}

/** Relative path → sha256 of every file under dir ({} when dir does not exist). */
function hashTree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out[relative(dir, p)] = createHash('sha256').update(readFileSync(p)).digest('hex');
    }
  };
  try {
    walk(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  return out;
}

type Request =
  | { op: 'save'; key: string; paths: string[] }
  | { op: 'restore'; key: string; restoreKeys?: string[]; paths: string[] };

/** Runs the real client once in a child process; returns what saveCache/restoreCache returned. */
async function client(cwd: string, request: Request): Promise<{ value: unknown; log: string }> {
  const temp = join(root, `tmp-${++n}`);
  mkdirSync(temp);
  const r = await execa(NODE, [CLIENT, JSON.stringify(request)], {
    cwd,
    extendEnv: false,
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: process.env.HOME ?? root,
      GITHUB_WORKSPACE: cwd,
      RUNNER_TEMP: temp,
      ...server.env,
    },
    reject: false,
  });
  const log = `${r.stdout}\n${r.stderr}`;
  expect(r.exitCode, log).toBe(0);
  const line = r.stdout.split('\n').find((l) => l.startsWith('RESULT '));
  expect(line, log).toBeDefined();
  return { value: (JSON.parse(line!.slice('RESULT '.length)) as { value: unknown }).value, log };
}

async function twirp(method: string, body: unknown, token = server.token) {
  const res = await fetch(`${server.url}/${SERVICE}/${method}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe('cache service v2 with the real @actions/cache', () => {
  const original = {
    'data/a.txt': 'alpha\n',
    'data/empty': '',
    'data/sub/b.bin': randomBytes(64 * 1024),
    'data/sub/deeper/c.txt': 'gamma\n'.repeat(1000),
  };
  let saved: Record<string, string>;

  it('saves a directory under k1', async () => {
    const ws = workspace();
    writeTree(ws, original);
    saved = hashTree(join(ws, 'data'));
    const { value, log } = await client(ws, { op: 'save', key: 'k1', paths: ['data'] });
    expect(value, log).toBe(1);
    const [entry, ...rest] = server.entries();
    expect(rest).toEqual([]);
    expect(entry).toMatchObject({ id: 1, key: 'k1', finalized: true });
    expect(entry?.sizeBytes).toBeGreaterThan(0);
  });

  it('restores k1 exactly, byte-identical', async () => {
    const ws = workspace();
    const { value, log } = await client(ws, { op: 'restore', key: 'k1', paths: ['data'] });
    expect(value, log).toBe('k1');
    expect(log).toContain('Cache hit for: k1');
    expect(hashTree(join(ws, 'data'))).toEqual(saved);
  });

  it('restores k1 through the restore-key prefix "k" when k2 misses', async () => {
    const ws = workspace();
    const { value, log } = await client(ws, {
      op: 'restore',
      key: 'k2',
      restoreKeys: ['k'],
      paths: ['data'],
    });
    expect(value, log).toBe('k1');
    expect(log).toContain('Cache hit for restore-key: k1');
    expect(hashTree(join(ws, 'data'))).toEqual(saved);
  });

  it('misses (undefined, nothing written) for an unknown key and prefix', async () => {
    const ws = workspace();
    const { value, log } = await client(ws, {
      op: 'restore',
      key: 'nope',
      restoreKeys: ['x'],
      paths: ['data'],
    });
    expect(value, log).toBeNull();
    expect(readdirSync(ws)).toEqual([]);
  });

  it('misses when the version differs (same key, other paths)', async () => {
    const ws = workspace();
    const { value, log } = await client(ws, { op: 'restore', key: 'k1', paths: ['other'] });
    expect(value, log).toBeNull();
  });

  it('keeps k1 immutable: a second save does not throw and changes nothing', async () => {
    const before = server.entries();
    const ws = workspace();
    writeTree(ws, { 'data/a.txt': 'changed\n' });
    const { value, log } = await client(ws, { op: 'save', key: 'k1', paths: ['data'] });
    expect(value, log).toBe(-1);
    expect(log).toContain('another job may be creating this cache');
    expect(server.entries()).toEqual(before);

    const ws2 = workspace();
    expect((await client(ws2, { op: 'restore', key: 'k1', paths: ['data'] })).value).toBe('k1');
    expect(hashTree(join(ws2, 'data'))).toEqual(saved);
  });

  it('picks the newest entry among restore-key prefix matches', async () => {
    for (const key of ['multi-a', 'multi-b']) {
      const ws = workspace();
      writeTree(ws, { 'data/which': key });
      expect((await client(ws, { op: 'save', key, paths: ['data'] })).value).toBeGreaterThan(0);
    }
    const ws = workspace();
    const { value, log } = await client(ws, {
      op: 'restore',
      key: 'multi-z',
      restoreKeys: ['nomatch-', 'multi-'],
      paths: ['data'],
    });
    expect(value, log).toBe('multi-b');
    expect(readFileSync(join(ws, 'data/which'), 'utf8')).toBe('multi-b');
  });

  it('round-trips a 40 MB random file byte-identical', async () => {
    const ws = workspace();
    writeTree(ws, { 'big/blob.bin': randomBytes(40 * 1024 * 1024), 'big/note.txt': 'large\n' });
    const expected = hashTree(join(ws, 'big'));
    const saveRun = await client(ws, { op: 'save', key: 'big-1', paths: ['big'] });
    expect(saveRun.value, saveRun.log).toBeGreaterThan(0);
    const entry = server.entries().find((e) => e.key === 'big-1');
    expect(entry?.sizeBytes).toBeGreaterThan(40 * 1024 * 1024);

    const ws2 = workspace();
    const restoreRun = await client(ws2, { op: 'restore', key: 'big-1', paths: ['big'] });
    expect(restoreRun.value, restoreRun.log).toBe('big-1');
    expect(hashTree(join(ws2, 'big'))).toEqual(expected);
  });
});

describe('twirp protocol details', () => {
  it('answers errors as twirp JSON with the matching HTTP status', async () => {
    expect(await twirp('GetCacheEntryDownloadURL', { key: 'k', version: 'v' }, 'wrong')).toEqual({
      status: 401,
      body: { code: 'unauthenticated', msg: expect.any(String) },
    });
    expect(await twirp('NoSuchMethod', {})).toMatchObject({ status: 404, body: { code: 'bad_route' } });
    expect(await twirp('CreateCacheEntry', { key: 'k' })).toMatchObject({
      status: 400,
      body: { code: 'invalid_argument' },
    });
    expect(
      await twirp('FinalizeCacheEntryUpload', { key: 'never', version: 'v', size_bytes: '1' }),
    ).toMatchObject({ status: 404, body: { code: 'not_found' } });
    const res = await fetch(`${server.url}/${SERVICE}/CreateCacheEntry`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${server.token}` },
      body: '{not json',
    });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ code: 'malformed' });
  });

  it('rejects a second CreateCacheEntry for the same key and version with already_exists (409)', async () => {
    const first = await twirp('CreateCacheEntry', { key: 'proto-1', version: 'v1' });
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ ok: true, signed_upload_url: expect.stringContaining('sig=') });
    expect(await twirp('CreateCacheEntry', { key: 'proto-1', version: 'v1' })).toMatchObject({
      status: 409,
      body: { code: 'already_exists' },
    });
    // The same key under another version is a different entry.
    expect((await twirp('CreateCacheEntry', { key: 'proto-1', version: 'v2' })).status).toBe(200);
  });

  it('checks the uploaded size at finalize and only serves finalized entries', async () => {
    const created = await twirp('CreateCacheEntry', { key: 'proto-2', version: 'v' });
    const upload = created.body.signed_upload_url as string;
    expect(
      await twirp('FinalizeCacheEntryUpload', { key: 'proto-2', version: 'v', size_bytes: '5' }),
    ).toMatchObject({ status: 412, body: { code: 'failed_precondition' } });
    const put = await fetch(upload, {
      method: 'PUT',
      headers: { 'x-ms-blob-type': 'BlockBlob' },
      body: 'hello',
    });
    expect(put.status).toBe(201);
    // Not finalized yet: a miss, not an error.
    expect(await twirp('GetCacheEntryDownloadURL', { key: 'proto-2', version: 'v' })).toEqual({
      status: 200,
      body: { ok: false },
    });
    expect(
      await twirp('FinalizeCacheEntryUpload', { key: 'proto-2', version: 'v', size_bytes: '4' }),
    ).toMatchObject({ status: 400, body: { code: 'invalid_argument' } });
    expect(
      await twirp('FinalizeCacheEntryUpload', { key: 'proto-2', version: 'v', size_bytes: '5' }),
    ).toEqual({
      status: 200,
      body: { ok: true, entry_id: expect.stringMatching(/^\d+$/) },
    });
    const got = await twirp('GetCacheEntryDownloadURL', { key: 'proto-2', version: 'v' });
    expect(got.body).toMatchObject({ ok: true, matched_key: 'proto-2' });
    const download = got.body.signed_download_url as string;
    expect(await (await fetch(download)).text()).toBe('hello');
    // The download URL is read-only.
    const overwrite = await fetch(download, {
      method: 'PUT',
      headers: { 'x-ms-blob-type': 'BlockBlob' },
      body: 'evil!',
    });
    expect(overwrite.status).toBe(403);
    expect(new URL(download).origin).toBe(new URL(server.azuriteUrl).origin);
  });
});
