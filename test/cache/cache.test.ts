import { createHash } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { build } from 'esbuild';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deriveKey } from '../../packages/core/src/cache/key';
import { CACHE_FORMAT_VERSION, imageContentDigest } from '../../packages/core/src/cache/pack';
import { contentDigest } from '../../packages/core/src/fs/sparse';
import { startCacheServer } from '../cache-server/server';

const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
let dir: string;
let img: string;
const sum = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

async function ctl(args: string[]) {
  const r = await execa(CLI, [...args, '--json'], { reject: false });
  return { code: r.exitCode, out: JSON.parse(r.stdout.trim().split('\n').at(-1) || '{}'), stderr: r.stderr };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ov-cache-'));
  img = join(dir, 'env.img');
  await execa(CLI, ['create', img, '--size', '512', '--profile', 'small']);
  // a few thousand files and some incompressible data, written through debugfs
  const src = join(dir, 'src');
  mkdirSync(src);
  for (let i = 0; i < 300; i++) writeFileSync(join(src, `f${i}`), `file ${i}\n`.repeat(i));
  await execa('dd', ['if=/dev/urandom', `of=${join(src, 'blob')}`, 'bs=1M', 'count=20']);
  const cmds = [
    'mkdir /upper/opt',
    'mkdir /upper/opt/env',
    ...readdirSync(src).map((n) => `write ${join(src, n)} /upper/opt/env/${n}`),
  ];
  await execa('debugfs', ['-w', '-f', '-', img], { input: `${cmds.join('\n')}\n` });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('local store round trip', () => {
  it('sparse in, sparse out, byte-identical, fsck clean; save of an unchanged image is a no-op', async () => {
    const store = join(dir, 'store');
    const s = await ctl(['cache', 'save', img, '--key', 'env-a', '--store', store]);
    expect(s.out.saved).toBe(true);
    const out = join(dir, 'restored.img');
    const r = await ctl(['cache', 'restore', out, '--key', 'env-a', '--store', store]);
    expect(r.out.outcome).toBe('hit');
    expect(sum(out)).toBe(sum(img));
    const used = (await ctl(['info', img])).out.usedBytes;
    expect(statSync(out).blocks * 512).toBeLessThanOrEqual(used * 1.1);
    expect(statSync(out).size).toBe(statSync(img).size);
    expect((await execa('e2fsck', ['-fn', out], { reject: false })).exitCode).toBe(0);
    expect((await ctl(['cache', 'save', out, '--key', 'env-b', '--store', store])).out.reason).toBe(
      'unchanged',
    );
    expect((await ctl(['cache', 'save', img, '--key', 'env-a', '--store', store])).out.saved).toBe(false);
  });

  it('restore-key prefix gives a partial hit; unknown keys miss', async () => {
    const store = join(dir, 'store2');
    await ctl(['cache', 'save', img, '--key', 'env-linux-1111', '--store', store]);
    const out = join(dir, 'partial.img');
    const r = await ctl([
      'cache',
      'restore',
      out,
      '--key',
      'env-linux-2222',
      '--restore-key',
      'env-linux-',
      '--store',
      store,
    ]);
    expect(r.out).toMatchObject({ outcome: 'partial', matchedKey: 'env-linux-1111' });
    const m = await ctl([
      'cache',
      'restore',
      join(dir, 'miss.img'),
      '--key',
      'nope',
      '--restore-key',
      'zzz',
      '--store',
      store,
    ]);
    expect(m.out.outcome).toBe('miss');
    expect(existsSync(join(dir, 'miss.img'))).toBe(false);
  });

  it('corrupt, truncated and foreign archives are a miss with a warning, and never touch a good image', async () => {
    for (const damage of ['truncate', 'corrupt', 'foreign'] as const) {
      const store = join(dir, `store-${damage}`);
      await ctl(['cache', 'save', img, '--key', 'k', '--store', store]);
      const archive = readdirSync(store).find((n) => n.endsWith('.ovc.zst'))!;
      const path = join(store, archive);
      if (damage === 'truncate') writeFileSync(path, readFileSync(path).subarray(0, 50_000));
      if (damage === 'corrupt') {
        const b = readFileSync(path);
        for (let i = 4096; i < b.length; i += 9973) b[i] = b[i]! ^ 0xff;
        writeFileSync(path, b);
      }
      if (damage === 'foreign') {
        writeFileSync(join(dir, 'evil'), 'x');
        await execa('tar', ['--zstd', '-cf', path, '-C', dir, 'evil', '--transform=s,^,../,']);
      }
      const good = join(dir, `good-${damage}.img`);
      copyFileSync(img, good);
      const before = sum(good);
      const r = await ctl(['cache', 'restore', good, '--key', 'k', '--store', store]);
      expect(r.out.outcome, damage).toBe('miss');
      expect(r.out.warnings.length, damage).toBeGreaterThan(0);
      expect(sum(good)).toBe(before);
      expect(existsSync(join(dirname(dir), 'evil'))).toBe(false);
      expect(readdirSync(dir).filter((n) => n.includes('.ovtmp-'))).toEqual([]);
    }
  });

  it('crafted archives (records out of bounds or out of order, a lying digest, trailing bytes) are a miss', async () => {
    // the archive layout, written by hand: MAGIC, u32+header JSON, records (u64 offset, u32 length,
    // bytes), END record, u32+trailer JSON, all in one zstd stream
    const json = (o: object) => {
      const body = Buffer.from(JSON.stringify(o));
      const len = Buffer.alloc(4);
      len.writeUInt32BE(body.length);
      return Buffer.concat([len, body]);
    };
    const rec = (offset: bigint, data: Buffer) => {
      const h = Buffer.alloc(12);
      h.writeBigUInt64BE(offset);
      h.writeUInt32BE(data.length, 8);
      return Buffer.concat([h, data]);
    };
    const header = json({
      formatVersion: CACHE_FORMAT_VERSION,
      imageName: 'x.img',
      sizeBytes: 1 << 20,
      fsUuid: '',
      tools: {},
      created: '',
    });
    const block = Buffer.alloc(4096, 7);
    const end = rec(0xffff_ffff_ffff_ffffn, Buffer.alloc(0));
    const trailer = json({ sha256: '0'.repeat(64), dataBytes: 4096 });
    const magic = Buffer.from('OVERLAY-ACTION-CACHE\n');
    const cases: Record<string, Buffer> = {
      'beyond the image size': Buffer.concat([magic, header, rec(BigInt(1 << 20), block), end, trailer]),
      'not block aligned': Buffer.concat([magic, header, rec(100n, block), end, trailer]),
      'out of order': Buffer.concat([
        magic,
        header,
        rec(8192n, block),
        rec(0n, block),
        end,
        json({ sha256: '0'.repeat(64), dataBytes: 8192 }),
      ]),
      'digest mismatch': Buffer.concat([magic, header, rec(0n, block), end, trailer]),
      'trailing bytes': Buffer.concat([magic, header, rec(0n, block), end, trailer, Buffer.from('x')]),
      'no end record': Buffer.concat([magic, header, rec(0n, block)]),
    };
    const store = join(dir, 'store-crafted');
    await ctl(['cache', 'save', img, '--key', 'k', '--store', store]);
    const archive = join(store, readdirSync(store).find((n) => n.endsWith('.ovc.zst'))!);
    for (const [name, bytes] of Object.entries(cases)) {
      writeFileSync(join(dir, 'crafted.raw'), bytes);
      await execa('zstd', ['-q', '-f', join(dir, 'crafted.raw'), '-o', archive]);
      const good = join(dir, 'good-crafted.img');
      writeFileSync(good, 'the image already here');
      const r = await ctl(['cache', 'restore', good, '--key', 'k', '--store', store]);
      expect(r.out.outcome, name).toBe('miss');
      expect(r.out.warnings.join(' '), name).toMatch(/corrupt|mismatch|trailing|truncated/);
      expect(readFileSync(good, 'utf8'), name).toBe('the image already here');
      expect(readdirSync(dir).filter((n) => n.includes('.ovtmp-'))).toEqual([]);
    }
  });

  it('save-if-changed: untouched is a no-op without reading, touched-but-same is a no-op, a real change saves', async () => {
    const store = join(dir, 'store-changed');
    await ctl(['cache', 'save', img, '--key', 'base', '--store', store]);
    const copy = join(dir, 'changed.img');
    await ctl(['cache', 'restore', copy, '--key', 'base', '--store', store]);
    expect((await ctl(['cache', 'save', copy, '--key', 'next', '--store', store])).out.reason).toBe(
      'unchanged',
    );
    await execa('touch', [copy]); // new mtime, same content: the digest decides
    expect((await ctl(['cache', 'save', copy, '--key', 'next', '--store', store])).out.reason).toBe(
      'unchanged',
    );
    await execa('debugfs', ['-w', '-R', 'write /etc/hostname /upper/new-file', copy]);
    const s = await ctl(['cache', 'save', copy, '--key', 'next', '--store', store]);
    expect(s.out.saved).toBe(true);
    expect(s.out.sha256).toBe(await imageContentDigest(copy));
  });

  it('concurrent saves and restores on one store: one entry, every restore complete', async () => {
    const store = join(dir, 'store-conc');
    const saves = Array.from({ length: 4 }, () =>
      execa(CLI, ['cache', 'save', img, '--key', 'same', '--store', store, '--json']),
    );
    const results = (await Promise.all(saves)).map((r) => JSON.parse(r.stdout));
    expect(results.filter((r) => r.saved)).toHaveLength(1);
    expect(readdirSync(store).filter((n) => n.endsWith('.json'))).toHaveLength(1);
    const restores = Array.from({ length: 4 }, (_, i) =>
      execa(CLI, ['cache', 'restore', join(dir, `c${i}.img`), '--key', 'same', '--store', store, '--json']),
    );
    for (const r of await Promise.all(restores)) expect(JSON.parse(r.stdout).outcome).toBe('hit');
    for (let i = 0; i < 4; i++) expect(sum(join(dir, `c${i}.img`))).toBe(sum(img));
  });

  it('prune keeps the store under budget, least recently used first', async () => {
    const store = join(dir, 'store-prune');
    for (const k of ['p1', 'p2', 'p3']) {
      const copy = join(dir, `${k}.img`);
      copyFileSync(img, copy);
      await execa('debugfs', ['-w', '-R', `write /etc/hostname /upper/${k}`, copy]);
      await ctl(['cache', 'save', copy, '--key', k, '--store', store]);
    }
    await ctl(['cache', 'restore', join(dir, 'touch.img'), '--key', 'p1', '--store', store]); // p1 is now recent
    const r = await ctl(['cache', 'prune', '--store', store, '--max-size', '40M']);
    expect(r.out.removed).toContain('p2');
    expect(r.out.removed).not.toContain('p1');
  });
});

describe('keys', () => {
  it('derive from files and options, stay within GitHub limits, fall back by prefix', async () => {
    writeFileSync(join(dir, 'environment.yml'), 'dependencies: [python]\n');
    const a = await deriveKey({
      prefix: 'conda',
      files: ['environment.yml'],
      cwd: dir,
      options: { size: 1, profile: 'small' },
    });
    writeFileSync(join(dir, 'environment.yml'), 'dependencies: [python, numpy]\n');
    const b = await deriveKey({
      prefix: 'conda',
      files: ['environment.yml'],
      cwd: dir,
      options: { size: 1, profile: 'small' },
    });
    const c = await deriveKey({
      prefix: 'conda',
      files: ['environment.yml'],
      cwd: dir,
      options: { size: 2, profile: 'small' },
    });
    expect(a.key).not.toBe(b.key);
    expect(b.key.startsWith(a.restoreKeys[0]!)).toBe(true); // same options: partial hit
    expect(c.key.startsWith(a.restoreKeys[0]!)).toBe(false);
    expect(c.key.startsWith(a.restoreKeys[1]!)).toBe(true);
    for (const k of [a, b, c]) expect(k.key.length <= 512 && !k.key.includes(',')).toBe(true);
    await expect(
      deriveKey({ prefix: 'x', files: ['nothing-*.yml'], cwd: dir, options: {} }),
    ).rejects.toMatchObject({
      code: 'E_NOT_FOUND',
    });
  });

  it('the content digest ignores how sparse a copy is', async () => {
    const dense = join(dir, 'dense.img');
    await execa('cp', ['--sparse=never', img, dense]);
    expect(await contentDigest(dense)).toBe(await contentDigest(img));
  });
});

describe('GitHub Actions cache store (real @actions/cache against a v2 server + azurite)', () => {
  let server: Awaited<ReturnType<typeof startCacheServer>>;
  let entry: string;
  beforeAll(async () => {
    server = await startCacheServer();
    entry = join(dir, 'gh-store.mjs');
    await build({
      entryPoints: [join(import.meta.dirname, 'fixtures-github-store.ts')],
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      outfile: entry,
      external: ['koffi'],
      banner: {
        js: "import { createRequire as __r } from 'node:module'; const require = __r(import.meta.url);",
      },
      logLevel: 'error',
    });
    const req = createRequire(join(import.meta.dirname, '../../packages/core/package.json'));
    copyFileSync(
      join(dirname(req.resolve('@koromix/koffi-linux-x64/package.json')), 'linux_x64/koffi.node'),
      join(dir, 'koffi.node'),
    );
  });
  afterAll(async () => server?.stop());

  const gh = async (args: string[]) => {
    const r = await execa(process.execPath, [entry, ...args], {
      env: { ...server.env, RUNNER_TEMP: join(dir, 'runner-temp') },
      reject: false,
    });
    const line = r.stdout.split('\n').find((l) => l.startsWith('RESULT '));
    expect(line, r.stderr + r.stdout).toBeDefined();
    return JSON.parse(line!.slice(7));
  };

  it('saves, hits, falls back to a restore-key, misses, and treats a second save as "exists"', async () => {
    expect((await gh(['save', 'gh-env-1', img])).saved).toBe(true);
    const out = join(dir, 'gh.img');
    expect(await gh(['restore', 'gh-env-1', out])).toMatchObject({ outcome: 'hit', matchedKey: 'gh-env-1' });
    expect(sum(out)).toBe(sum(img));
    expect(await gh(['restore', 'gh-env-2', join(dir, 'gh2.img'), 'gh-env-'])).toMatchObject({
      outcome: 'partial',
    });
    expect((await gh(['restore', 'other', join(dir, 'gh3.img')])).outcome).toBe('miss');
    expect(await gh(['save', 'gh-env-1', img])).toMatchObject({ saved: false, reason: 'exists' });
  });
});
