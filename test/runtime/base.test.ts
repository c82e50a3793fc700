// Base images: local SIF files and sandbox directories run as given; references are pulled once
// into the content-keyed cache and reused (served here over loopback HTTP: no registry needed).
import { createReadStream } from 'node:fs';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseCacheKey, imageCacheDir, isOverlayError, resolveBase } from '../../packages/core/src/index';
import { ensureBaseImage } from '../helpers/base-image';
import { hasApptainer, isRoot } from '../helpers/tools';
import { overlayctl } from './helpers';

describe.skipIf(!hasApptainer() || !isRoot())('base images', () => {
  let dir: string;
  let base: string;
  let server: Server;
  let url: string;
  let requests = 0;
  beforeAll(async () => {
    base = await ensureBaseImage();
    dir = await mkdtemp('/tmp/overlay-base-');
    server = createServer((req, res) => {
      if (req.method === 'GET') requests++;
      if (req.url !== '/base.sif') {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      createReadStream(base).pipe(res);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/base.sif`;
  });
  afterAll(async () => {
    server.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('takes local SIF files and sandbox directories as they are', async () => {
    expect(await resolveBase(base)).toEqual({ path: base, pulled: false });
    const sandbox = join(dir, 'sandbox');
    await execa('apptainer', ['build', '--sandbox', sandbox, base]);
    expect(await resolveBase(sandbox)).toEqual({ path: sandbox, pulled: false });
    const img = join(dir, 'sb.img');
    await overlayctl(['create', img, '--size', '64']);
    const r = await overlayctl(['exec', img, '--base', sandbox, '--', 'cat', '/opt/lower/file.txt']);
    expect(r.stdout, r.stderr).toContain('lower file');
    await expect(resolveBase(join(dir, 'nope.sif'))).rejects.toMatchObject({ code: 'E_NOT_FOUND' });
    await expect(resolveBase('ftp://example.org/x.sif')).rejects.toMatchObject({ code: 'E_INVALID_INPUT' });
  });

  it('pulls a reference once into the content-keyed cache and reuses it', async () => {
    const cacheDir = join(dir, 'cache');
    const first = await resolveBase(url, { cacheDir });
    expect(first).toEqual({ path: join(cacheDir, `${baseCacheKey(url)}.sif`), reference: url, pulled: true });
    expect((await stat(first.path)).size).toBe((await stat(base)).size);
    expect(requests).toBe(1);
    const again = await resolveBase(url, { cacheDir });
    expect(again).toMatchObject({ path: first.path, pulled: false });
    expect(requests).toBe(1);
    // only the image and its reference note: no temp files left behind
    expect((await readdir(cacheDir)).sort()).toEqual([
      `${baseCacheKey(url)}.sif`,
      `${baseCacheKey(url)}.sif.ref`,
    ]);
  });

  it('exec with a reference uses OVERLAY_CACHE_DIR, and a failed pull leaves nothing', async () => {
    const cacheDir = join(dir, 'env-cache');
    expect(imageCacheDir({ OVERLAY_CACHE_DIR: cacheDir })).toBe(cacheDir);
    expect(imageCacheDir({ XDG_CACHE_HOME: '/x' })).toBe('/x/overlay-action/images');
    const img = join(dir, 'ref.img');
    await overlayctl(['create', img, '--size', '64']);
    const env = { OVERLAY_CACHE_DIR: cacheDir };
    const r = await overlayctl(['exec', img, '--base', url, '--', 'cat', '/etc/lowerdir/a'], { env });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toContain('lower a');
    const bad = `${url.replace('base.sif', 'missing.sif')}`;
    let err: unknown;
    await resolveBase(bad, { cacheDir }).catch((e) => {
      err = e;
    });
    expect(isOverlayError(err, 'E_TOOL_FAILED')).toBe(true);
    expect(
      (await readdir(cacheDir)).filter((f) => f.startsWith(baseCacheKey(bad)) || f.includes('ovtmp')),
    ).toEqual([]);
  });
});
