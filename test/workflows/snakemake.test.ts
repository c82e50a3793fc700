// The Snakemake wrappers (packages/snakemake/wrappers/overlay/*) and the example pipeline, run by
// real Snakemake (Debian's 7.21, scripts/setup-engines.sh) on real images, with overlayctl found
// on PATH as users install it, and rules running inside Apptainer with the overlay read-only.
import { copyFile, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { zeroInodeTable } from '../actions/corrupt';
import { sha256File } from '../helpers/tools';
import {
  buildEnvImage,
  describeRun,
  engineSandbox,
  ensureBashBase,
  holdWritable,
  type Json,
  ROOT,
  requireEngine,
  run,
} from './helpers';

const WRAPPERS = join(ROOT, 'packages/snakemake/wrappers/overlay');
const EXAMPLE = join(ROOT, 'packages/snakemake/examples/Snakefile');

let tmp: string;
let env: Record<string, string>;
let base: string;
let cleanImage: string;
let corruptImage: string;
let counter = 0;

async function workDir(label: string, images: Record<string, string> = {}): Promise<string> {
  const dir = join(tmp, `${String(++counter).padStart(2, '0')}-${label}`);
  await mkdir(dir, { recursive: true });
  for (const [name, from] of Object.entries(images)) await copyFile(from, join(dir, name));
  return dir;
}

function snakemake(dir: string, snakefile: string, args: string[] = []) {
  return run(['snakemake', '--nocolor', '-c1', '-s', snakefile, '-d', dir, ...args], dir, env);
}

async function readJson(file: string): Promise<Json> {
  return JSON.parse(await readFile(file, 'utf8'));
}

/** What a rule sees through `--overlay X:ro` on the base image. */
async function readThrough(overlays: string[], file: string): Promise<string> {
  const r = await execa('apptainer', [
    'exec',
    ...overlays.flatMap((o) => ['--overlay', `${o}:ro`]),
    base,
    'cat',
    file,
  ]);
  return String(r.stdout).trim();
}

beforeAll(async () => {
  requireEngine('snakemake');
  requireEngine('singularity');
  ({ tmp, env } = await engineSandbox('overlay-smk-'));
  base = await ensureBashBase();
  cleanImage = join(tmp, 'clean.img');
  await buildEnvImage(cleanImage, base, env);
  corruptImage = join(tmp, 'corrupt.img');
  await copyFile(cleanImage, corruptImage);
  await zeroInodeTable(corruptImage);
});

afterAll(async () => {
  if (tmp && !process.env.OVERLAY_KEEP_TMP) await execa('rm', ['-rf', tmp]);
});

describe('Snakemake wrappers, run by real Snakemake', () => {
  it('overlay/setup: builds into the image and saves it; a second run elsewhere restores it from the store', async () => {
    const store = join(tmp, 'setup-store');
    const build = 'set -eu\nmkdir -p /opt/env\necho built-by-setup > /opt/env/greeting\n';
    const first = await workDir('setup-1');
    await writeFile(join(first, 'build.sh'), build);
    await writeFile(join(first, 'environment.yml'), 'dependencies: [python=3.12]\n');
    const r1 = await snakemake(first, join(WRAPPERS, 'setup/test/Snakefile'), [
      '--config',
      `base=${base}`,
      `store=${store}`,
    ]);
    expect(r1.exitCode, describeRun(r1)).toBe(0);
    const report1 = await readJson(join(first, 'env.setup.json'));
    expect(report1.setup).toMatchObject({ cacheOutcome: 'miss', created: true, built: true });
    expect(report1.save).toMatchObject({ saved: true });
    expect(await readThrough([join(first, 'env.img')], '/opt/env/greeting')).toBe('built-by-setup');

    const second = await workDir('setup-2');
    await writeFile(join(second, 'build.sh'), build);
    await writeFile(join(second, 'environment.yml'), 'dependencies: [python=3.12]\n');
    const r2 = await snakemake(second, join(WRAPPERS, 'setup/test/Snakefile'), [
      '--config',
      `base=${base}`,
      `store=${store}`,
    ]);
    expect(r2.exitCode, describeRun(r2)).toBe(0);
    const report2 = await readJson(join(second, 'env.setup.json'));
    expect(report2.setup).toMatchObject({ cacheHit: true, created: false, built: false });
    expect(report2.setup.cacheKey).toBe(report1.setup.cacheKey);
    expect(report2.save).toMatchObject({ saved: false, reason: 'hit' });
    expect(await readFile(join(second, 'logs/setup.log'), 'utf8')).toContain('cache hit');
    expect(await readThrough([join(second, 'env.img')], '/opt/env/greeting')).toBe('built-by-setup');

    // another key file content: another key, so no exact hit and a build (on the partial match
    // that setup's default restore keys find), saved under the new key
    const third = await workDir('setup-3');
    await writeFile(join(third, 'build.sh'), build);
    await writeFile(join(third, 'environment.yml'), 'dependencies: [python=3.13]\n');
    const r3 = await snakemake(third, join(WRAPPERS, 'setup/test/Snakefile'), [
      '--config',
      `base=${base}`,
      `store=${store}`,
    ]);
    expect(r3.exitCode, describeRun(r3)).toBe(0);
    const report3 = await readJson(join(third, 'env.setup.json'));
    expect(report3.setup).toMatchObject({ cacheHit: false, built: true });
    expect(report3.setup.cacheKey).not.toBe(report1.setup.cacheKey);
    expect(report3.save).toMatchObject({ saved: true, reason: 'saved' });
    expect(report3.setup.saved.message).toContain(report3.setup.cacheKey);
  });

  it('overlay/check: two clean images give a clean JSON report and a successful job', async () => {
    const dir = await workDir('check-clean', { 'a.img': cleanImage, 'b.img': cleanImage });
    const r = await snakemake(dir, join(WRAPPERS, 'check/test/Snakefile'), [
      '--config',
      'images=["a.img","b.img"]',
    ]);
    expect(r.exitCode, describeRun(r)).toBe(0);
    const report = await readJson(join(dir, 'report/check.json'));
    expect(report.counts).toMatchObject({ clean: 2, corrupt: 0, error: 0, locked: 0 });
    expect(report.images.map((i: Json) => i.image)).toEqual(['a.img', 'b.img']);
  });

  it('overlay/check: a corrupt image fails the job, and the log says which image and why', async () => {
    const dir = await workDir('check-corrupt', { 'a.img': cleanImage, 'bad.img': corruptImage });
    const r = await snakemake(dir, join(WRAPPERS, 'check/test/Snakefile'), [
      '--config',
      'images=["a.img","bad.img"]',
    ]);
    expect(r.exitCode, describeRun(r)).not.toBe(0);
    expect(r.all).toMatch(/Error in rule overlay_check/);
    const log = await readFile(join(dir, 'logs/check.log'), 'utf8');
    expect(log).toMatch(/^a\.img: clean$/m);
    expect(log).toMatch(/^bad\.img: (corrupt|error)$/m);
    expect(log).toMatch(/not every image is clean \(exit 1\)/);
    // e2fsck's own findings, one per line under the image
    expect(log.split('\n').filter((l) => l.startsWith('  ')).length).toBeGreaterThan(0);
    // Snakemake removed the failed job's output: the log is where the reasons are
    await expect(stat(join(dir, 'report/check.json'))).rejects.toThrow();
  });

  it('overlay/resize: grows a copy; the input is untouched and the copy still serves its files', async () => {
    const dir = await workDir('resize', { 'env.img': cleanImage });
    const before = await sha256File(join(dir, 'env.img'));
    const r = await snakemake(dir, join(WRAPPERS, 'resize/test/Snakefile'));
    expect(r.exitCode, describeRun(r)).toBe(0);
    const result = await readJson(join(dir, 'resized/env.resize.json'));
    expect(result).toMatchObject({
      sizeBytes: 128 * 2 ** 20,
      previousSizeBytes: 64 * 2 ** 20,
      changed: true,
    });
    expect((await stat(join(dir, 'resized/env.img'))).size).toBe(128 * 2 ** 20);
    expect(await sha256File(join(dir, 'env.img'))).toBe(before);
    expect(await readThrough([join(dir, 'resized/env.img')], '/opt/env/greeting')).toBe(
      'hello from the overlay',
    );
  });

  it('overlay/commit: a SquashFS layer that Apptainer stacks, read-only, on the base', async () => {
    const dir = await workDir('commit', { 'env.img': cleanImage });
    const r = await snakemake(dir, join(WRAPPERS, 'commit/test/Snakefile'));
    expect(r.exitCode, describeRun(r)).toBe(0);
    const result = await readJson(join(dir, 'layers/env.commit.json'));
    expect(result).toMatchObject({ compression: 'gzip' }); // params.compression reached overlayctl
    expect(result.sha256).toBe(await sha256File(join(dir, 'layers/env.sqf')));
    expect(await readThrough([join(dir, 'layers/env.sqf')], '/opt/env/greeting')).toBe(
      'hello from the overlay',
    );
    // stacked under a second, writable-built overlay: both are visible
    const upper = join(dir, 'upper.img');
    await buildEnvImage(upper, base, env, 'upper greeting');
    const r2 = await execa('apptainer', [
      'exec',
      '--overlay',
      `${join(dir, 'layers/env.sqf')}:ro`,
      '--overlay',
      `${upper}:ro`,
      base,
      'sh',
      '-c',
      'cat /opt/env/greeting; ls /opt/env/bin',
    ]);
    expect(String(r2.stdout).trim().split('\n')).toEqual(['upper greeting', 'hello']);
  });

  it('an image held writable by a running container fails the job at once, with E_LOCKED in the log', async () => {
    const dir = await workDir('locked', { 'env.img': cleanImage });
    const holder = await holdWritable(join(dir, 'env.img'), base);
    try {
      // the container sleeps 600 s: finishing at all (inside the test timeout) means no waiting
      const r = await snakemake(dir, join(WRAPPERS, 'commit/test/Snakefile'));
      expect(r.exitCode, describeRun(r)).not.toBe(0);
      const log = await readFile(join(dir, 'logs/commit.log'), 'utf8');
      expect(log).toMatch(/^E_LOCKED: .*env\.img is in use.*\[exit 75: temporary, retry later\]$/m);
      expect(r.all).toContain('E_LOCKED');
      await expect(stat(join(dir, 'layers/env.sqf'))).rejects.toThrow();

      // resize copies under `overlayctl lock --shared`, whose own failures exit 125: the wrapper
      // still ends the job as retryable (75), because the code is E_LOCKED
      const r2 = await snakemake(dir, join(WRAPPERS, 'resize/test/Snakefile'));
      expect(r2.exitCode, describeRun(r2)).not.toBe(0);
      const log2 = await readFile(join(dir, 'logs/resize.log'), 'utf8');
      expect(log2).toMatch(/^E_LOCKED: .*\[exit 75: temporary, retry later\]$/m);
      await expect(stat(join(dir, 'resized/env.img'))).rejects.toThrow();
    } finally {
      await holder.stop();
    }
  });
});

describe('packages/snakemake/examples: the pipeline, end to end', () => {
  it('setup → check → commit, and rules running inside the overlay read a program from it', async () => {
    const store = join(tmp, 'example-store');
    const args = [
      '-c2',
      '--use-singularity',
      '--singularity-args',
      '--overlay results/env.img:ro',
      '--config',
      `base=${base}`,
      `store=${store}`,
      'size=64M',
    ];
    const first = await workDir('example-1');
    const r1 = await snakemake(first, EXAMPLE, args);
    expect(r1.exitCode, describeRun(r1)).toBe(0);
    for (const sample of ['a', 'b', 'c'])
      expect(await readFile(join(first, `results/${sample}.txt`), 'utf8')).toBe(
        `hello ${sample} from the overlay\n`,
      );
    expect((await readJson(join(first, 'results/env.check.json'))).counts.clean).toBe(1);
    expect((await readJson(join(first, 'results/env.setup.json'))).setup.built).toBe(true);
    expect(await readThrough([join(first, 'results/env.sqf')], '/opt/env/bin/hello')).toContain(
      'from the overlay',
    );

    // a second checkout (another node): the environment comes from the store
    const second = await workDir('example-2');
    const r2 = await snakemake(second, EXAMPLE, [...args, 'samples=["z"]']);
    expect(r2.exitCode, describeRun(r2)).toBe(0);
    expect((await readJson(join(second, 'results/env.setup.json'))).setup).toMatchObject({
      cacheHit: true,
      built: false,
    });
    expect(await readFile(join(second, 'results/z.txt'), 'utf8')).toBe('hello z from the overlay\n');
  });
});
