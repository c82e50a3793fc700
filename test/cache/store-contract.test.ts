// The contract every cache store keeps (describe.each over the stores): a store moves archive
// bytes and matches keys; the core packs and verifies. The GitHub Actions cache runs as the real
// @actions/cache client against test/cache-server (a v2 cache service over azurite).
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CacheServer, startCacheServer } from '../cache-server/server';
import { startRegistry } from '../registry/registry';
import { bundleStoreFixture, callStore } from './store-fixture';

const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
const sum = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

interface OpenedStore {
  spec: string;
  env: Record<string, string>;
  /** The store can delete (and so replace) an entry from where the job runs. */
  canDelete: boolean;
  /** Files the store left in places that are not its own (the user's workspace). */
  leftovers(): string[];
  stop(): Promise<void>;
}

interface StoreUnderTest {
  name: string;
  open(dir: string): Promise<OpenedStore>;
}

const STORES: StoreUnderTest[] = [
  {
    name: 'a directory store',
    async open(dir) {
      const spec = join(dir, 'store');
      return {
        spec,
        env: {},
        canDelete: true,
        leftovers: () => (existsSync(spec) ? readdirSync(spec).filter((n) => n.includes('.ovtmp-')) : []),
        stop: async () => {},
      };
    },
  },
  {
    name: 'the GitHub Actions cache (@actions/cache against test/cache-server)',
    async open(dir) {
      const server = await startCacheServer();
      const workspace = join(dir, 'workspace');
      mkdirSync(workspace);
      return {
        spec: 'github',
        env: { ...server.env, GITHUB_WORKSPACE: workspace, RUNNER_TEMP: join(dir, 'runner-temp') },
        canDelete: false,
        leftovers: () => readdirSync(workspace),
        stop: () => server.stop(),
      };
    },
  },
  {
    name: 'an OCI registry (docker-registry 2.8, htpasswd auth)',
    async open(dir) {
      const reg = await startRegistry({ auth: 'htpasswd' });
      const tmp = join(dir, 'tmp');
      mkdirSync(tmp);
      return {
        spec: `oras://${reg.host}/ci/cache`,
        env: {
          OVERLAY_REGISTRY_USERNAME: reg.user,
          OVERLAY_REGISTRY_PASSWORD: reg.password,
          TMPDIR: tmp,
          PATH: process.env.PATH ?? '',
        },
        canDelete: true,
        leftovers: () => readdirSync(tmp),
        stop: () => reg.stop(),
      };
    },
  },
];

let dir: string;
let entry: string;
let img: string;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ov-contract-'));
  entry = await bundleStoreFixture(dir);
  img = join(dir, 'env.img');
  await execa(CLI, ['create', img, '--size', '64']);
  await execa('debugfs', ['-w', '-R', 'write /etc/hostname /upper/hello', img]);
}, 120_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.each(STORES)('cache store contract: $name', (s) => {
  let store: OpenedStore;
  let sub: string;
  const call = (op: Record<string, unknown>) => callStore(entry, store.spec, op, store.env);
  const file = (name: string, text: string) => {
    const p = join(sub, name);
    writeFileSync(p, text);
    return p;
  };
  beforeAll(async () => {
    sub = mkdtempSync(join(dir, 'store-'));
    store = await s.open(sub);
  }, 120_000);
  afterAll(async () => store?.stop());

  it('put publishes an entry: has() sees it, an exact fetch hands over the same bytes', async () => {
    const a = file('a1', 'archive one');
    expect((await call({ op: 'has', key: 'c-exact' })).value).toBe(false);
    expect((await call({ op: 'put', key: 'c-exact', from: a })).value).toMatchObject({ status: 'saved' });
    expect((await call({ op: 'has', key: 'c-exact' })).value).toBe(true);
    const to = join(sub, 'got');
    expect((await call({ op: 'fetch', primary: 'c-exact', to })).value).toMatchObject({ key: 'c-exact' });
    expect(readFileSync(to, 'utf8')).toBe('archive one');
    expect(store.leftovers()).toEqual([]);
  });

  it('entries are immutable: a second put under the key is `exists` and the first bytes stay', async () => {
    const b = file('b', 'archive two');
    expect((await call({ op: 'put', key: 'c-exact', from: b })).value).toEqual({ status: 'exists' });
    const to = join(sub, 'got2');
    await call({ op: 'fetch', primary: 'c-exact', to });
    expect(readFileSync(to, 'utf8')).toBe('archive one');
  });

  it('matching: the exact key first, else the newest entry of the first prefix that matches; else null', async () => {
    await call({ op: 'put', key: 'c-pre-1', from: file('p1', 'p1') });
    await new Promise((r) => setTimeout(r, 20)); // distinct creation times
    await call({ op: 'put', key: 'c-pre-2', from: file('p2', 'p2') });
    const to = join(sub, 'got3');
    const fetched = await call({ op: 'fetch', primary: 'c-none', restoreKeys: ['zz-', 'c-pre-'], to });
    expect(fetched.value).toMatchObject({ key: 'c-pre-2' });
    expect(readFileSync(to, 'utf8')).toBe('p2');
    expect((await call({ op: 'fetch', primary: 'c-none', restoreKeys: ['zz-'], to })).value).toBeNull();
    expect(store.leftovers()).toEqual([]);
  });

  it('a failing writer or reader stores nothing and leaves nothing behind', async () => {
    const w = await call({ op: 'put', key: 'c-fail', from: file('f', 'x'), failWrite: true });
    expect(w.error?.message).toMatch(/injected/);
    expect((await call({ op: 'has', key: 'c-fail' })).value).toBe(false);
    const r = await call({ op: 'fetch', primary: 'c-exact', to: join(sub, 'nope'), failUse: true });
    expect(r.error?.message).toMatch(/injected/);
    expect(store.leftovers()).toEqual([]);
  });

  it('delete removes an entry, or says how to when the store cannot from here', async () => {
    const d = await call({ op: 'delete', key: 'c-pre-1' });
    if (store.canDelete) {
      expect(d.value).toBe(true);
      expect((await call({ op: 'has', key: 'c-pre-1' })).value).toBe(false);
      expect(
        (await call({ op: 'put', key: 'c-exact', from: file('r', 'new'), replace: true })).value,
      ).toMatchObject({
        status: 'saved',
      });
    } else {
      expect(d.error).toMatchObject({ code: 'E_CACHE' });
      expect(d.error?.hint).toMatch(/gh cache delete c-pre-1/);
    }
  });

  it('through the core: save + restore of an image is byte-identical; a truncated image never reaches the store', async () => {
    expect((await call({ op: 'save', key: 'c-img', image: img })).value).toMatchObject({ saved: true });
    const out = join(sub, 'restored.img');
    expect((await call({ op: 'restore', primary: 'c-img', image: out })).value).toMatchObject({
      outcome: 'hit',
      matchedKey: 'c-img',
    });
    expect(sum(out)).toBe(sum(img));
    const cut = join(sub, 'cut.img');
    writeFileSync(cut, readFileSync(img).subarray(0, 16 * 2 ** 20));
    const bad = await call({ op: 'save', key: 'c-cut', image: cut });
    expect(bad.error).toMatchObject({ code: 'E_TRUNCATED' });
    expect(bad.error?.message).toMatch(/truncated/);
    expect((await call({ op: 'has', key: 'c-cut' })).value).toBe(false);
    expect(store.leftovers()).toEqual([]);
  });
});

describe('the GitHub Actions cache as GitHub runs it today', () => {
  let server: CacheServer;
  let env: Record<string, string>;
  let workspace: string;
  const call = (op: Record<string, unknown>) => callStore(entry, 'github', op, env);
  beforeAll(async () => {
    server = await startCacheServer();
    workspace = mkdtempSync(join(dir, 'ws-'));
    env = { ...server.env, GITHUB_WORKSPACE: workspace, RUNNER_TEMP: join(dir, 'runner-temp-gh') };
  }, 120_000);
  afterAll(async () => server?.stop());

  it('a download that breaks mid-way is a miss with a reason, and leaves nothing in the workspace', async () => {
    expect((await call({ op: 'save', key: 'g-trunc', image: img })).value).toMatchObject({ saved: true });
    server.setFaults({ download: 'truncate' });
    const out = join(dir, 'g-trunc.img');
    const r = await call({ op: 'restore', primary: 'g-trunc', image: out });
    server.setFaults({});
    expect(r.value).toMatchObject({ outcome: 'miss' });
    expect(r.stdout).toMatch(/^::warning::cache restore failed: .*Failed to restore/m);
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(workspace)).toEqual([]);
    // a clean miss leaves nothing either
    expect((await call({ op: 'restore', primary: 'g-none', image: out })).value).toMatchObject({
      outcome: 'miss',
    });
    expect(readdirSync(workspace)).toEqual([]);
  });

  it('a read-only token and a throttled service refuse the save: a reason, no warning, no failure', async () => {
    for (const [fault, why] of [
      ['write-denied', /read-only/],
      ['throttled', /429/],
    ] as const) {
      server.setFaults({ createEntry: fault });
      const r = await call({ op: 'save', key: `g-${fault}`, image: img });
      server.setFaults({});
      expect(r.value, fault).toMatchObject({ saved: false, reason: 'refused' });
      expect((r.value as { message: string }).message, fault).toMatch(why);
      expect(r.stdout, fault).not.toMatch(/^::(warning|error)/m);
      expect(readdirSync(workspace)).toEqual([]);
    }
  });

  it('a failed upload is an E_CACHE error, not `exists`; a real existing entry is `exists`', async () => {
    server.setFaults({ finalize: 'fail' });
    const r = await call({ op: 'save', key: 'g-upload', image: img });
    server.setFaults({});
    expect(r.error).toMatchObject({ code: 'E_CACHE' });
    expect(r.error?.message).toMatch(/not accepted/);
    const copy = join(dir, 'g-copy.img'); // no restore record: the store itself answers
    copyFileSync(img, copy);
    expect((await call({ op: 'save', key: 'g-trunc', image: copy })).value).toMatchObject({
      saved: false,
      reason: 'exists',
    });
    expect(readdirSync(workspace)).toEqual([]);
  });
});
