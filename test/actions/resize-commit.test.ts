// resize-overlay and commit-layer bundles: outputs match the files they leave.
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MiB } from '../../packages/core/src/index';
import { sha256File } from '../helpers/tools';
import { type Job, newJob, runAction, workspaceImage } from './harness';

describe('resize-overlay and commit-layer', () => {
  let job: Job;
  beforeAll(async () => {
    job = await newJob();
    await workspaceImage(job, ['/opt/env/bin']);
  });
  afterAll(async () => {
    const { rmSync } = await import('node:fs');
    rmSync(job.root, { recursive: true, force: true });
  });

  it('resize-overlay grows the image and reports its sizes', async () => {
    const { main } = await runAction('resize-overlay', job, { path: 'env.img', size: '128M' });
    expect(main.exitCode, main.stdout + main.stderr).toBe(0);
    expect(main.outputs['size-bytes']).toBe(String(128 * MiB));
    expect(statSync(join(job.workspace, 'env.img')).size).toBe(128 * MiB);
    expect(Number(main.outputs['used-bytes'])).toBeGreaterThan(0);
    expect(main.groups.some((g) => g.startsWith('Resize'))).toBe(true);
    expect(main.summary).toContain('env.img');
  });

  it('commit-layer writes a SquashFS layer and reports its size and digest', async () => {
    const { main } = await runAction('commit-layer', job, { path: 'env.img', output: 'env.sqf' });
    expect(main.exitCode, main.stdout + main.stderr).toBe(0);
    const layer = join(job.workspace, 'env.sqf');
    expect(main.outputs.bytes).toBe(String(statSync(layer).size));
    expect(main.outputs.sha256).toBe(await sha256File(layer));
    expect(join(job.workspace, main.outputs.layer!)).toBe(layer);
    expect(main.summary).toContain('env.sqf');
  });
});
