#!/usr/bin/env node
// Claim: `overlayctl exec` adds little to `apptainer exec`. Both run `true` in the same overlay on
// the same base, N times each, interleaved (so load drifts hit both); prints the mean and median
// wall time of each and their ratio. Usage: node bench/exec.mjs [N]   (default 20; root or not)
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const N = Number(process.argv[2] ?? 20);
const cli = join(import.meta.dirname, '../packages/cli/dist/overlayctl.mjs');
const runtime = ['apptainer', 'singularity'].find((r) => spawnSync(r, ['--version']).status === 0);
if (!runtime) throw new Error('no apptainer/singularity on PATH');
const dir = mkdtempSync(join(tmpdir(), 'bench-exec-'));

try {
  // a tiny offline base: busybox-static in a rootfs directory -> SIF
  const root = join(dir, 'rootfs');
  for (const d of ['bin', 'etc', 'tmp', 'opt']) mkdirSync(join(root, d), { recursive: true });
  cpSync('/bin/busybox', join(root, 'bin/busybox'));
  for (const applet of execFileSync('/bin/busybox', ['--list'], { encoding: 'utf8' })
    .split('\n')
    .filter(Boolean))
    if (!readdirSync(join(root, 'bin')).includes(applet)) symlinkSync('busybox', join(root, 'bin', applet));
  writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  const base = join(dir, 'base.sif');
  execFileSync(runtime, ['build', base, root], { stdio: 'ignore' });
  const img = join(dir, 'env.img');
  execFileSync(process.execPath, [cli, 'create', img, '--size', '64'], { stdio: 'ignore' });

  const variants = {
    [`${runtime} exec`]: [runtime, ['exec', '--overlay', img, base, 'true']],
    'overlayctl exec': [process.execPath, [cli, 'exec', img, '--base', base, '--', 'true']],
    // the floor: starting Node and loading the bundle, no container at all
    'overlayctl --version': [process.execPath, [cli, '--version']],
  };
  const times = Object.fromEntries(Object.keys(variants).map((k) => [k, []]));
  const once = ([file, args]) => {
    const t0 = process.hrtime.bigint();
    const r = spawnSync(file, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    if (r.status !== 0) throw new Error(`${file} ${args.join(' ')} failed: ${r.stderr}`);
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  for (const v of Object.values(variants)) once(v); // warm the page cache
  for (let i = 0; i < N; i++) for (const [name, v] of Object.entries(variants)) times[name].push(once(v));

  const mean = (a) => a.reduce((s, x) => s + x, 0) / a.length;
  const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
  console.log(`exec start-up, ${N} runs each of \`true\` (uid ${process.getuid()}, ${runtime})`);
  for (const [name, a] of Object.entries(times))
    console.log(
      `  ${name.padEnd(21)} mean ${mean(a).toFixed(1).padStart(7)} ms   median ${median(a).toFixed(1).padStart(7)} ms`,
    );
  const [plain, ours, floor] = Object.values(times);
  console.log(
    `  ratio overlayctl/plain: ${(mean(ours) / mean(plain)).toFixed(2)} (mean), ${(median(ours) / median(plain)).toFixed(2)} (median); ` +
      `overhead ${(mean(ours) - mean(plain)).toFixed(1)} ms per exec, of which ${mean(floor).toFixed(1)} ms is ` +
      `Node start-up + bundle load and ${(mean(ours) - mean(plain) - mean(floor)).toFixed(1)} ms the wrapper's own checks`,
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
