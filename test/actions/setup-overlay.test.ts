// setup-overlay as the runner runs it, against a real cache backend: the GitHub Actions cache
// (the v2 cache service from test/cache-server, through @actions/cache) and a local `store:`.
// miss → build → post saves; exact hit → no build, no save; changed key-files → restore-key
// partial hit, the build runs again on the restored image, post saves the new key.
import { randomBytes } from 'node:crypto';
import { chownSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCacheServer } from '../cache-server/server';
import { ensureBaseImage } from '../helpers/base-image';
import { hasApptainer, isRoot } from '../helpers/tools';
import { ensureTestUser, type TestUser } from '../helpers/users';
import { startRegistry } from '../registry/registry';
import { zeroInodeTable } from './corrupt';
import { type ActionRun, type Job, newJob, runAction } from './harness';

/** Text of a file inside the image's upper/ (debugfs, no mount), '' when absent. */
async function readInImage(image: string, path: string): Promise<string> {
  const r = await execa('debugfs', ['-R', `cat /upper${path}`, image], {
    reject: false,
    stripFinalNewline: false,
  });
  return r.exitCode === 0 ? String(r.stdout) : '';
}

const BUILD = 'mkdir -p /opt/app && echo run >> /opt/app/log';

interface Backend {
  name: string;
  start(): Promise<{ inputs: Record<string, string>; env: Record<string, string>; stop(): Promise<void> }>;
}

const backends: Backend[] = [
  {
    name: 'the Actions cache (v2 cache service)',
    async start() {
      const server = await startCacheServer();
      return { inputs: {}, env: server.env, stop: async () => server.stop() };
    },
  },
  {
    name: 'a local store',
    async start() {
      const dir = mkdtempSync(join(tmpdir(), 'ov-store-'));
      return {
        inputs: { store: join(dir, 'store') },
        env: {},
        stop: async () => rmSync(dir, { recursive: true, force: true }),
      };
    },
  },
  {
    name: 'a registry store (oras://, token auth)',
    async start() {
      const reg = await startRegistry({ auth: 'token' });
      return {
        inputs: { store: `oras://${reg.host}/ci/overlay-cache` },
        env: { OVERLAY_REGISTRY_USERNAME: reg.user, OVERLAY_REGISTRY_PASSWORD: reg.password },
        stop: () => reg.stop(),
      };
    },
  },
];

describe.skipIf(!hasApptainer())('setup-overlay', () => {
  let base: string;
  beforeAll(async () => {
    base = await ensureBaseImage();
  });

  for (const backend of backends) {
    describe(`with ${backend.name}`, () => {
      let backendEnv: Record<string, string>;
      let backendInputs: Record<string, string>;
      let stop: () => Promise<void>;
      const jobs: Job[] = [];
      const prefix = `ovtest-${randomBytes(4).toString('hex')}`;
      let firstKey = '';

      beforeAll(async () => {
        const b = await backend.start();
        backendEnv = b.env;
        backendInputs = b.inputs;
        stop = b.stop;
      });
      afterAll(async () => {
        await stop?.();
        for (const j of jobs) rmSync(j.root, { recursive: true, force: true });
      });

      async function job(environment: string): Promise<Job> {
        const j = await newJob();
        jobs.push(j);
        writeFileSync(join(j.workspace, 'environment.yml'), environment);
        return j;
      }

      const run = (
        j: Job,
        extra: Record<string, string> = {},
        between?: (j: Job) => Promise<void>,
      ): Promise<ActionRun> =>
        runAction(
          'setup-overlay',
          j,
          {
            path: 'env.img',
            size: '96M',
            profile: 'small',
            'create-dirs': '/opt/app',
            base,
            build: BUILD,
            'key-files': 'environment.yml',
            'cache-key': prefix,
            'restore-keys': `${prefix}-`,
            ...backendInputs,
            ...extra,
          },
          { env: backendEnv, between },
        );

      it('first run: a miss, the build runs, the post step saves', async () => {
        const j = await job('name: test\ndependencies: [python=3.12]\n');
        const { main, post } = await run(j);
        expect(main.exitCode, main.stdout + main.stderr).toBe(0);
        expect(main.outputs['cache-hit']).toBe('false');
        expect(main.outputs['cache-matched-key']).toBe('');
        expect(main.outputs['cache-key']).toMatch(new RegExp(`^${prefix}-`));
        expect(main.outputs.path).toBe('env.img');
        expect(Number(main.outputs['size-bytes'])).toBe(96 * 1024 * 1024);
        expect(Number(main.outputs['used-bytes'])).toBeGreaterThan(0);
        expect(Number(main.outputs['inodes-used-percent'])).toBeGreaterThan(0);
        expect(main.groups.some((g) => g.startsWith('Build'))).toBe(true);
        expect(main.state.isPost).toBe('true');
        expect(JSON.parse(main.state.SETUP_OVERLAY!).key).toBe(main.outputs['cache-key']);
        expect(main.summary).toContain('<table>');
        expect(main.summary).toMatch(/created, built/);
        expect(await readInImage(join(j.workspace, 'env.img'), '/opt/app/log')).toBe('run\n');

        expect(post, 'post step').toBeDefined();
        expect(post!.exitCode, post!.stdout + post!.stderr).toBe(0);
        expect(post!.stdout).not.toMatch(/^::error/m);
        expect(post!.summary).toMatch(/saved/);
        firstKey = main.outputs['cache-key']!;
      });

      it('second run: an exact hit, no build, no save', async () => {
        expect(firstKey).not.toBe('');
        const j = await job('name: test\ndependencies: [python=3.12]\n');
        const { main, post } = await run(j);
        expect(main.exitCode, main.stdout + main.stderr).toBe(0);
        expect(main.outputs['cache-hit']).toBe('true');
        expect(main.outputs['cache-key']).toBe(firstKey);
        expect(main.outputs['cache-matched-key']).toBe(firstKey);
        expect(main.groups.some((g) => g.startsWith('Build'))).toBe(false);
        expect(main.groups.some((g) => g.startsWith('Check'))).toBe(true);
        expect(main.summary).toMatch(/restored \(exact key\)/);
        expect(await readInImage(join(j.workspace, 'env.img'), '/opt/app/log')).toBe('run\n');
        expect(post!.exitCode).toBe(0);
        expect(post!.stdout).toMatch(/exact cache hit/);
        expect(post!.groups.some((g) => g.startsWith('Save'))).toBe(false);
      });

      it('changed key-files: a restore-key partial hit, the build runs on the restored image, post saves', async () => {
        const j = await job('name: test\ndependencies: [python=3.13]\n');
        const { main, post } = await run(j);
        expect(main.exitCode, main.stdout + main.stderr).toBe(0);
        expect(main.outputs['cache-hit']).toBe('false');
        expect(main.outputs['cache-key']).not.toBe(firstKey);
        expect(main.outputs['cache-matched-key']).toBe(firstKey);
        expect(main.groups.some((g) => g.startsWith('Build'))).toBe(true);
        // the second build appended to what the first one left
        expect(await readInImage(join(j.workspace, 'env.img'), '/opt/app/log')).toBe('run\nrun\n');
        expect(post!.exitCode, post!.stdout + post!.stderr).toBe(0);
        expect(post!.summary).toMatch(/saved/);

        // the new key is now an exact hit
        const again = await run(await job('name: test\ndependencies: [python=3.13]\n'));
        expect(again.main.outputs['cache-hit']).toBe('true');
        expect(again.main.outputs['cache-key']).toBe(main.outputs['cache-key']);
      });

      it('a corrupt cached image is discarded (error annotation naming the file) and rebuilt', async () => {
        // a job that damages its image after setup and saves it unchecked (check: false) ...
        const env = 'name: corrupt\n';
        const first = await run(await job(env), { check: 'false' }, (j) =>
          zeroInodeTable(join(j.workspace, 'env.img')),
        );
        expect(first.main.exitCode).toBe(0);
        expect(first.post?.exitCode, first.post?.stdout).toBe(0);
        expect(first.post!.summary).toMatch(/saved/);
        // ... and the next job restores it: the check finds it corrupt, it is discarded and rebuilt
        const j = await job(env);
        const { main } = await run(j);
        expect(main.exitCode, main.stdout + main.stderr).toBe(0);
        const error = main.annotations.find((a) => a.level === 'error');
        expect(error?.props.file).toBe('env.img');
        expect(error?.message).toMatch(/corrupt/);
        expect(main.outputs['cache-hit']).toBe('false');
        expect(main.outputs['cache-matched-key']).toBe('');
        expect(main.summary).toMatch(/cached copy corrupt: created, built/);
        expect(await readInImage(join(j.workspace, 'env.img'), '/opt/app/log')).toBe('run\n');
        const fsck = await execa('e2fsck', ['-fn', join(j.workspace, 'env.img')], { reject: false });
        expect(fsck.exitCode, fsck.stdout).toBe(0);
      });
    });
  }

  describe('with the Actions cache as GitHub runs it today', () => {
    let server: Awaited<ReturnType<typeof startCacheServer>>;
    const jobs: Job[] = [];
    beforeAll(async () => {
      server = await startCacheServer();
    });
    afterAll(async () => {
      await server?.stop();
      for (const j of jobs) rmSync(j.root, { recursive: true, force: true });
    });
    const go = async (extra: Record<string, string> = {}, opts: { state?: Record<string, string> } = {}) => {
      const j = await newJob();
      jobs.push(j);
      const prefix = `today-${randomBytes(4).toString('hex')}`;
      const r = await runAction(
        'setup-overlay',
        j,
        { path: 'env.img', size: '64M', 'cache-key': prefix, ...extra },
        { env: server.env, ...opts },
      );
      return { j, prefix, ...r };
    };
    const ours = (j: Job) => readdirSync(j.workspace).filter((n) => n !== 'env.img');

    it('save: false restores but never saves (like setup-pixi cache-write: false)', async () => {
      const { main, post, prefix, j } = await go({ save: 'false' });
      expect(main.exitCode, main.stdout).toBe(0);
      expect(post?.exitCode).toBe(0);
      expect(post!.stdout).toMatch(/save: false/);
      expect(server.entries().filter((e) => e.key.startsWith(prefix))).toEqual([]);
      expect(ours(j)).toEqual([]);
    });

    it('a read-only token or a throttled service: the post step says so in one info line and succeeds', async () => {
      for (const fault of ['write-denied', 'throttled'] as const) {
        server.setFaults({ createEntry: fault });
        const { post, j } = await go();
        server.setFaults({});
        expect(post?.exitCode, post?.stdout).toBe(0);
        expect(post!.stdout, fault).toMatch(/the cache store did not take the entry: .*(read-only|429)/);
        expect(post!.stdout, fault).not.toMatch(/^::(warning|error)/m);
        expect(post!.summary, fault).not.toMatch(/>saved</);
        expect(ours(j)).toEqual([]);
      }
    });

    it('a failed upload is not reported as `exists`: a warning that says what happened, summary "not saved"', async () => {
      server.setFaults({ finalize: 'fail' });
      const { post, prefix, j } = await go();
      server.setFaults({});
      expect(post?.exitCode, post?.stdout).toBe(0);
      const warning = post!.annotations.find((a) => a.level === 'warning');
      expect(warning?.message).toMatch(/not saved: E_CACHE: .*not accepted/);
      expect(post!.summary).toMatch(/not saved/);
      expect(post!.summary).not.toMatch(/exists/);
      expect(server.entries().filter((e) => e.key.startsWith(prefix) && e.finalized)).toEqual([]);
      expect(ours(j)).toEqual([]);
    });

    it('post reads one state object and validates it: a malformed one is one coded line', async () => {
      const { main, post } = await go({}, { state: { SETUP_OVERLAY: '{"path":"env.img","key":7}' } });
      expect(Object.keys(main.state).sort()).toEqual(['SETUP_OVERLAY', 'isPost']);
      expect(post?.exitCode).toBe(1);
      const errors = post!.stdout.split('\n').filter((l) => l.startsWith('::error'));
      expect(errors).toHaveLength(1);
      expect(errors[0]).toMatch(/malformed/);
    });
  });

  describe.skipIf(!isRoot())('as an unprivileged user (the hosted runner) with a local store', () => {
    let user: TestUser;
    let dir: string;
    const jobs: Job[] = [];
    beforeAll(async () => {
      user = await ensureTestUser();
      dir = mkdtempSync(join(tmpdir(), 'ov-store-user-'));
      chownSync(dir, user.uid, user.gid);
    });
    afterAll(() => {
      for (const j of jobs) rmSync(j.root, { recursive: true, force: true });
      rmSync(dir, { recursive: true, force: true });
    });

    const run = async () => {
      const j = await newJob('ov-action-user-', user);
      jobs.push(j);
      writeFileSync(join(j.workspace, 'environment.yml'), 'name: user\n');
      chownSync(join(j.workspace, 'environment.yml'), user.uid, user.gid);
      const r = await runAction('setup-overlay', j, {
        path: 'env.img',
        size: '96M',
        'create-dirs': '/opt/app',
        base,
        build: BUILD,
        'key-files': 'environment.yml',
        store: join(dir, 'store'),
      });
      return { j, ...r };
    };

    it('miss → build → save, then an exact hit; upper/ belongs to the user', async () => {
      const first = await run();
      expect(first.main.exitCode, first.main.stdout + first.main.stderr).toBe(0);
      expect(first.main.outputs['cache-hit']).toBe('false');
      expect(first.post?.exitCode, first.post?.stdout).toBe(0);
      expect(first.post!.summary).toMatch(/saved/);
      expect(await readInImage(join(first.j.workspace, 'env.img'), '/opt/app/log')).toBe('run\n');
      const stat = await execa('debugfs', ['-R', 'stat /upper', join(first.j.workspace, 'env.img')]);
      expect(stat.stdout).toMatch(new RegExp(`User:\\s+${user.uid}\\s`));

      const second = await run();
      expect(second.main.exitCode, second.main.stdout).toBe(0);
      expect(second.main.outputs['cache-hit']).toBe('true');
      expect(second.main.groups.some((g) => g.startsWith('Build'))).toBe(false);
      expect(second.post!.stdout).toMatch(/exact cache hit/);
    });
  });
});
