// `--store oras://HOST/REPO` through the CLI against a real registry (token auth, the Bearer flow):
// hit, restore-key partial, miss, concurrent saves of one key, a corrupted entry, prune, a key no
// tag could spell. The store contract itself runs in test/cache/store-contract.test.ts.
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tagForKey } from '../../packages/core/src/cache/registry-store';
import { RegistryClient } from '../../packages/core/src/registry/client';
import { startRegistry, type TestRegistry } from './registry';

const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
let dir: string;
let img: string;
let reg: TestRegistry;
let store: string;
let env: Record<string, string>;
const sum = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

async function ctl(args: string[]) {
  const r = await execa(CLI, [...args, '--json'], { reject: false, env });
  return { code: r.exitCode, out: JSON.parse(r.stdout.trim().split('\n').at(-1) || '{}'), stderr: r.stderr };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ov-regstore-'));
  img = join(dir, 'env.img');
  await execa(CLI, ['create', img, '--size', '128']);
  writeFileSync(join(dir, 'payload'), 'payload\n'.repeat(10_000));
  await execa('debugfs', ['-w', '-R', `write ${join(dir, 'payload')} /upper/payload`, img]);
  reg = await startRegistry({ auth: 'token' });
  store = `oras://${reg.host}/ci/overlay-cache`;
  env = {
    OVERLAY_REGISTRY_USERNAME: reg.user,
    OVERLAY_REGISTRY_PASSWORD: reg.password,
    HOME: dir,
  };
});
afterAll(async () => {
  await reg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('registry cache store', () => {
  it('hit, restore-key partial, miss; a key of any characters maps to a valid tag', async () => {
    const key = `env-linux-${'x'.repeat(300)}/with spaces:and?odd#chars`;
    const s = await ctl(['cache', 'save', img, '--key', key, '--store', store]);
    expect(s.code, s.stderr).toBe(0);
    expect(s.out).toMatchObject({ saved: true, key });
    expect(tagForKey(key)).toMatch(/^ovc-[0-9a-f]{40}$/);
    const hit = join(dir, 'hit.img');
    const r = await ctl(['cache', 'restore', hit, '--key', key, '--store', store]);
    expect(r.out).toMatchObject({ outcome: 'hit', matchedKey: key });
    expect(sum(hit)).toBe(sum(img));
    const part = join(dir, 'partial.img');
    const p = await ctl([
      'cache',
      'restore',
      part,
      '--key',
      'env-linux-other',
      '--restore-key',
      'env-linux-',
      '--store',
      store,
    ]);
    expect(p.out).toMatchObject({ outcome: 'partial', matchedKey: key });
    expect(sum(part)).toBe(sum(img));
    const m = await ctl([
      'cache',
      'restore',
      join(dir, 'miss.img'),
      '--key',
      'nothing',
      '--restore-key',
      'zz-',
      '--store',
      store,
    ]);
    expect(m.out).toMatchObject({ outcome: 'miss' });
    expect(existsSync(join(dir, 'miss.img'))).toBe(false);
  });

  it('two saves of one key at once both succeed; the loser (if any) is told the entry exists', async () => {
    const key = 'env-concurrent';
    const [a, b] = await Promise.all([
      ctl(['cache', 'save', img, '--key', key, '--store', store]),
      ctl(['cache', 'save', img, '--key', key, '--store', store]),
    ]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    expect([a.out.saved, b.out.saved]).toContain(true);
    for (const r of [a, b]) if (!r.out.saved) expect(r.out.reason).toBe('exists');
    const again = await ctl(['cache', 'save', img, '--key', key, '--store', store]);
    expect(again.out.saved).toBe(false);
    expect(['exists', 'unchanged']).toContain(again.out.reason);
    expect(again.stderr).toMatch(/already exists|unchanged/);
  });

  it('a corrupted entry in the registry is a miss with a warning; the file at the target stays', async () => {
    const key = 'env-corrupt';
    expect((await ctl(['cache', 'save', img, '--key', key, '--store', store])).out.saved).toBe(true);
    // the archive blob of that entry, damaged in the registry's storage
    const c = new RegistryClient(reg.host, 'ci/overlay-cache', {
      env: { OVERLAY_REGISTRY_USERNAME: reg.user, OVERLAY_REGISTRY_PASSWORD: reg.password },
    });
    const manifest = JSON.parse((await c.getManifest(tagForKey(key))).body.toString());
    const data = reg.blobPath(manifest.layers[0].digest);
    const bytes = readFileSync(data);
    bytes.writeUInt8(bytes.readUInt8(bytes.length >> 1) ^ 0xff, bytes.length >> 1);
    writeFileSync(data, bytes);
    const target = join(dir, 'keep.img');
    writeFileSync(target, 'keep me\n');
    const r = await ctl(['cache', 'restore', target, '--key', key, '--store', store, '--force']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.out.outcome).toBe('miss');
    expect(r.stderr).toMatch(/not usable|corrupt|digest/i);
    expect(readFileSync(target, 'utf8')).toBe('keep me\n');
    expect(readdirSync(dir).filter((n) => n.includes('.ovtmp-'))).toEqual([]);
  });

  it('prune says registries prune by their own rules; delete removes one entry; bad credentials are E_AUTH', async () => {
    const p = await ctl(['cache', 'prune', '--store', store, '--max-size', '1G']);
    expect(p.code).toBe(2);
    expect(p.out.error.message).toMatch(/own retention rules/);
    const d = await ctl(['cache', 'delete', 'env-concurrent', '--store', store]);
    expect(d.out).toMatchObject({ deleted: true });
    const r = await ctl([
      'cache',
      'restore',
      join(dir, 'gone.img'),
      '--key',
      'env-concurrent',
      '--store',
      store,
    ]);
    expect(r.out.outcome).toBe('miss');
    const saved = env;
    env = { ...env, OVERLAY_REGISTRY_PASSWORD: 'wrong' };
    try {
      const w = await ctl(['cache', 'save', img, '--key', 'env-x', '--store', store]);
      expect(w.code).toBe(77);
      expect(w.out.error.code).toBe('E_AUTH');
    } finally {
      env = saved;
    }
    // a store spec with a tag, or another scheme, is refused
    expect((await ctl(['cache', 'save', img, '--key', 'k', '--store', `${store}:v1`])).out.error.code).toBe(
      'E_INVALID_INPUT',
    );
    expect((await ctl(['cache', 'save', img, '--key', 'k', '--store', 's3://bucket/x'])).out.error.code).toBe(
      'E_INVALID_INPUT',
    );
  });
});
