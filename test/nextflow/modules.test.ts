// biome-ignore-all lint/suspicious/noTemplateCurlyInString: Groovy GStrings, not JS templates
// The Nextflow modules in packages/nextflow, without Nextflow (it cannot be installed on these
// machines): each module's `script:` and `stub:` blocks are read from main.nf, the declared inputs
// are given real values (files staged as symlinks, as Nextflow does), the block runs with bash
// under nf-core's shell options in a fresh work directory with `overlayctl` on PATH, and every
// declared output must appear under its declared glob, with JSON that parses. The real runs use
// real images, Apptainer and a shared cache store; the chain is the example pipeline's:
// setup (build / restore) → check → resize → commit → a process reading the layer read-only.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, chown, copyFile, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT_STATUS } from '../../packages/core/src/errors';
import { ensureBaseImage } from '../helpers/base-image';
import { isRoot, SYSTEM_PATH } from '../helpers/tools';
import { ensureTestUser, makeUserDir, runAs, type TestUser } from '../helpers/users';
import { holdWritable } from '../workflows/helpers';
import { type NfProcess, parseProcess, type Value } from './nf-extract';
import { describeTask, type Runner, runTask, type TaskResult, topicVersions } from './nf-task';

// biome-ignore lint/suspicious/noExplicitAny: overlayctl's JSON; the tests assert its shape
type Json = Record<string, any>;

const ROOT = resolve(import.meta.dirname, '../..');
const MODULES = join(ROOT, 'packages/nextflow/modules/overlay');
const OVERLAYCTL = join(ROOT, 'node_modules/.bin/overlayctl');

interface ModuleSpec {
  dir: 'setup' | 'resize' | 'check' | 'commit';
  process: string;
  /** the `--json` result file: `*.<op>.json` */
  op: string;
  /** the emit name and glob of the main artefact, if the module makes one */
  product?: { emit: string; glob: string };
  /** the system tool whose version the module reports besides overlayctl's */
  tool: string;
}
const SPECS: ModuleSpec[] = [
  {
    dir: 'setup',
    process: 'OVERLAY_SETUP',
    op: 'setup',
    product: { emit: 'image', glob: '*.img' },
    tool: 'apptainer',
  },
  {
    dir: 'resize',
    process: 'OVERLAY_RESIZE',
    op: 'resize',
    product: { emit: 'image', glob: '*.img' },
    tool: 'e2fsprogs',
  },
  { dir: 'check', process: 'OVERLAY_CHECK', op: 'check', tool: 'e2fsprogs' },
  {
    dir: 'commit',
    process: 'OVERLAY_COMMIT',
    op: 'commit',
    product: { emit: 'layer', glob: '*.sqf' },
    tool: 'squashfs-tools',
  },
];

const modules = new Map<string, NfProcess>();
async function loadModule(dir: string): Promise<NfProcess> {
  if (!modules.has(dir))
    modules.set(dir, parseProcess(await readFile(join(MODULES, dir, 'main.nf'), 'utf8')));
  return modules.get(dir)!;
}

let tmp: string;
let bin: string;
let baseSif: string;
let counter = 0;
let expectedVersion: string;

/** The environment a Nextflow task would see here: overlayctl only through the symlink in `bin`. */
function taskEnv(home = process.env.HOME ?? '/root'): Record<string, string> {
  return {
    PATH: [bin, dirname(process.execPath), SYSTEM_PATH].join(':'),
    HOME: home,
    LANG: 'C.UTF-8',
    OVERLAYCTL_QUIET: '1',
  };
}

async function newWorkDir(label: string): Promise<string> {
  const dir = join(tmp, 'work', `${String(++counter).padStart(2, '0')}-${label}`);
  await mkdir(dir, { recursive: true });
  return dir;
}

interface Run {
  inputs: Record<string, Value>;
  ext?: Record<string, Value>;
  block?: 'script' | 'stub';
  workDir?: string;
  run?: Runner;
  home?: string;
}
async function task(dir: ModuleSpec['dir'], r: Run): Promise<TaskResult> {
  return runTask({
    proc: await loadModule(dir),
    block: r.block,
    inputs: r.inputs,
    ext: r.ext,
    workDir: r.workDir ?? (await newWorkDir(`${dir}${r.block === 'stub' ? '-stub' : ''}`)),
    env: taskEnv(r.home),
    run: r.run,
  });
}

async function readJson(file: string): Promise<Json> {
  const text = await readFile(file, 'utf8');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${file} is not JSON: ${(e as Error).message}\n${text.slice(0, 500)}`);
  }
}

/** Exit 0, every declared output present (one file each), every JSON output parses. */
async function expectTaskOk(r: TaskResult, spec: ModuleSpec): Promise<Json> {
  expect(r.exitCode, describeTask(r)).toBe(0);
  expect(r.missing, describeTask(r)).toEqual([]);
  for (const [emit, files] of Object.entries(r.outputs)) expect(files, `emit ${emit}`).toHaveLength(1);
  // nf-core's topic-channel versions: [process, tool, version] tuples from eval outputs
  const versions = topicVersions(r);
  expect(versions.process).toBe(spec.process);
  expect(versions.tools.overlayctl).toBe(expectedVersion);
  expect(versions.tools[spec.tool]).toMatch(/^\d+\.\d+(\.\d+)?$/);
  expect(r.values.versions_overlayctl).toEqual([spec.process, 'overlayctl', expectedVersion]);
  const json = await readJson(r.outputs.json![0]!);
  expect(r.outputs.json![0]).toMatch(new RegExp(`\\.${spec.op}\\.json$`));
  return json;
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex');
}

async function overlayctl(...args: string[]): Promise<Json> {
  const r = await execa(OVERLAYCTL, [...args, '--json'], { reject: false });
  return JSON.parse(String(r.stdout));
}

/** What a pipeline process sees through `--overlay X:ro` on the base image. */
async function runReadOnly(overlays: string[], argv: string[]): Promise<string> {
  const r = await execa(
    'apptainer',
    ['exec', ...overlays.flatMap((o) => ['--overlay', `${o}:ro`]), baseSif, ...argv],
    { reject: false },
  );
  if (r.exitCode !== 0) throw new Error(`apptainer exec failed (${r.exitCode}): ${r.stderr}`);
  return String(r.stdout).trim();
}

/** A build script of the kind users write (here for a busybox base): many files under /opt/env. */
function envScript(greeting: string): string {
  return `#!/bin/sh
# runs inside the base container with the overlay mounted writable
set -eu
mkdir -p /opt/env/bin /opt/env/share
cat > /opt/env/bin/hello <<'EOS'
#!/bin/sh
echo "${greeting}"
EOS
chmod 755 /opt/env/bin/hello
i=0
while [ "$i" -lt 200 ]; do echo "file $i" > "/opt/env/share/f$i"; i=$((i + 1)); done
`;
}
const BUILD_ARGS = '--size 96M --profile small --create-dir /opt/env';

async function writeInput(name: string, content: string, mode = 0o644): Promise<string> {
  const dir = join(tmp, 'inputs');
  await mkdir(dir, { recursive: true });
  const file = join(dir, name);
  await writeFile(file, content, { mode });
  return file;
}

beforeAll(async () => {
  tmp = await mkdtemp('/tmp/overlay-nf-');
  await chmod(tmp, 0o755);
  bin = join(tmp, 'bin');
  await mkdir(bin);
  await symlink(OVERLAYCTL, join(bin, 'overlayctl'));
  expectedVersion = String((await execa(OVERLAYCTL, ['--version'])).stdout).trim();
  baseSif = await ensureBaseImage(); // busybox-static SIF, built offline once per machine
});

afterAll(async () => {
  if (tmp && !process.env.OVERLAY_KEEP_TMP) await rm(tmp, { recursive: true, force: true });
});

/** How meta.yml (nf-core's schema) names an output item: the variable, the glob, the value or the command. */
function metaKey(item: NfProcess['outputs'][number]['items'][number]): string {
  if (item.kind === 'val' && item.name) return `${item.name}:`;
  if (item.kind === 'val') {
    const literal = /^'([^']*)'$/.exec(item.expr!);
    return literal ? `${literal[1]}:` : `${item.expr}:`; // "${task.process}" stays quoted
  }
  if (item.kind === 'eval') return `'${item.pattern!.replace(/\\(.)/g, '$1').replaceAll("'", "''")}':`;
  return `"${item.pattern}":`;
}

describe.each(SPECS)('module $process: main.nf and meta.yml', (spec) => {
  it('is an nf-core-shaped process: tag, label, typed input, emits, versions, when, script, stub', async () => {
    const p = await loadModule(spec.dir);
    expect(p.name).toBe(spec.process);
    expect(p.directives).toContainEqual({ name: 'tag', value: '"$meta.id"' });
    const labels = p.directives.filter((d) => d.name === 'label').map((d) => d.value);
    expect(labels).toHaveLength(1);
    expect(["'process_single'", "'process_low'"]).toContain(labels[0]);
    expect(p.inputs[0]!.items[0]).toEqual({ kind: 'val', name: 'meta' });
    expect(p.inputs[0]!.items[1]!.kind).toBe('path');
    expect(p.when).toBe('task.ext.when == null || task.ext.when');

    for (const o of p.outputs) expect(o.emit, o.text).toBeTruthy();
    // versions through the `versions` topic (no versions.yml): overlayctl's and the tool's
    const topics = p.outputs.filter((o) => o.topic);
    expect(topics.map((o) => [o.emit, o.topic])).toEqual([
      ['versions_overlayctl', 'versions'],
      [`versions_${spec.tool.replace('-', '_')}`, 'versions'],
    ]);
    expect(topics[0]!.items).toEqual([
      { kind: 'val', expr: '"${task.process}"' },
      { kind: 'val', expr: "'overlayctl'" },
      { kind: 'eval', pattern: 'overlayctl --version', quote: "'" },
    ]);
    expect(topics[1]!.items.slice(0, 2)).toEqual([
      { kind: 'val', expr: '"${task.process}"' },
      { kind: 'val', expr: `'${spec.tool}'` },
    ]);
    expect(topics[1]!.items[2]!.kind).toBe('eval');
    expect(p.script.template + (p.stub?.template ?? '')).not.toContain('versions.yml');
    const json = p.outputs.find((o) => o.emit === 'json')!;
    expect(json.items).toEqual([
      { kind: 'val', name: 'meta' },
      { kind: 'path', pattern: `*.${spec.op}.json`, quote: '"' },
    ]);
    if (spec.product) {
      const product = p.outputs.find((o) => o.emit === spec.product!.emit)!;
      expect(product.items).toEqual([
        { kind: 'val', name: 'meta' },
        { kind: 'path', pattern: spec.product.glob, quote: '"' },
      ]);
    }

    for (const block of [p.script, p.stub!]) {
      expect(block.defs.find((d) => d.name === 'prefix')?.expr).toMatch(/^task\.ext\.prefix \?: "/);
    }
    expect(p.script.defs.find((d) => d.name === 'args')?.expr).toMatch(/^task\.ext\.args\s+\?: ''$/);
    expect(p.script.template).toMatch(
      new RegExp(`overlayctl ${spec.dir === 'setup' ? 'build' : spec.dir}\\b`),
    );
    expect(p.script.template).toContain('--json');
    expect(p.script.template).toContain('${args}');
  });

  it('tests/main.nf.test is an nf-test of this process: script, process, a stub test, declared emits only', async () => {
    const p = await loadModule(spec.dir);
    const text = await readFile(join(MODULES, spec.dir, 'tests/main.nf.test'), 'utf8');
    expect(text).toMatch(/^nextflow_process \{$/m);
    expect(text).toContain('script "../main.nf"');
    expect(text).toContain(`process "${spec.process}"`);
    expect(text).toMatch(/test\("stub"\) \{\s+options "-stub"/);
    const emits = new Set(p.outputs.map((o) => o.emit));
    const used = [...text.matchAll(/process\.out\.([A-Za-z_][A-Za-z0-9_]*)/g)].map((m) => m[1]!);
    expect(used.length).toBeGreaterThan(0);
    for (const emit of used) expect(emits, `process.out.${emit}`).toContain(emit);
    // every nf-test file reads the base from the config beside it
    expect(await readFile(join(MODULES, spec.dir, 'tests/nextflow.config'), 'utf8')).toContain(
      'overlay_test_base',
    );
  });

  it('meta.yml documents every input and output of main.nf', async () => {
    const p = await loadModule(spec.dir);
    const meta = await readFile(join(MODULES, spec.dir, 'meta.yml'), 'utf8');
    expect(meta).toMatch(new RegExp(`^name: "?overlay_${spec.dir}"?$`, 'm'));
    const [, inputSection = '', outputSection = ''] =
      /^input:\n([\s\S]*?)^output:\n([\s\S]*?)^\S/m.exec(meta) ?? [];
    for (const item of p.inputs.flatMap((i) => i.items))
      expect(inputSection, `input ${item.name}`).toMatch(new RegExp(`^\\s*(- )+${item.name}:$`, 'm'));
    const topicsSection = /^topics:\n([\s\S]*?)^\S/m.exec(meta)?.[1] ?? '';
    for (const o of p.outputs) {
      expect(outputSection, `output ${o.emit}`).toMatch(new RegExp(`^  ${o.emit}:$`, 'm'));
      for (const item of o.items) {
        const key = metaKey(item);
        expect(outputSection, `output ${o.emit} ${key}`).toContain(key);
        if (o.topic) {
          expect(topicsSection, `topics: ${o.topic}`).toMatch(new RegExp(`^  ${o.topic}:$`, 'm'));
          expect(topicsSection, `topics: ${o.topic} ${key}`).toContain(key);
        }
      }
    }
  });
});

describe('stub blocks (nextflow run -stub)', () => {
  const stubInputs = async (dir: ModuleSpec['dir']): Promise<Record<string, Value>> => {
    const img = await writeInput('stub.img', '');
    switch (dir) {
      case 'setup':
        return {
          meta: { id: 'env' },
          env_script: await writeInput('stub-env.sh', 'true\n'),
          base: baseSif,
          cache_store: '',
        };
      case 'resize':
        return { meta: { id: 'env' }, image: img, size: '1G' };
      case 'check':
        return { meta: { id: 'env' }, images: [img] };
      case 'commit':
        return { meta: { id: 'env' }, image: img };
    }
  };
  it.each(SPECS)('$process stub: every declared output appears and its JSON parses', async (spec) => {
    const r = await task(spec.dir, { block: 'stub', inputs: await stubInputs(spec.dir) });
    await expectTaskOk(r, spec);
    if (spec.product) expect(r.outputs[spec.product.emit]![0]).toMatch(/\/env(\.resized)?\.(img|sqf)$/);
  });
});

describe('the modules with real images, Apptainer and a shared cache store', () => {
  const setup = SPECS[0]!;
  const resize = SPECS[1]!;
  const check = SPECS[2]!;
  const commit = SPECS[3]!;
  let hello: string;
  /** An environment image made without the modules (create + apptainer exec), as an earlier task's output. */
  let envImage: string;

  beforeAll(async () => {
    hello = await writeInput('env.sh', envScript('hello from the overlay'));
    const dir = join(tmp, 'fixture');
    await mkdir(dir);
    envImage = join(dir, 'env.img');
    await execa(OVERLAYCTL, ['create', envImage, ...BUILD_ARGS.split(' '), '--json']);
    await execa('apptainer', ['exec', '--overlay', envImage, baseSif, 'sh', hello]);
  });

  it('OVERLAY_SETUP without a store builds the environment into <meta.id>.img', async () => {
    const r = await task('setup', {
      inputs: { meta: { id: 'env' }, env_script: hello, base: baseSif, cache_store: null },
      ext: { args: BUILD_ARGS },
    });
    const json = await expectTaskOk(r, setup);
    expect(r.outputs.image![0]).toBe(join(r.workDir, 'env.img'));
    expect(r.values.image).toEqual([{ id: 'env' }]);
    expect(json).toMatchObject({ source: 'build', restore: null, save: null });
    expect(json.build).not.toBeNull();
    expect(json.build.error).toBeUndefined();
    expect(json.info).toMatchObject({ format: 'ext3', apptainerCompatible: true, sizeBytes: 96 * 2 ** 20 });
    expect(await runReadOnly([r.outputs.image![0]!], ['/opt/env/bin/hello'])).toBe('hello from the overlay');
  });

  it('OVERLAY_SETUP on two "nodes" sharing a store: the first builds and saves, the second restores the same image', async () => {
    const store = join(tmp, 'shared-store');
    const inputs = { meta: { id: 'env' }, env_script: hello, base: baseSif, cache_store: store };
    const first = await task('setup', { inputs, ext: { args: BUILD_ARGS } });
    const a = await expectTaskOk(first, setup);
    expect(a).toMatchObject({ source: 'build' });
    expect(a.build?.error).toBeUndefined();
    expect(a.save).not.toBeNull();
    expect(a.save.error).toBeUndefined();

    const second = await task('setup', { inputs, ext: { args: BUILD_ARGS } });
    const b = await expectTaskOk(second, setup);
    expect(b).toMatchObject({ source: 'cache', key: a.key, build: null, save: null });
    expect(b.restore?.error).toBeUndefined();
    // the same filesystem, not a second build of it
    expect(b.info.uuid).toBe(a.info.uuid);
    expect(await runReadOnly([second.outputs.image![0]!], ['/opt/env/bin/hello'])).toBe(
      'hello from the overlay',
    );

    // another build script is another environment: another key, built again
    const other = await writeInput('env-other.sh', envScript('another environment'));
    const third = await task('setup', {
      inputs: { ...inputs, env_script: other },
      ext: { args: BUILD_ARGS },
    });
    const c = await expectTaskOk(third, setup);
    expect(c.key).not.toBe(a.key);
    expect(c.source).toBe('build');
    expect(await runReadOnly([third.outputs.image![0]!], ['/opt/env/bin/hello'])).toBe('another environment');
  });

  it('OVERLAY_SETUP: two tasks racing on an empty store both succeed, and the next one restores', async () => {
    const store = join(tmp, 'race-store');
    const script = await writeInput('env-race.sh', envScript('raced'));
    const inputs = { meta: { id: 'race' }, env_script: script, base: baseSif, cache_store: store };
    const [x, y] = await Promise.all([
      task('setup', { inputs, ext: { args: BUILD_ARGS } }),
      task('setup', { inputs, ext: { args: BUILD_ARGS } }),
    ]);
    await expectTaskOk(x, setup);
    await expectTaskOk(y, setup);
    const z = await task('setup', { inputs, ext: { args: BUILD_ARGS } });
    expect(await expectTaskOk(z, setup)).toMatchObject({ source: 'cache' });
    expect(await runReadOnly([z.outputs.image![0]!], ['/opt/env/bin/hello'])).toBe('raced');
  });

  it('OVERLAY_CHECK reports one image, and several at once, clean', async () => {
    const one = await task('check', { inputs: { meta: { id: 'env' }, images: envImage } });
    const a = await expectTaskOk(one, check);
    expect(a.images).toHaveLength(1);
    expect(a.images[0]).toMatchObject({ status: 'clean' });
    expect(a.images[0].path).toMatch(/env\.img$/);

    const copy = join(tmp, 'inputs', 'copy.img');
    await copyFile(envImage, copy);
    const two = await task('check', { inputs: { meta: { id: 'envs' }, images: [envImage, copy] } });
    const b = await expectTaskOk(two, check);
    expect(b.images.map((i: { status: string }) => i.status)).toEqual(['clean', 'clean']);
    expect(two.outputs.json![0]).toBe(join(two.workDir, 'envs.check.json'));
  });

  it('OVERLAY_CHECK fails the task on a damaged image, with the report written and on stderr', async () => {
    const damaged = join(tmp, 'inputs', 'damaged.img');
    await copyFile(envImage, damaged);
    await execa('debugfs', ['-w', '-R', 'clri /upper/opt', damaged]);
    const before = await sha256(damaged);
    const r = await task('check', { inputs: { meta: { id: 'damaged' }, images: damaged } });
    expect(r.exitCode, describeTask(r)).not.toBe(0);
    const report = await readJson(join(r.workDir, 'damaged.check.json'));
    expect(report.images[0].status).toBe('corrupt');
    expect(r.stderr).toContain('OVERLAY_CHECK: not every image is clean');
    expect(r.stderr).toContain('"corrupt"');
    expect(await sha256(damaged)).toBe(before); // read-only check
  });

  it('OVERLAY_RESIZE grows a copy; the input (another task’s output) is untouched', async () => {
    const before = await sha256(envImage);
    const r = await task('resize', { inputs: { meta: { id: 'env' }, image: envImage, size: '160M' } });
    const json = await expectTaskOk(r, resize);
    expect(json.error).toBeUndefined();
    const out = r.outputs.image![0]!;
    expect(out).toBe(join(r.workDir, 'env.resized.img'));
    expect(await overlayctl('info', out)).toMatchObject({
      format: 'ext3',
      sizeBytes: 160 * 2 ** 20,
      sparse: true,
    });
    expect(await sha256(envImage)).toBe(before);
    expect(await runReadOnly([out], ['/opt/env/bin/hello'])).toBe('hello from the overlay');
  });

  it('OVERLAY_RESIZE refuses an output name equal to the input’s (set task.ext.prefix)', async () => {
    const r = await task('resize', {
      inputs: { meta: { id: 'env' }, image: envImage, size: '160M' },
      ext: { prefix: 'env' },
    });
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain('set task.ext.prefix');
    expect(r.outputs.json).toEqual([]);
  });

  it('OVERLAY_COMMIT on an image a running container writes to fails at once with 75 (retryable) and E_LOCKED', async () => {
    const held = join(tmp, 'inputs', 'held.img');
    await copyFile(envImage, held);
    const holder = await holdWritable(held, baseSif);
    try {
      const r = await task('commit', { inputs: { meta: { id: 'held' }, image: held } });
      expect(r.exitCode, describeTask(r)).toBe(EXIT_STATUS.retryable);
      expect(r.stderr).toMatch(/^E_LOCKED: /m);
      expect((await readJson(join(r.workDir, 'held.commit.json'))).error.code).toBe('E_LOCKED');
      expect(r.outputs.layer).toEqual([]);
    } finally {
      await holder.stop();
    }
  });

  it('OVERLAY_COMMIT freezes the environment into a SquashFS layer that a process reads with --overlay :ro', async () => {
    const before = await sha256(envImage);
    const r = await task('commit', {
      inputs: { meta: { id: 'env' }, image: envImage },
      ext: { args: '--compression gzip' },
    });
    const json = await expectTaskOk(r, commit);
    expect(json.error).toBeUndefined();
    const layer = r.outputs.layer![0]!;
    expect(layer).toBe(join(r.workDir, 'env.sqf'));
    expect((await readFile(layer)).subarray(0, 4).toString('latin1')).toBe('hsqs');
    expect(await sha256(envImage)).toBe(before);
    // the example pipeline's last step: a process with the layer mounted read-only
    expect(await runReadOnly([layer], ['/opt/env/bin/hello'])).toBe('hello from the overlay');
    expect(await runReadOnly([layer], ['sh', '-c', 'ls /opt/env/share | wc -l'])).toBe('200');
  });
  it('the example pipeline, task by task: SETUP → CHECK → COMMIT → a process reading the layer', async () => {
    const s = await task('setup', {
      inputs: {
        meta: { id: 'env' },
        env_script: hello,
        base: baseSif,
        cache_store: join(tmp, 'pipeline-store'),
      },
      ext: { args: BUILD_ARGS },
    });
    await expectTaskOk(s, setup);
    // each task gets the tuple the previous one emitted: [meta, file]
    const meta = s.values.image![0]!;
    const image = s.outputs.image![0]!;
    const c = await task('check', { inputs: { meta, images: image } });
    expect((await expectTaskOk(c, check)).images[0].status).toBe('clean');
    const m = await task('commit', { inputs: { meta, image } });
    await expectTaskOk(m, commit);
    expect(await runReadOnly([m.outputs.layer![0]!], ['/opt/env/bin/hello'])).toBe('hello from the overlay');
  });
});

describe.runIf(isRoot())('OVERLAY_SETUP as an unprivileged cluster user', () => {
  let user: TestUser;
  let work: string;
  const asUser: Runner = async (argv, cwd, env) => {
    const r = await runAs(user, argv, { cwd, env });
    return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
  };
  const setup = SPECS[0]!;

  beforeAll(async () => {
    user = await ensureTestUser();
    work = await makeUserDir(user, 'overlay-nf-');
  });
  afterAll(async () => {
    if (work && !process.env.OVERLAY_KEEP_TMP) await rm(work, { recursive: true, force: true });
  });

  async function userTask(label: string, inputs: Record<string, Value>): Promise<TaskResult> {
    const dir = join(work, label);
    await mkdir(dir);
    await chown(dir, user.uid, user.gid);
    return task('setup', { inputs, ext: { args: BUILD_ARGS }, workDir: dir, run: asUser, home: user.home });
  }

  it('builds without root, saves to a store the user owns, and a second task restores it', async () => {
    const store = join(work, 'store');
    const script = await writeInput('env-user.sh', envScript('hello, unprivileged'));
    const inputs = { meta: { id: 'userenv' }, env_script: script, base: baseSif, cache_store: store };
    const first = await userTask('first', inputs);
    const a = await expectTaskOk(first, setup);
    expect(a.source).toBe('build');
    expect(a.info.upper).toEqual({ uid: user.uid, gid: user.gid });
    const second = await userTask('second', inputs);
    const b = await expectTaskOk(second, setup);
    expect(b).toMatchObject({ source: 'cache', key: a.key });
    expect(existsSync(join(store))).toBe(true);
    const r = await runAs(user, [
      'apptainer',
      'exec',
      '--overlay',
      `${second.outputs.image![0]}:ro`,
      baseSif,
      '/opt/env/bin/hello',
    ]);
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(String(r.stdout).trim()).toBe('hello, unprivileged');
  });
});

describe('packages/nextflow/examples', () => {
  const EXAMPLES = join(ROOT, 'packages/nextflow/examples');

  it('main.nf includes the modules that exist, calls them with their declared inputs, uses declared emits', async () => {
    const source = await readFile(join(EXAMPLES, 'main.nf'), 'utf8');
    const includes = [...source.matchAll(/^include \{ (\w+)\s*\} from '([^']+)'$/gm)];
    expect(includes.map((m) => m[1])).toEqual(['OVERLAY_SETUP', 'OVERLAY_CHECK', 'OVERLAY_COMMIT']);
    for (const [, name, from] of includes) {
      const file = resolve(EXAMPLES, `${from}.nf`);
      const proc = parseProcess(await readFile(file, 'utf8'));
      expect(proc.name).toBe(name);
      const call = new RegExp(`^\\s*${name}\\((.*)\\)\\s*$`, 'm').exec(source);
      expect(call, `${name}(…) is called`).toBeTruthy();
      expect(call![1]!.split(',').length, `${name} arguments`).toBe(proc.inputs.length);
      for (const [, emit] of source.matchAll(new RegExp(`${name}\\.out\\.(\\w+)`, 'g')))
        expect(proc.outputs.map((o) => o.emit)).toContain(emit);
    }
  });

  it('env.sh is valid sh, and nextflow.config gives OVERLAY_SETUP create options', async () => {
    const r = await execa('sh', ['-n', join(EXAMPLES, 'env.sh')], { reject: false });
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const config = await readFile(join(EXAMPLES, 'nextflow.config'), 'utf8');
    expect(config).toMatch(
      /withName: 'OVERLAY_SETUP' \{\s*\n(\s*\/\/.*\n)*\s*ext\.args = '--size \S+ --profile/,
    );
    expect(config).toMatch(/^\s*enabled\s*= true$/m);
  });
});
