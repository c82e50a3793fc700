// The CWL tools (packages/cwl/*.cwl) and the example workflow, run by the real CWL reference
// runner (Debian's cwltool 3.1, scripts/setup-engines.sh) on real images, with overlayctl found on
// PATH as users install it; the example's step runs inside Apptainer (--singularity) with the
// overlay from APPTAINER_OVERLAY.
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

const CWL = join(ROOT, 'packages/cwl');

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

interface CwlRun {
  exitCode: number;
  all: string;
  /** cwltool's final output object (printed also when the job failed) */
  out: Json;
}

/** cwltool TOOL JOB in dir, outputs into dir/out; the job is written from `job` as JSON. */
async function cwltool(
  dir: string,
  tool: string,
  job: Json,
  extra: { args?: string[]; env?: Record<string, string> } = {},
) {
  await writeFile(join(dir, 'job.json'), JSON.stringify(job));
  const r = await run(
    ['cwltool', ...(extra.args ?? []), '--outdir', join(dir, 'out'), tool, 'job.json'],
    dir,
    env,
    extra.env,
  );
  let out: Json = {};
  try {
    out = JSON.parse(r.stdout);
  } catch {
    // no output object (validation failure): the assertions on exitCode say why
  }
  return { exitCode: r.exitCode, all: r.all, out } satisfies CwlRun;
}

const file = (path: string) => ({ class: 'File', path });

async function readJson(path: string): Promise<Json> {
  return JSON.parse(await readFile(path, 'utf8'));
}

async function readThrough(overlays: string[], path: string): Promise<string> {
  const r = await execa('apptainer', [
    'exec',
    ...overlays.flatMap((o) => ['--overlay', `${o}:ro`]),
    base,
    'cat',
    path,
  ]);
  return String(r.stdout).trim();
}

beforeAll(async () => {
  requireEngine('cwltool');
  requireEngine('singularity');
  ({ tmp, env } = await engineSandbox('overlay-cwl-'));
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

describe('CWL tools, run by real cwltool', () => {
  it('every tool and workflow in packages/cwl is valid CWL v1.2', async () => {
    for (const name of [
      'overlay-setup.cwl',
      'overlay-restore-or-build.cwl',
      'overlay-cache-save.cwl',
      'overlay-check.cwl',
      'overlay-resize.cwl',
      'overlay-commit.cwl',
      'examples/check-then-run.cwl',
      'examples/hello.cwl',
    ]) {
      const r = await run(['cwltool', '--validate', join(CWL, name)], tmp, env);
      expect(r.exitCode, describeRun(r)).toBe(0);
      expect(r.all).toContain('is valid CWL');
    }
  });

  it('overlay-setup.cwl: builds and saves on a miss; a second run restores from the store and saves nothing', async () => {
    const store = join(tmp, 'setup-store');
    const job = (dir: string) => ({
      image_name: 'env.img',
      size: '64M',
      profile: 'small',
      create_dirs: ['/opt/env'],
      base,
      build_script: file(join(dir, 'build.sh')),
      store,
      cache_key: 'cwl',
    });
    const build = 'set -eu\necho built-by-cwl > /opt/env/greeting\n';
    const first = await workDir('setup-1');
    await writeFile(join(first, 'build.sh'), build);
    const r1 = await cwltool(first, join(CWL, 'overlay-setup.cwl'), job(first));
    expect(r1.exitCode, describeRun(r1)).toBe(0);
    const setup1 = await readJson(r1.out.report.path);
    expect(setup1).toMatchObject({ cacheOutcome: 'miss', created: true, built: true });
    expect(await readJson(r1.out.save_report.path)).toMatchObject({ saved: true, key: setup1.cacheKey });
    expect(await readThrough([r1.out.image.path], '/opt/env/greeting')).toBe('built-by-cwl');

    const second = await workDir('setup-2');
    await writeFile(join(second, 'build.sh'), build);
    const r2 = await cwltool(second, join(CWL, 'overlay-setup.cwl'), job(second));
    expect(r2.exitCode, describeRun(r2)).toBe(0);
    expect(await readJson(r2.out.report.path)).toMatchObject({
      cacheHit: true,
      built: false,
      cacheKey: setup1.cacheKey,
    });
    expect(r2.out.save_report).toBeNull(); // the save step was skipped (`when:`)
    expect(await readThrough([r2.out.image.path], '/opt/env/greeting')).toBe('built-by-cwl');
  });

  it('overlay-check.cwl: clean images give a clean report', async () => {
    const dir = await workDir('check-clean', { 'a.img': cleanImage, 'b.img': cleanImage });
    const r = await cwltool(dir, join(CWL, 'overlay-check.cwl'), {
      images: [file(join(dir, 'a.img')), file(join(dir, 'b.img'))],
    });
    expect(r.exitCode, describeRun(r)).toBe(0);
    const report = await readJson(r.out.report.path);
    expect(report.counts).toMatchObject({ clean: 2, corrupt: 0, error: 0, locked: 0 });
  });

  it('overlay-check.cwl: a corrupt image fails the job (permanentFail), and the report it still delivers says why', async () => {
    const dir = await workDir('check-corrupt', { 'a.img': cleanImage, 'bad.img': corruptImage });
    const r = await cwltool(dir, join(CWL, 'overlay-check.cwl'), {
      images: [file(join(dir, 'a.img')), file(join(dir, 'bad.img'))],
    });
    expect(r.exitCode, describeRun(r)).not.toBe(0);
    expect(r.all).toMatch(/exited with status: 1/);
    expect(r.all).toMatch(/completed permanentFail/);
    const report = await readJson(r.out.report.path);
    const bad = report.images.find((i: Json) => i.image.endsWith('bad.img'));
    expect(['corrupt', 'error']).toContain(bad.status);
    expect(bad.problems.length).toBeGreaterThan(0);
    expect(report.images.find((i: Json) => i.image.endsWith('a.img')).status).toBe('clean');
  });

  it('overlay-resize.cwl: resizes a copy; the input is untouched', async () => {
    const dir = await workDir('resize', { 'env.img': cleanImage });
    const before = await sha256File(join(dir, 'env.img'));
    const r = await cwltool(dir, join(CWL, 'overlay-resize.cwl'), {
      image: file(join(dir, 'env.img')),
      size: '128M',
    });
    expect(r.exitCode, describeRun(r)).toBe(0);
    expect((await stat(r.out.image_out.path)).size).toBe(128 * 2 ** 20);
    expect(await readJson(r.out.report.path)).toMatchObject({
      sizeBytes: 128 * 2 ** 20,
      previousSizeBytes: 64 * 2 ** 20,
    });
    expect(await sha256File(join(dir, 'env.img'))).toBe(before);
    expect(await readThrough([r.out.image_out.path], '/opt/env/greeting')).toBe('hello from the overlay');
  });

  it('overlay-commit.cwl: a SquashFS layer that Apptainer stacks', async () => {
    const dir = await workDir('commit', { 'env.img': cleanImage });
    const r = await cwltool(dir, join(CWL, 'overlay-commit.cwl'), {
      image: file(join(dir, 'env.img')),
      layer_name: 'env.sqf',
    });
    expect(r.exitCode, describeRun(r)).toBe(0);
    expect(r.out.layer.basename).toBe('env.sqf');
    expect((await readJson(r.out.report.path)).sha256).toBe(await sha256File(r.out.layer.path));
    expect(await readThrough([r.out.layer.path], '/opt/env/greeting')).toBe('hello from the overlay');
  });

  it('an image held writable by a running container fails the job at once: E_LOCKED in the log, exit 75 = temporaryFail', async () => {
    const dir = await workDir('locked', { 'env.img': cleanImage });
    const holder = await holdWritable(join(dir, 'env.img'), base);
    try {
      // the container sleeps 600 s: finishing at all (inside the test timeout) means no waiting
      const r = await cwltool(dir, join(CWL, 'overlay-commit.cwl'), { image: file(join(dir, 'env.img')) });
      expect(r.exitCode, describeRun(r)).not.toBe(0);
      expect(r.all).toMatch(/^E_LOCKED: .*env\.img is in use/m);
      expect(r.all).toMatch(/exited with status: 75/);
      expect(r.all).toMatch(/completed temporaryFail/);
    } finally {
      await holder.stop();
    }
  });
});

describe('packages/cwl/examples: check the image, then a step inside the overlay', () => {
  it('runs check-then-run.cwl with its job.yml under cwltool --singularity and APPTAINER_OVERLAY', async () => {
    const dir = await workDir('example', { 'env.img': cleanImage });
    await copyFile(join(CWL, 'examples/job.yml'), join(dir, 'job.yml'));
    const sifs = join(dir, 'sifs');
    await mkdir(sifs);
    await copyFile(base, join(sifs, 'overlay-example-base.sif'));
    const r = await run(
      [
        'cwltool',
        '--singularity',
        '--outdir',
        join(dir, 'out'),
        join(CWL, 'examples/check-then-run.cwl'),
        'job.yml',
      ],
      dir,
      env,
      { APPTAINER_OVERLAY: `${join(dir, 'env.img')}:ro`, CWL_SINGULARITY_CACHE: sifs },
    );
    expect(r.exitCode, describeRun(r)).toBe(0);
    const out = JSON.parse(r.stdout);
    expect((await readJson(out.report.path)).counts.clean).toBe(1);
    expect(await readFile(out.greeting.path, 'utf8')).toBe('hello cwl from the overlay\n');
    expect(r.all).toMatch(/singularity[\s\S]*exec/); // the step ran in a container
  });
});
