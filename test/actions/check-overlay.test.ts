// check-overlay over a directory with one clean, one corrupt and one locked image (the lock is an
// fcntl OFD write lock, the kind Apptainer holds on an overlay it writes to).
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireLock, createImage, currentOwner, type Lock, MiB } from '../../packages/core/src/index';
import { zeroInodeTable } from './corrupt';
import { type Job, newJob, runAction } from './harness';

const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');

describe('check-overlay', () => {
  let job: Job;
  let lock: Lock;
  const images = (j: Job) => join(j.workspace, 'images');

  beforeAll(async () => {
    job = await newJob();
    mkdirSync(images(job));
    const clean = join(images(job), 'clean.img');
    await createImage({
      path: clean,
      sizeBytes: 64 * MiB,
      inodeRatio: 16384,
      reservedPercent: 0,
      sparse: true,
      owner: currentOwner(),
      createDirs: ['/opt/data'],
      force: false,
    });
    copyFileSync(clean, join(images(job), 'corrupt.img'));
    await zeroInodeTable(join(images(job), 'corrupt.img'));
    copyFileSync(clean, join(images(job), 'locked.img'));
    lock = await acquireLock(join(images(job), 'locked.img'), 'exclusive');
  });
  afterAll(() => {
    lock?.release();
    rmSync(job.root, { recursive: true, force: true });
  });

  it('counts clean, corrupt and locked images, annotates the corrupt one and fails', async () => {
    const { main } = await runAction('check-overlay', job, { paths: 'images/*.img\n' });
    expect(main.exitCode, main.stdout).toBe(1);
    expect(main.outputs).toMatchObject({ clean: '1', corrupt: '1', locked: '1', repaired: '0' });
    const errors = main.annotations.filter((a) => a.level === 'error');
    const fileError = errors.find((a) => a.props.file);
    expect(fileError?.props.file).toBe(join(images(job), 'corrupt.img'));
    expect(fileError?.message).toMatch(/corrupt/);
    // the step's failure is the last, one line, naming the image
    expect(errors.at(-1)!.message).toMatch(/^E_INTEGRITY: .*corrupt\.img/);
    expect(
      main.annotations.some((a) => a.level === 'warning' && /locked\.img/.test(a.props.file ?? '')),
    ).toBe(true);
    // why it failed is in the annotation itself, not only in ::debug
    expect(fileError?.message).toMatch(/corrupt\.img is corrupt: ./);

    const reportPath = main.outputs.report!;
    expect(reportPath.startsWith(job.temp)).toBe(true);
    const report = JSON.parse(readFileSync(reportPath, 'utf8'));
    const byName = Object.fromEntries(
      report.images.map((r: { image: string; status: string }) => [r.image.split('/').pop(), r.status]),
    );
    expect(byName).toEqual({ 'clean.img': 'clean', 'corrupt.img': 'corrupt', 'locked.img': 'locked' });
    for (const name of ['clean.img', 'corrupt.img', 'locked.img']) expect(main.summary).toContain(name);
    expect(main.summary).toMatch(/1 clean, 0 repaired, 1 corrupt, 1 locked/);
  });

  it('fail-on-corrupt: false reports without failing', async () => {
    const { main } = await runAction('check-overlay', job, {
      paths: `${join(images(job), 'clean.img')}\nimages/corrupt.img`,
      'fail-on-corrupt': 'false',
    });
    expect(main.exitCode, main.stdout).toBe(0);
    expect(main.outputs).toMatchObject({ clean: '1', corrupt: '1', locked: '0' });
    expect(main.annotations.some((a) => a.level === 'error' && a.props.file?.endsWith('corrupt.img'))).toBe(
      true,
    );
  });

  it('repair: true repairs what e2fsck can and counts it', async () => {
    const j = await newJob();
    try {
      copyFileSync(join(images(job), 'corrupt.img'), join(j.workspace, 'damaged.img'));
      const { main } = await runAction('check-overlay', j, { paths: '*.img', repair: 'true' });
      expect(main.outputs.repaired, main.stdout).toBe('1');
      expect(main.exitCode).toBe(0);
    } finally {
      rmSync(j.root, { recursive: true, force: true });
    }
  });

  it('one policy with `overlayctl check`: a missing file says why (no repair suggestion); images only in use fail too', async () => {
    const missing = await runAction('check-overlay', job, { paths: 'images/clean.img\nimages/gone.img' });
    expect(missing.main.exitCode).toBe(1);
    const why = missing.main.annotations.find(
      (a) => a.level === 'error' && a.props.file?.endsWith('gone.img'),
    );
    expect(why?.message).toMatch(/gone\.img could not be checked: .*no such file/);
    const last = missing.main.annotations.filter((a) => a.level === 'error').at(-1)!;
    expect(last.message).toMatch(/^E_INTEGRITY: .*gone\.img/);
    expect(last.message).not.toMatch(/repair: true/);

    const cli = await execa(CLI, ['check', join(images(job), 'locked.img')], { reject: false });
    const locked = await runAction('check-overlay', job, { paths: 'images/locked.img' });
    expect(cli.exitCode).not.toBe(0);
    expect(locked.main.exitCode).toBe(1);
    expect(locked.main.annotations.filter((a) => a.level === 'error').at(-1)!.message).toMatch(
      /^E_LOCKED: 1 image\(s\) in use/,
    );
  });

  it('paths matching nothing fail with one line naming the input', async () => {
    const { main } = await runAction('check-overlay', job, { paths: 'nothing/*.img' });
    expect(main.exitCode).toBe(1);
    const lines = main.stdout.split('\n').filter((l) => l.startsWith('::error'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^::error::E_NOT_FOUND: paths: /);
    expect(existsSync(join(job.temp, 'nothing'))).toBe(false);
  });
});
