// The `wait` input: an action step waits for an image in use (an OFD write lock, as Apptainer
// holds) instead of failing, also where the entry calls core functions directly (check-overlay).
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireLock, createImage, currentOwner, MiB } from '../../packages/core/src/index';
import { type Job, newJob, runAction } from './harness';

describe('wait input', () => {
  let job: Job;
  let img: string;
  beforeAll(async () => {
    job = await newJob();
    mkdirSync(join(job.workspace, 'images'));
    img = join(job.workspace, 'images', 'busy.img');
    await createImage({
      path: img,
      sizeBytes: 64 * MiB,
      inodeRatio: 16384,
      reservedPercent: 0,
      sparse: true,
      owner: currentOwner(),
      createDirs: [],
      force: false,
    });
  });
  afterAll(() => rmSync(job.root, { recursive: true, force: true }));

  /** Hold the write lock for `ms` while `step` runs. */
  async function whileLocked<T>(ms: number, step: () => Promise<T>): Promise<T> {
    const lock = await acquireLock(img, 'exclusive');
    const timer = setTimeout(() => lock.release(), ms);
    try {
      return await step();
    } finally {
      clearTimeout(timer);
      lock.release();
    }
  }

  it('check-overlay reports a busy image as locked, and with wait checks it once it is free', async () => {
    const now = await whileLocked(60_000, () => runAction('check-overlay', job, { paths: 'images/*.img\n' }));
    expect(now.main.outputs).toMatchObject({ locked: '1', clean: '0' });
    const waited = await whileLocked(2000, () =>
      runAction('check-overlay', job, { paths: 'images/*.img\n', wait: '120' }),
    );
    expect(waited.main.exitCode, waited.main.stdout).toBe(0);
    expect(waited.main.outputs).toMatchObject({ locked: '0', clean: '1' });
  });

  it('resize-overlay fails with E_LOCKED at once, and with wait resizes once the image is free', async () => {
    const now = await whileLocked(60_000, () =>
      runAction('resize-overlay', job, { path: 'images/busy.img', size: '96' }),
    );
    expect(now.main.exitCode).toBe(1);
    expect(now.main.stdout).toMatch(/::error::E_LOCKED: .*--wait SECONDS/);
    const waited = await whileLocked(2000, () =>
      runAction('resize-overlay', job, { path: 'images/busy.img', size: '96', wait: '120' }),
    );
    expect(waited.main.exitCode, waited.main.stdout).toBe(0);
    expect(waited.main.outputs['size-bytes']).toBe(String(96 * MiB));
  });
});
