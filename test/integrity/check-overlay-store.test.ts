// The nightly check-overlay action reaching the cache: `store` verifies every entry (as `cache
// verify` does), a bad entry is an error annotation and fails the step; `remove-bad-entries`
// deletes it and the step passes.
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalStore } from '../../packages/core/src/cache/local-store';
import { packImage } from '../../packages/core/src/cache/pack';
import { type Job, newJob, runAction, workspaceImage } from '../actions/harness';

describe('check-overlay with a cache store', () => {
  let job: Job;
  let store: string;

  beforeAll(async () => {
    job = await newJob('ov-check-store-');
    const img = await workspaceImage(job);
    store = join(job.root, 'store');
    const s = new LocalStore(store);
    await s.put('good', async (a) => {
      await packImage(img, a);
    });
    // an entry whose image has a damaged filesystem, in an intact archive
    const bad = join(job.root, 'bad.img');
    writeFileSync(bad, readFileSync(img));
    await execa('debugfs', ['-w', '-f', '-', bad], { input: 'freeb 300 20\n' });
    await s.put('fs-damaged', async (a) => {
      await packImage(bad, a);
    });
  });
  afterAll(() => rmSync(job.root, { recursive: true, force: true }));

  it('reports a bad entry and fails; remove-bad-entries deletes it and passes', async () => {
    const { main } = await runAction('check-overlay', job, { paths: 'env.img', store });
    expect(main.exitCode, main.stdout).toBe(1);
    const errors = main.annotations.filter((a) => a.level === 'error');
    expect(errors.some((a) => /cache entry fs-damaged is corrupt/.test(a.message))).toBe(true);
    expect(errors.some((a) => /cache entry good/.test(a.message))).toBe(false);
    const report = JSON.parse(readFileSync(main.outputs.report!, 'utf8'));
    expect(report.entries.map((e: { key: string; status: string }) => [e.key, e.status])).toEqual([
      ['fs-damaged', 'corrupt'],
      ['good', 'clean'],
    ]);
    expect(main.summary).toMatch(/cache store: 2 entries, 1 bad, 0 removed/);
    expect(readdirSync(store).filter((n) => n.endsWith('.json'))).toHaveLength(2);

    const second = await runAction('check-overlay', job, {
      paths: 'env.img',
      store,
      'remove-bad-entries': 'true',
    });
    expect(second.main.exitCode, second.main.stdout).toBe(0);
    expect(second.main.summary).toMatch(/cache store: 2 entries, 1 bad, 1 removed/);
    expect(readdirSync(store).filter((n) => n.endsWith('.json'))).toHaveLength(1);
  });
});
