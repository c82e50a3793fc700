import { promises as fsp } from 'node:fs';
import { join, resolve } from 'node:path';
import { OverlayError } from '../errors';
import { exists, removeStaleTemps, replaceAtomically } from '../fs/atomic';
import { PROFILES } from '../image/create';
import type { ImageInfo } from '../image/info';
import { MiB } from '../size';
import { findTool, runTool } from '../tools/run';
import { findRuntime } from '../tools/runtime';
import { buildInOverlay, checkBuilt } from './build';
import { runInContainer } from './exec';

/**
 * The main job, end to end and offline (only the machine's Debian mirror is used):
 *   1. base.sif: Debian bookworm minbase, bootstrapped by Apptainer from base.def (built once)
 *   2. env.img: a new ext3 overlay (`small` profile) with a Python environment installed into it
 *      by apt inside the container (install.sh); apt's lists and .debs stay in DIR/apt, outside
 *   3. check the image, then run the installed software read-only (`--overlay env.img:ro`)
 */

const PACKAGES = ['python3', 'python3-yaml', 'python3-jinja2', 'python3-requests', 'python3-numpy'];

const INSTALL_SH = `# The demo's build: a Python environment from Debian packages, installed into the overlay.
# apt's package lists and downloaded .debs are bind-mounted from the demo directory, and its
# binary caches are turned off, so the image holds only the installed software.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt="apt-get -q -y -o APT::Sandbox::User=root -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache="
$apt update
$apt install --no-install-recommends ${PACKAGES.join(' ')}
`;

const CHECK_PY = `import sys, yaml, jinja2, numpy, requests
mods = yaml.safe_load("[yaml, jinja2, numpy, requests]")
print(jinja2.Template("python {{ v }}: {{ m | join(', ') }}").render(
    v=sys.version.split()[0], m=[f"{n} {sys.modules[n].__version__}" for n in mods]))
print("numpy.linspace(0, 1, 5).sum() =", numpy.linspace(0, 1, 5).sum())
`;

/** The first Debian mirror the host's apt uses (OVERLAY_DEMO_MIRROR overrides it). */
export async function hostMirror(): Promise<string> {
  if (process.env.OVERLAY_DEMO_MIRROR) return process.env.OVERLAY_DEMO_MIRROR;
  const dir = '/etc/apt/sources.list.d';
  const files = [
    '/etc/apt/sources.list',
    ...(await fsp.readdir(dir).catch(() => [])).map((f) => join(dir, f)),
  ];
  for (const file of files) {
    const text = await fsp.readFile(file, 'utf8').catch(() => '');
    for (const m of text.matchAll(/^(?:URIs:|deb(?:\s+\[[^\]]*\])?)\s+(\S+)/gm)) {
      if (/^https?:\/\//.test(m[1]!) && !/security/.test(m[1]!)) return m[1]!;
    }
  }
  return 'http://deb.debian.org/debian';
}

const seconds = (ms: number) => Math.round(ms / 10) / 100;

/** base.sif from base.def (Apptainer's debootstrap agent), rebuilt only when the recipe changes. */
async function demoBase(dir: string, log: (m: string) => void) {
  const sif = join(dir, 'base.sif');
  const def = join(dir, 'base.def');
  const recipe = `Bootstrap: debootstrap\nOSVersion: bookworm\nMirrorURL: ${await hostMirror()}\n`;
  const t0 = Date.now();
  if ((await exists(sif)) && (await fsp.readFile(def, 'utf8').catch(() => '')) === recipe) {
    return { path: sif, built: false, seconds: 0 };
  }
  if (!findTool('debootstrap') && process.getuid?.() === 0 && findTool('apt-get')) {
    log('installing debootstrap (apt-get)');
    await runTool('apt-get', ['install', '-y', '-q', '--no-install-recommends', 'debootstrap']);
  }
  const runtime = findRuntime();
  await fsp.writeFile(def, recipe);
  log(`building base.sif: Debian bookworm minbase from ${recipe.split('MirrorURL: ')[1]!.trim()}`);
  const fakeroot = process.getuid?.() === 0 ? [] : ['--fakeroot'];
  await replaceAtomically(
    sif,
    (tmp) => runTool(runtime.name, ['build', ...fakeroot, tmp, def], { timeoutSeconds: 1800, onLine: log }),
    { precreate: false },
  );
  return { path: sif, built: true, seconds: seconds(Date.now() - t0) };
}

export interface DemoResult {
  dir: string;
  base: { path: string; sizeBytes: number; built: boolean; seconds: number };
  image: ImageInfo;
  packages: string[];
  packagesInstalled: number;
  buildSeconds: number;
  check: { status: string; seconds: number };
  run: { command: string[]; output: string; seconds: number };
  totalSeconds: number;
}

export async function runDemo(o: {
  dir: string;
  info: (m: string) => void;
  progress: (m: string) => void;
}): Promise<DemoResult> {
  const started = Date.now();
  const dir = resolve(o.dir);
  await fsp.mkdir(join(dir, 'apt/archives/partial'), { recursive: true });
  await fsp.mkdir(join(dir, 'apt/lists/partial'), { recursive: true });
  o.info(`demo: artefacts in ${dir}`);

  o.info('1/4 base image');
  const base = await demoBase(dir, o.progress);

  o.info(`2/4 overlay env.img (small profile) + install ${PACKAGES.join(' ')}`);
  const image = join(dir, 'env.img');
  await fsp.rm(image, { force: true });
  await removeStaleTemps(image);
  const script = join(dir, 'install.sh');
  await fsp.writeFile(script, INSTALL_SH);
  let packagesInstalled = 0;
  const built = await buildInOverlay({
    image,
    base: base.path,
    scriptFile: script,
    binds: [`${dir}/apt/archives:/var/cache/apt/archives`, `${dir}/apt/lists:/var/lib/apt/lists`],
    // root-owned upper/: plain root writes it, anyone else gets --fakeroot (apt needs root)
    create: {
      sizeBytes: 512 * MiB,
      inodeRatio: PROFILES.small.inodeRatio,
      reservedPercent: 0,
      sparse: true,
      owner: { uid: 0, gid: 0 },
      createDirs: [],
    },
    onProgress: (line) => {
      if (line.startsWith('Setting up ')) packagesInstalled++;
      o.progress(line);
    },
  });

  o.info('3/4 check');
  const t1 = Date.now();
  const check = await checkBuilt(image);
  const checkSeconds = seconds(Date.now() - t1);

  o.info('4/4 run the installed software read-only');
  const command = ['python3', '-c', CHECK_PY];
  const run = await runInContainer({ image, ro: true, base: base.path, command, stdout: 'capture' });
  if (run.exitCode !== 0)
    throw new OverlayError('E_BUILD_FAILED', `python3 in the overlay exited ${run.exitCode}`, {
      details: { stderr: run.stderr.trim().split('\n').slice(-10).join('\n') },
    });

  return {
    dir,
    base: { ...base, sizeBytes: (await fsp.stat(base.path)).size },
    image: built.info,
    packages: PACKAGES,
    packagesInstalled,
    buildSeconds: seconds(built.durationMs),
    check: { status: check.status, seconds: checkSeconds },
    run: {
      command: ['apptainer', 'exec', '--overlay', 'env.img:ro', 'base.sif', ...command],
      output: run.stdout ?? '',
      seconds: seconds(run.durationMs),
    },
    totalSeconds: seconds(Date.now() - started),
  };
}
