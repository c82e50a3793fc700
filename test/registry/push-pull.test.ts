// overlayctl push/pull against a real registry (Debian's docker-registry, distribution 2.8):
// images as chunks (round trip, dedup, updates that move only what changed), layers as SIFs that
// stock `apptainer pull oras://` + `--overlay x.sif:ro` use, credentials, faults, kills.
import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { imageContentDigest } from '../../packages/core/src/cache/pack';
import { HOST } from '../../packages/core/src/fs/atomic';
import { findCredentials, RegistryClient } from '../../packages/core/src/registry/client';
import { ensureBaseImage } from '../helpers/base-image';
import { makeLayer } from '../runtime/helpers';
import { startRegistry, type TestRegistry } from './registry';

const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
let dir: string;
let img: string;
let reg: TestRegistry;
const sum = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

async function ctl(args: string[], env: Record<string, string> = {}) {
  const r = await execa(CLI, [...args, '--json'], {
    reject: false,
    env: { OVERLAY_REGISTRY_ATTEMPTS: '3', ...env },
  });
  return { code: r.exitCode, out: JSON.parse(r.stdout.trim().split('\n').at(-1) || '{}'), stderr: r.stderr };
}

/** Write files into an image's upper/ with debugfs. */
async function addFiles(image: string, files: Record<string, string | Buffer>, subdir: string) {
  const src = mkdtempSync(join(dir, 'src-'));
  const cmds = [`mkdir /upper/${subdir}`];
  for (const [name, content] of Object.entries(files)) {
    writeFileSync(join(src, name), content);
    cmds.push(`write ${join(src, name)} /upper/${subdir}/${name}`);
  }
  await execa('debugfs', ['-w', '-f', '-', image], { input: `${cmds.join('\n')}\n` });
}

const noTemps = (file: string) =>
  readdirSync(join(file, '..')).filter((n) => n.startsWith(`.${file.split('/').at(-1)}.ovtmp-`));

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ov-pushpull-'));
  img = join(dir, 'env.img');
  await execa(CLI, ['create', img, '--size', '512', '--profile', 'small']);
  const files: Record<string, string | Buffer> = {};
  for (let i = 0; i < 200; i++) files[`f${i}`] = `file ${i}\n`.repeat(i);
  files.blob = (await execa('head', ['-c', String(40 * 2 ** 20), '/dev/urandom'], { encoding: 'buffer' }))
    .stdout as unknown as Buffer;
  await addFiles(img, files, 'env');
  reg = await startRegistry();
});
afterAll(async () => {
  await reg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('images', () => {
  let v1Bytes = 0;
  it('round trip: same bytes, same content digest, fsck clean, still sparse; a second push uploads nothing', async () => {
    const ref = `oras://${reg.host}/team/env:v1`;
    reg.resetTraffic();
    const p = await ctl(['push', img, ref]);
    expect(p.code, p.stderr).toBe(0);
    expect(p.out).toMatchObject({ kind: 'image', ref, chunksSkipped: 0 });
    expect(p.out.chunksUploaded).toBe(p.out.chunks);
    expect(p.out.chunks).toBeGreaterThan(3);
    v1Bytes = reg.traffic().up;
    expect(v1Bytes).toBeGreaterThanOrEqual(p.out.bytesUploaded);
    const out = join(dir, 'pulled.img');
    const q = await ctl(['pull', ref, out]);
    expect(q.code, q.stderr).toBe(0);
    expect(q.out).toMatchObject({
      kind: 'image',
      digest: p.out.digest,
      chunksReused: 0,
      sha256: p.out.sha256,
    });
    expect(sum(out)).toBe(sum(img));
    expect(await imageContentDigest(out)).toBe(p.out.sha256);
    expect(await imageContentDigest(img)).toBe(p.out.sha256); // the cache archive's digest too
    expect((await execa('e2fsck', ['-fn', out], { reject: false })).exitCode).toBe(0);
    const used = (await ctl(['info', img])).out.usedBytes;
    expect(statSync(out).blocks * 512).toBeLessThanOrEqual(used * 1.1);
    expect(statSync(out).size).toBe(statSync(img).size);
    // by digest too
    const byDigest = join(dir, 'by-digest.img');
    const d = await ctl(['pull', `oras://${reg.host}/team/env@${p.out.digest}`, byDigest]);
    expect(d.code, d.stderr).toBe(0);
    expect(sum(byDigest)).toBe(sum(img));
    // pushing the same image again (another tag) moves no chunk
    const again = await ctl(['push', img, `oras://${reg.host}/team/env:v1-again`]);
    expect(again.out).toMatchObject({ chunksUploaded: 0, bytesUploaded: 0 });
    expect(again.out.chunksSkipped).toBe(again.out.chunks);
  });

  it('an update pushes and pulls only the chunks that changed', async () => {
    const v2 = join(dir, 'env-v2.img');
    await execa('cp', ['--sparse=always', img, v2]);
    const extra: Record<string, Buffer> = {};
    for (let i = 0; i < 4; i++)
      extra[`lib${i}.so`] = (
        await execa('head', ['-c', String(2 ** 18), '/dev/urandom'], { encoding: 'buffer' })
      ).stdout as unknown as Buffer;
    await addFiles(v2, extra, 'pkg2');
    reg.resetTraffic();
    const p = await ctl(['push', v2, `oras://${reg.host}/team/env:v2`]);
    expect(p.code, p.stderr).toBe(0);
    expect(p.out.chunksSkipped).toBeGreaterThan(0);
    const up = reg.traffic().up;
    expect(up).toBeLessThan(v1Bytes * 0.3); // 1 MiB added to ~41 MB
    // pull v2 over a v1 image: only the changed windows come over the wire
    const target = join(dir, 'update-target.img');
    await execa('cp', ['--sparse=always', img, target]);
    reg.resetTraffic();
    const q = await ctl(['pull', `oras://${reg.host}/team/env:v2`, target]);
    expect(q.code, q.stderr).toBe(0);
    expect(q.out.chunksReused).toBeGreaterThan(0);
    expect(q.out.chunksReused + q.out.chunksDownloaded).toBe(q.out.chunks);
    expect(reg.traffic().down).toBeLessThan(v1Bytes * 0.3);
    expect(sum(target)).toBe(sum(v2));
    expect(noTemps(target)).toEqual([]);
    // a moving tag: windows equal to what the tag held are taken as they were (not even compressed)
    expect((await ctl(['push', img, `oras://${reg.host}/team/env:moving`])).out.chunksUnchanged).toBe(0);
    const moved = await ctl(['push', v2, `oras://${reg.host}/team/env:moving`]);
    expect(moved.code, moved.stderr).toBe(0);
    expect(moved.out.chunksUnchanged).toBeGreaterThan(0);
    expect(moved.out.chunksUnchanged).toBeLessThanOrEqual(moved.out.chunksSkipped);
    expect(moved.out.sha256).toBe(p.out.sha256); // the same image as v2, the same content digest
    const movedOut = join(dir, 'moved.img');
    expect((await ctl(['pull', `oras://${reg.host}/team/env:moving`, movedOut])).code).toBe(0);
    expect(sum(movedOut)).toBe(sum(v2));
  });

  it('a missing tag is E_NOT_FOUND; another kind of artifact is E_WRONG_ARTIFACT; the target is untouched', async () => {
    const target = join(dir, 'keep.img');
    await execa('cp', ['--sparse=always', img, target]);
    const before = sum(target);
    const miss = await ctl(['pull', `oras://${reg.host}/team/env:nope`, target]);
    expect(miss.code).toBe(2);
    expect(miss.out.error.code).toBe('E_NOT_FOUND');
    // an OCI artifact of some other tool
    const c = new RegistryClient(reg.host, 'team/other');
    await c.uploadBlob(Buffer.from('{}'));
    await c.uploadBlob(Buffer.from('hello'));
    const manifest = {
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      artifactType: 'application/vnd.example.thing.v1',
      config: {
        mediaType: 'application/vnd.oci.empty.v1+json',
        digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a',
        size: 2,
      },
      layers: [
        {
          mediaType: 'text/plain',
          digest: `sha256:${createHash('sha256').update('hello').digest('hex')}`,
          size: 5,
        },
      ],
    };
    await c.putManifest('v1', Buffer.from(JSON.stringify(manifest)), manifest.mediaType);
    const wrong = await ctl(['pull', `oras://${reg.host}/team/other:v1`, target]);
    expect(wrong.code).toBe(2);
    expect(wrong.out.error.code).toBe('E_WRONG_ARTIFACT');
    expect(sum(target)).toBe(before);
    // push: not an oras:// reference, no tag
    expect((await ctl(['push', img, `docker://${reg.host}/a:b`])).out.error.code).toBe('E_INVALID_INPUT');
    expect((await ctl(['push', img, `oras://${reg.host}/a`])).out.error.code).toBe('E_INVALID_INPUT');
  });

  it('a corrupted chunk in the registry is E_INTEGRITY and the old image stays', async () => {
    const c = new RegistryClient(reg.host, 'team/env');
    const { body } = await c.getManifest('v1');
    const layers = JSON.parse(body.toString()).layers as Array<{ digest: string; size: number }>;
    const victim = layers.at(-1)!;
    // another repository with its own copy, so corrupting it does not spoil the other tests
    const p = await ctl(['push', img, `oras://${reg.host}/team/corrupt:v1`]);
    expect(p.code).toBe(0);
    const data = reg.blobPath(victim.digest);
    const saved = readFileSync(data);
    const bad = Buffer.from(saved);
    bad.writeUInt8(bad.readUInt8(bad.length >> 1) ^ 0xff, bad.length >> 1);
    writeFileSync(data, bad);
    try {
      const target = join(dir, 'corrupt-target.img');
      writeFileSync(target, 'a good file that must stay\n');
      const r = await ctl(['pull', `oras://${reg.host}/team/corrupt:v1`, target]);
      expect(r.code).toBe(65);
      expect(r.out.error.code).toBe('E_INTEGRITY');
      expect(readFileSync(target, 'utf8')).toBe('a good file that must stay\n');
      expect(noTemps(target)).toEqual([]);
    } finally {
      writeFileSync(data, saved);
    }
  });

  it('5xx answers and a connection cut mid-chunk are retried; a registry that keeps failing is E_REGISTRY', async () => {
    let blobGets = 0;
    reg.fault = (req) => {
      if (req.method !== 'GET' || !req.url!.includes('/blobs/sha256:')) return undefined;
      blobGets++;
      if (blobGets === 1 || blobGets === 2) return { status: 503 };
      if (blobGets === 3) return { cutAfterBytes: 100 };
      return undefined;
    };
    try {
      const out = join(dir, 'flaky.img');
      const r = await ctl(['pull', `oras://${reg.host}/team/env:v1`, out]);
      expect(r.code, r.stderr).toBe(0);
      expect(sum(out)).toBe(sum(img));
      expect(reg.traffic().requests.filter((q) => q.status === 503).length).toBeGreaterThanOrEqual(2);
      // uploads too: the first two blob PUTs answer 503, the push still completes
      let puts = 0;
      reg.fault = (req) =>
        req.method === 'PUT' && req.url!.includes('/blobs/uploads/') && ++puts <= 2
          ? { status: 503 }
          : undefined;
      const up = await ctl(['push', img, `oras://${reg.host}/team/flaky-push:v1`]);
      expect(up.code, up.stderr).toBe(0);
      expect(puts).toBeGreaterThan(2);
      const back = join(dir, 'flaky-push.img');
      reg.fault = undefined;
      expect((await ctl(['pull', `oras://${reg.host}/team/flaky-push:v1`, back])).code).toBe(0);
      expect(sum(back)).toBe(sum(img));
      reg.fault = (req) => (req.url!.includes('/blobs/sha256:') ? { status: 500 } : undefined);
      const target = join(dir, 'never.img');
      const f = await ctl(['pull', `oras://${reg.host}/team/env:v1`, target]);
      expect(f.code).toBe(75);
      expect(f.out.error.code).toBe('E_REGISTRY');
      expect(existsSync(target)).toBe(false);
      expect(noTemps(target)).toEqual([]);
    } finally {
      reg.fault = undefined;
    }
  });

  it('SIGKILL during a pull leaves the old image; the next pull completes and clears the temp file', async () => {
    const target = join(dir, 'killed.img');
    const scratch = mkdtempSync(join(dir, 'tmpdir-'));
    await execa('cp', ['--sparse=always', img, target]);
    const before = sum(target);
    let arrived: () => void = () => {};
    const firstBlob = new Promise<void>((ok) => {
      arrived = ok;
    });
    reg.fault = (req) => {
      if (!req.url!.includes('/blobs/sha256:')) return undefined;
      arrived();
      return { delayMs: 2000 };
    };
    try {
      const child = execa(CLI, ['pull', `oras://${reg.host}/team/env:v2`, target, '--json'], {
        reject: false,
        env: { TMPDIR: scratch },
      });
      await firstBlob;
      child.kill('SIGKILL');
      await child;
      expect(sum(target)).toBe(before);
    } finally {
      reg.fault = undefined;
    }
    // what a run killed while decompressing leaves (a dead pid on this host)
    mkdirSync(join(scratch, `overlayctl-chunks-999999-${HOST}-abc123`));
    const r = await ctl(['pull', `oras://${reg.host}/team/env:v2`, target], { TMPDIR: scratch });
    expect(r.code, r.stderr).toBe(0);
    expect(noTemps(target)).toEqual([]);
    expect(readdirSync(scratch).filter((n) => n.startsWith('overlayctl-'))).toEqual([]); // stale scratch dirs too
  });
});

describe('layers', () => {
  it('a SquashFS layer goes up as a SIF that stock apptainer pulls and mounts; overlayctl pull gives it back byte-identical', async () => {
    const base = await ensureBaseImage();
    const layer = await makeLayer(join(dir, 'layer.sqfs'), {
      '/opt/tool/hello.txt': 'hello from the registry\n',
    });
    const ref = `oras://${reg.host}/team/layer:v1`;
    const p = await ctl(['push', layer, ref]);
    expect(p.code, p.stderr).toBe(0);
    expect(p.out).toMatchObject({ kind: 'layer', chunksUploaded: 1, sha256: sum(layer) });
    const back = join(dir, 'back.sqfs');
    const q = await ctl(['pull', ref, back]);
    expect(q.code, q.stderr).toBe(0);
    expect(q.out.kind).toBe('layer');
    expect(sum(back)).toBe(sum(layer));
    const sif = join(dir, 'x.sif');
    await execa('apptainer', ['pull', sif, ref]);
    const run = await execa('apptainer', [
      'exec',
      '--overlay',
      `${sif}:ro`,
      base,
      'cat',
      '/opt/tool/hello.txt',
    ]);
    expect(run.stdout).toBe('hello from the registry');
    // an image pushed as chunks is not a SIF: apptainer can't use it, and overlayctl says what it is
    const asImage = await ctl(['pull', `oras://${reg.host}/team/layer:v1`, join(dir, 'layer-as.img')]);
    expect(asImage.out.kind).toBe('layer');
  });
});

describe('credentials and auth', () => {
  let basic: TestRegistry;
  let token: TestRegistry;
  let home: string;
  beforeAll(async () => {
    [basic, token] = await Promise.all([
      startRegistry({ auth: 'htpasswd' }),
      startRegistry({ auth: 'token' }),
    ]);
    home = mkdtempSync(join(dir, 'home-'));
  });
  afterAll(async () => {
    await basic?.stop();
    await token?.stop();
  });
  const authJson = (host: string, user: string, password: string) =>
    JSON.stringify({ auths: { [host]: { auth: Buffer.from(`${user}:${password}`).toString('base64') } } });

  it('Basic auth with docker config.json; Apptainer docker-config.json; wrong password; none', async () => {
    const docker = join(home, 'docker');
    mkdirSync(docker, { recursive: true });
    writeFileSync(join(docker, 'config.json'), authJson(`https://${basic.host}`, basic.user, basic.password));
    const env = { HOME: home, DOCKER_CONFIG: docker };
    const ref = `oras://${basic.host}/sec/env:v1`;
    const p = await ctl(['push', img, ref], env);
    expect(p.code, p.stderr).toBe(0);
    // Apptainer's file only
    const appt = join(home, '.apptainer');
    mkdirSync(appt, { recursive: true });
    writeFileSync(join(appt, 'docker-config.json'), authJson(basic.host, basic.user, basic.password));
    const q = await ctl(['pull', ref, join(dir, 'basic.img')], {
      HOME: home,
      DOCKER_CONFIG: join(home, 'none'),
    });
    expect(q.code, q.stderr).toBe(0);
    expect(sum(join(dir, 'basic.img'))).toBe(sum(img));
    writeFileSync(join(docker, 'config.json'), authJson(basic.host, basic.user, 'wrong'));
    const w = await ctl(['pull', ref, join(dir, 'wrong.img')], env);
    expect(w.code).toBe(77);
    expect(w.out.error.code).toBe('E_AUTH');
    expect(existsSync(join(dir, 'wrong.img'))).toBe(false);
    const none = await ctl(['pull', ref, join(dir, 'none.img')], {
      HOME: join(home, 'empty'),
      DOCKER_CONFIG: join(home, 'none'),
    });
    expect(none.out.error.code).toBe('E_AUTH');
    expect(none.out.error.hint).toMatch(/login/);
  });

  it('token auth (Bearer flow) with CI environment variables; wrong password', async () => {
    const ref = `oras://${token.host}/tok/env:v1`;
    const env = {
      HOME: join(home, 'empty'),
      OVERLAY_REGISTRY_USERNAME: token.user,
      OVERLAY_REGISTRY_PASSWORD: token.password,
    };
    const p = await ctl(['push', img, ref], env);
    expect(p.code, p.stderr).toBe(0);
    const q = await ctl(['pull', ref, join(dir, 'token.img')], env);
    expect(q.code, q.stderr).toBe(0);
    expect(sum(join(dir, 'token.img'))).toBe(sum(img));
    const w = await ctl(['pull', ref, join(dir, 'token-wrong.img')], {
      ...env,
      OVERLAY_REGISTRY_PASSWORD: 'nope',
    });
    expect(w.code).toBe(77);
    expect(w.out.error.code).toBe('E_AUTH');
  });
});

describe('transport rules', () => {
  it('cross-repository mount links a blob another repository holds, without uploading it', async () => {
    const a = new RegistryClient(reg.host, 'mount/a');
    const b = new RegistryClient(reg.host, 'mount/b');
    const blob = Buffer.from(`mount me ${Date.now()}`);
    const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}`;
    await a.uploadBlob(blob);
    expect(await b.hasBlob(digest)).toBe(false); // stored, but not linked into b
    reg.resetTraffic();
    expect(await b.mountBlob(digest, 'mount/a')).toBe(true);
    expect(reg.traffic().up).toBe(0);
    expect(await b.hasBlob(digest)).toBe(true);
    expect(await b.getBlob(digest)).toEqual(blob);
  });

  it('credentials: GITHUB_TOKEN only for ghcr.io; docker config keys in every spelling', async () => {
    const empty = mkdtempSync(join(dir, 'nohome-'));
    const base = { HOME: empty, DOCKER_CONFIG: join(empty, 'd') };
    expect(
      await findCredentials('ghcr.io', { ...base, GITHUB_TOKEN: 't0k', GITHUB_ACTOR: 'me' }),
    ).toMatchObject({
      username: 'me',
      password: 't0k',
      source: 'GITHUB_TOKEN',
    });
    expect(await findCredentials('registry.example.org', { ...base, GITHUB_TOKEN: 't0k' })).toBeUndefined();
    mkdirSync(join(empty, 'd'));
    writeFileSync(
      join(empty, 'd', 'config.json'),
      JSON.stringify({
        auths: {
          'https://index.docker.io/v1/': { auth: Buffer.from('hub:pw').toString('base64') },
          'http://registry.example.org:5000/v2/': { username: 'u', password: 'p:with:colons' },
        },
      }),
    );
    expect(await findCredentials('docker.io', base)).toMatchObject({ username: 'hub', password: 'pw' });
    expect(await findCredentials('registry.example.org:5000', base)).toMatchObject({
      username: 'u',
      password: 'p:with:colons',
    });
    // the CI variables win over files
    expect(
      await findCredentials('docker.io', {
        ...base,
        OVERLAY_REGISTRY_USERNAME: 'ci',
        OVERLAY_REGISTRY_PASSWORD: 'x',
      }),
    ).toMatchObject({ username: 'ci' });
  });

  it('plain HTTP only for loopback or when asked', () => {
    expect(new RegistryClient('ghcr.io', 'o/r').base).toBe('https://ghcr.io/v2/o/r/');
    expect(new RegistryClient('10.0.0.5:5000', 'o/r').base).toMatch(/^https:/);
    expect(new RegistryClient('10.0.0.5:5000', 'o/r', { insecure: true }).base).toMatch(/^http:/);
    expect(new RegistryClient('127.0.0.1:5000', 'o/r').base).toMatch(/^http:/);
    expect(new RegistryClient('localhost:5000', 'o/r').base).toMatch(/^http:/);
  });
});
