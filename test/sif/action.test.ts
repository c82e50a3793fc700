// The check-overlay action over SIF files with embedded overlays, in the batch report like any
// image: one clean, one damaged inside its overlay partition; then repair: true.
import { copyFileSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Job, newJob, runAction } from '../actions/harness';
import { ensureBaseImage } from '../helpers/base-image';
import { containerSha, overlayObject, sifWithOverlay } from './helpers';

describe('check-overlay on SIF files', () => {
  let job: Job;
  let base: string;
  const images = (j: Job) => join(j.workspace, 'sifs');

  beforeAll(async () => {
    [job, base] = await Promise.all([newJob(), ensureBaseImage()]);
    mkdirSync(images(job));
    await sifWithOverlay(base, join(images(job), 'clean.sif'), 64);
    const damaged = join(images(job), 'damaged.sif');
    copyFileSync(join(images(job), 'clean.sif'), damaged);
    const o = (await overlayObject(damaged))!;
    await execa('debugfs', ['-w', '-f', '-', `${damaged}?offset=${o.start}`], {
      input: 'set_bg 0 free_blocks_count 7\nsif /upper links_count 9\n',
    });
  });
  afterAll(() => rmSync(job.root, { recursive: true, force: true }));

  it('reports the clean and the damaged SIF, then repair: true repairs the damaged one', async () => {
    const { main } = await runAction('check-overlay', job, { paths: 'sifs/*.sif\n' });
    expect(main.exitCode, main.stdout).toBe(1);
    expect(main.outputs).toMatchObject({ clean: '1', corrupt: '1', locked: '0', repaired: '0' });
    const report = JSON.parse(readFileSync(main.outputs.report!, 'utf8'));
    const byName = Object.fromEntries(
      report.images.map((r: { image: string; status: string }) => [r.image.split('/').pop(), r.status]),
    );
    expect(byName).toEqual({ 'clean.sif': 'clean', 'damaged.sif': 'corrupt' });
    expect(main.annotations.some((a) => a.level === 'error' && a.props.file?.endsWith('damaged.sif'))).toBe(
      true,
    );

    const container = await containerSha(join(images(job), 'damaged.sif'));
    const repair = await runAction('check-overlay', job, { paths: 'sifs/*.sif\n', repair: 'true' });
    expect(repair.main.exitCode, repair.main.stdout).toBe(0);
    expect(repair.main.outputs).toMatchObject({ clean: '1', repaired: '1', corrupt: '0' });
    expect(await containerSha(join(images(job), 'damaged.sif'))).toBe(container);
    const r = await execa('apptainer', ['exec', '--writable', join(images(job), 'damaged.sif'), 'true']);
    expect(r.exitCode).toBe(0);
  });
});
