// The pulled base image is cached in the Actions cache too, keyed by its reference and the digest
// the registry gives for it now, and its path is the `base` output. A real registry (Debian's
// docker-registry) serves the base as an ORAS SIF; its access log shows whether it was pulled.
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseReference } from '../../packages/actions/src/base-cache';
import { startCacheServer } from '../cache-server/server';
import { ensureBaseImage } from '../helpers/base-image';
import { apptainerCommand, findOnPath, hasApptainer } from '../helpers/tools';
import { type Job, newJob, runAction } from './harness';

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

describe.skipIf(!hasApptainer() || !findOnPath('docker-registry'))(
  'the base image in the Actions cache',
  () => {
    let dir: string;
    let registry: ChildProcess;
    let log: string;
    let ref: string;
    let server: Awaited<ReturnType<typeof startCacheServer>>;
    const jobs: Job[] = [];
    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), 'ov-base-cache-'));
      const port = await freePort();
      writeFileSync(
        join(dir, 'config.yml'),
        `version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: ${dir}/data\nhttp:\n  addr: 127.0.0.1:${port}\nlog:\n  level: info\n`,
      );
      log = join(dir, 'registry.log');
      registry = spawn('docker-registry', ['serve', join(dir, 'config.yml')], {
        stdio: ['ignore', 'ignore', (await import('node:fs')).openSync(log, 'a')],
      });
      for (let i = 0; i < 50 && !/listening/.test(existsSync(log) ? readFileSync(log, 'utf8') : ''); i++)
        await new Promise((r) => setTimeout(r, 200));
      ref = `oras://127.0.0.1:${port}/ovtest/base:1`;
      await execa(apptainerCommand()!, ['push', await ensureBaseImage(), ref]);
      server = await startCacheServer();
    }, 300_000);
    afterAll(async () => {
      registry?.kill();
      await server?.stop();
      for (const j of jobs) rmSync(j.root, { recursive: true, force: true });
      rmSync(dir, { recursive: true, force: true });
    });

    const blobGets = () =>
      (
        readFileSync(log, 'utf8').match(/method=GET \S+ http\.request\.uri="?\/v2\/ovtest\/base\/blobs\//g) ??
        []
      ).length;
    const run = async (prefix: string) => {
      const j = await newJob();
      jobs.push(j);
      // a fresh runner: nothing pulled yet, at the same path (HOME is the same on every hosted runner,
      // and @actions/cache versions an entry by its paths)
      const xdg = join(dir, 'xdg');
      rmSync(xdg, { recursive: true, force: true });
      const r = await runAction(
        'setup-overlay',
        j,
        { path: 'env.img', size: '64M', base: ref, build: 'true', 'cache-key': prefix },
        { env: { ...server.env, XDG_CACHE_HOME: xdg } },
      );
      return { j, xdg, ...r };
    };

    it('first job pulls it and post caches it; the next job restores it instead of pulling', async () => {
      const prefix = `base-${randomBytes(3).toString('hex')}`;
      const before = blobGets();
      const first = await run(prefix);
      expect(first.main.exitCode, first.main.stdout + first.main.stderr).toBe(0);
      const sif = join(
        first.xdg,
        'overlay-action/images',
        `${createHash('sha256').update(ref).digest('hex')}.sif`,
      );
      expect(first.main.outputs.base).toBe(sif);
      expect(blobGets()).toBeGreaterThan(before);
      expect(first.post?.exitCode, first.post?.stdout).toBe(0);
      expect(first.post!.stdout).toMatch(
        /base image saved to the Actions cache as overlay-base-.*-sha256-[0-9a-f]{64}/,
      );
      expect(server.entries().filter((e) => e.key.startsWith('overlay-base-') && e.finalized)).toHaveLength(
        1,
      );

      const pulls = blobGets();
      const second = await run(prefix);
      expect(second.main.exitCode, second.main.stdout).toBe(0);
      expect(second.main.stdout).toMatch(/restored from the Actions cache/);
      expect(second.main.outputs['cache-hit']).toBe('true');
      expect(existsSync(second.main.outputs.base!)).toBe(true);
      expect(blobGets()).toBe(pulls); // not pulled again
      expect(second.post!.stdout).not.toMatch(/base image saved/);
    });
  },
);

describe('base references', () => {
  it('name a registry, repository and tag or digest the way docker and apptainer read them', () => {
    expect(parseReference('docker://mambaorg/micromamba:2')).toEqual({
      host: 'registry-1.docker.io',
      repo: 'mambaorg/micromamba',
      tag: '2',
    });
    expect(parseReference('docker://debian')).toEqual({
      host: 'registry-1.docker.io',
      repo: 'library/debian',
      tag: 'latest',
    });
    expect(parseReference('docker://ghcr.io/org/img@sha256:abc')).toEqual({
      host: 'ghcr.io',
      repo: 'org/img',
      tag: 'sha256:abc',
    });
    expect(parseReference('oras://localhost:5000/a/b:1')).toEqual({
      host: 'localhost:5000',
      repo: 'a/b',
      tag: '1',
    });
    expect(parseReference('oras://nohost')).toBeNull();
    expect(parseReference('/srv/base.sif')).toBeNull();
  });
});
