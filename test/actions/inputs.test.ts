// Bad inputs: each action fails with exactly one error line, `E_INVALID_INPUT: <input name>: …`,
// writes no output and touches no file in the workspace (validation comes before anything else).
import { rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { failureLines, type Job, newJob, runAction, snapshot, workspaceImage } from './harness';

const CASES: [action: string, inputs: Record<string, string>, input: string, message?: RegExp][] = [
  ['setup-overlay', {}, 'path', /required|expected string/],
  ['setup-overlay', { path: 'new.img', size: '12' }, 'size', /64 MiB/],
  ['setup-overlay', { path: 'new.img', size: 'huge' }, 'size', /not a size/],
  ['setup-overlay', { path: 'new.img', profile: 'tiny' }, 'profile'],
  ['setup-overlay', { path: 'new.img', cache: 'maybe' }, 'cache'],
  ['setup-overlay', { path: 'new.img', uid: '1000' }, 'gid', /go together/],
  ['setup-overlay', { path: 'new.img', 'create-dirs': 'opt/env' }, 'create-dirs', /absolute/],
  ['setup-overlay', { path: 'new.img', build: 'echo hi' }, 'base', /required when build/],
  ['setup-overlay', { path: 'new.img', 'cache-key': 'a,b' }, 'cache-key'],
  ['setup-overlay', { path: 'env.img' }, '', /E_EXISTS/],
  ['check-overlay', { paths: '' }, 'paths'],
  ['check-overlay', { paths: 'env.img', repair: 'perhaps' }, 'repair'],
  ['check-overlay', { paths: 'env.img', 'fail-on-corrupt': '2' }, 'fail-on-corrupt'],
  ['resize-overlay', { path: 'env.img', size: 'big' }, 'size', /not a size/],
  ['resize-overlay', { size: '1G' }, 'path'],
  ['commit-layer', { path: 'env.img', output: 'env.sqf', compression: 'bogus' }, 'compression'],
  ['commit-layer', { path: 'env.img' }, 'output'],
];

describe('bad action inputs', () => {
  let job: Job;
  beforeAll(async () => {
    job = await newJob();
    await workspaceImage(job);
  });
  afterAll(() => rmSync(job.root, { recursive: true, force: true }));

  for (const [action, inputs, input, message] of CASES) {
    it(`${action} ${JSON.stringify(inputs)} → one line${input ? ` naming ${input}` : ''}`, async () => {
      const before = snapshot(job.workspace);
      const { main, post } = await runAction(action, job, inputs);
      expect(main.exitCode).toBe(1);
      const lines = failureLines(main);
      expect(lines, main.stdout).toHaveLength(1);
      // a missing required input reads "NAME is required: what it wants" (a bad one "NAME: why")
      if (input) expect(lines[0]).toMatch(new RegExp(`^::error::E_INVALID_INPUT: ${input}( is required)?: `));
      if (message) expect(lines[0]).toMatch(message);
      expect(lines[0]).not.toMatch(/\bat .*\.mjs:\d+/); // no stack trace
      expect(main.outputs).toEqual({});
      expect(main.summary).toBe('');
      expect(post).toBeUndefined(); // post-if: success()
      expect(snapshot(job.workspace)).toBe(before);
    });
  }
});
