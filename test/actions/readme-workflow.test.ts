// The README's first workflow example, as written, run the way a GitHub-hosted Ubuntu runner runs
// it: as an ordinary user, the Actions cache behind @actions/cache, then the `run:` step with
// `${{ steps.env.outputs.base }}`. Two substitutions only, because the registry and conda-forge
// are out of reach here: the base reference becomes a local SIF, and the micromamba command
// becomes a stand-in that writes /opt/env the same way (as the runner user, into a root-owned /opt).
import { chownSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCacheServer } from '../cache-server/server';
import { ensureBaseImage } from '../helpers/base-image';
import { apptainerCommand, hasApptainer, isRoot } from '../helpers/tools';
import { ensureTestUser, runAs, type TestUser } from '../helpers/users';
import { type Job, newJob, repoRoot, runAction } from './harness';

interface Step {
  uses?: string;
  id?: string;
  run?: string;
  with: Record<string, string>;
}

/** The first ```yaml block of the README as steps (its shape: `- uses:` with `with:`, `- run:`). */
function readmeSteps(): Step[] {
  const text = readFileSync(join(repoRoot, 'README.md'), 'utf8');
  const block = /```yaml\n([\s\S]*?)```/.exec(text)![1]!;
  const steps: Step[] = [];
  for (const line of block.split('\n')) {
    if (!line.trim()) continue;
    const m = /^(- | {2}| {4})([a-z-]+):\s*(.*)$/.exec(line);
    if (!m) throw new Error(`README example: unexpected line ${line}`);
    const [, indent, key, raw] = m;
    const value = key === 'uses' ? raw!.replace(/\s+#.*$/, '') : raw!;
    if (indent === '- ') steps.push({ with: {} });
    const step = steps.at(-1)!;
    if (indent === '    ') step.with[key!] = value;
    else if (key !== 'with') (step as unknown as Record<string, string>)[key!] = value;
  }
  return steps;
}

// writes under /opt/env as the build user, the way `micromamba create -p /opt/env` does
const STAND_IN =
  "mkdir -p /opt/env/bin && printf '#!/bin/sh\\necho numpy imported\\n' > /opt/env/bin/python && chmod +x /opt/env/bin/python";

describe.skipIf(!isRoot() || !hasApptainer())(
  'the README workflow example, as a non-root runner user',
  () => {
    let user: TestUser;
    let base: string;
    let server: Awaited<ReturnType<typeof startCacheServer>>;
    const jobs: Job[] = [];
    beforeAll(async () => {
      user = await ensureTestUser();
      base = await ensureBaseImage();
      server = await startCacheServer();
    }, 300_000);
    afterAll(async () => {
      await server?.stop();
      for (const j of jobs) rmSync(j.root, { recursive: true, force: true });
    });

    async function runExample() {
      const [setup, use] = readmeSteps();
      expect(setup!.uses).toMatch(/overlay-action@v1$/);
      expect(setup!.with.base).toMatch(/^docker:\/\//);
      expect(setup!.with.build).toMatch(/micromamba create .*-p \/opt\/env/);
      const j = await newJob('ov-readme-', user);
      jobs.push(j);
      writeFileSync(join(j.workspace, 'environment.yml'), 'name: env\ndependencies: [numpy]\n');
      chownSync(join(j.workspace, 'environment.yml'), user.uid, user.gid);
      const inputs = { ...setup!.with, base, build: STAND_IN };
      const { main, post } = await runAction('setup-overlay', j, inputs, { env: server.env });
      expect(main.exitCode, main.stdout + main.stderr).toBe(0);
      expect(main.outputs.base).toBe(base);
      // the `run:` step, as written, with the step outputs substituted the way the runner does
      const command = use!.run!.replace(/\$\{\{\s*steps\.env\.outputs\.(\w+)\s*\}\}/g, (_, name: string) => {
        expect(setup!.id).toBe('env');
        return main.outputs[name]!;
      });
      const apptainer = apptainerCommand()!;
      const r = await runAs(user, ['sh', '-c', command.replace(/^apptainer /, `${apptainer} `)], {
        cwd: j.workspace,
      });
      return { main, post, r, j };
    }

    it('first run: built as the runner user, the run step works with the base output, post saves', async () => {
      const { main, post, r, j } = await runExample();
      expect(main.outputs['cache-hit']).toBe('false');
      expect(r.exitCode, String(r.stderr)).toBe(0);
      expect(String(r.stdout)).toMatch(/numpy imported/);
      expect(post?.exitCode, post?.stdout).toBe(0);
      expect(post!.stdout).toMatch(/saved .*env\.img/);
      expect(readFileSync(join(j.workspace, 'environment.yml'), 'utf8')).toMatch(/numpy/);
    });

    it('second run: an exact hit from the Actions cache, and the run step still has its base', async () => {
      const { main, r } = await runExample();
      expect(main.outputs['cache-hit']).toBe('true');
      expect(r.exitCode, String(r.stderr)).toBe(0);
      expect(String(r.stdout)).toMatch(/numpy imported/);
    });
  },
);
