#!/usr/bin/env node
// Claim: `overlayctl exec` adds little to `apptainer exec`. Both run `true` in the same overlay on
// the same base, N times each, interleaved (so load drifts hit both); prints the mean and median
// wall time of each and their ratio. Twice: on a fresh 64 MiB image, and writable on an image with
// ~1 GB in use (as root, every writable exec leaves trusted.overlay.* attributes that overlayctl
// strips afterwards: in place, so the cost must not grow with the data; target ratio <= 1.5).
// Usage: node bench/exec.mjs [N] [MB_IN_USE]   (defaults 20 and 1000; root or not)
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const N = Number(process.argv[2] ?? 20);
const MB = Number(process.argv[3] ?? 1000);
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

  const big = join(dir, 'big.img');
  execFileSync(process.execPath, [cli, 'create', big, '--size', `${Math.ceil((MB * 1.5) / 1024)}G`], {
    stdio: 'ignore',
  });
  // ~MB MiB in use (random: a sparse copy cannot skip it), written through the container as a user would
  execFileSync(
    runtime,
    ['exec', '--overlay', big, base, 'dd', 'if=/dev/urandom', 'of=/opt/blob', 'bs=1M', `count=${MB}`],
    {
      stdio: 'ignore',
    },
  );
  const used = JSON.parse(
    execFileSync(process.execPath, [cli, 'info', big, '--json'], { encoding: 'utf8' }),
  ).usedBytes;
  const how = JSON.parse(
    execFileSync(process.execPath, [cli, 'exec', big, '--base', base, '--json', '--', 'true'], {
      encoding: 'utf8',
    }),
  ).normalized;

  const mean = (a) => a.reduce((s, x) => s + x, 0) / a.length;
  const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
  const once = ([file, args]) => {
    const t0 = process.hrtime.bigint();
    const r = spawnSync(file, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    if (r.status !== 0) throw new Error(`${file} ${args.join(' ')} failed: ${r.stderr}`);
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  const compare = (title, variants) => {
    const times = Object.fromEntries(Object.keys(variants).map((k) => [k, []]));
    for (const v of Object.values(variants)) once(v); // warm the page cache
    for (let i = 0; i < N; i++) for (const [name, v] of Object.entries(variants)) times[name].push(once(v));
    console.log(title);
    for (const [name, a] of Object.entries(times))
      console.log(
        `  ${name.padEnd(30)} mean ${mean(a).toFixed(1).padStart(7)} ms   median ${median(a).toFixed(1).padStart(7)} ms`,
      );
    const [plain, ours, floor] = Object.values(times);
    console.log(
      `  ratio overlayctl/plain: ${(mean(ours) / mean(plain)).toFixed(2)} (mean), ${(median(ours) / median(plain)).toFixed(2)} (median); ` +
        `overhead ${(mean(ours) - mean(plain)).toFixed(1)} ms per exec, of which ${mean(floor).toFixed(1)} ms is ` +
        `Node start-up + bundle load and ${(mean(ours) - mean(plain) - mean(floor)).toFixed(1)} ms the wrapper's own work`,
    );
  };
  const floor = ['overlayctl --version', [process.execPath, [cli, '--version']]];
  compare(
    `exec start-up, ${N} runs each of \`true\` in a fresh 64 MiB image (uid ${process.getuid()}, ${runtime})`,
    {
      [`${runtime} exec --overlay`]: [runtime, ['exec', '--overlay', img, base, 'true']],
      'overlayctl exec': [process.execPath, [cli, 'exec', img, '--base', base, '--', 'true']],
      [floor[0]]: floor[1],
    },
  );
  compare(
    `writable exec, ${N} runs each of \`true\` in an image with ${(used / 2 ** 20).toFixed(0)} MiB in use ` +
      `(after each exec overlayctl strips ${how?.xattrsStripped ?? 0} attributes: rewrite ${how?.rewrite ?? 'none'})`,
    {
      [`${runtime} exec --overlay`]: [runtime, ['exec', '--overlay', big, base, 'true']],
      'overlayctl exec (writable)': [process.execPath, [cli, 'exec', big, '--base', base, '--', 'true']],
      [floor[0]]: floor[1],
      // what stripping on a copy (before the in-place edit) added to every writable exec, at least
      'cp --sparse=always of the image': ['cp', ['--sparse=always', big, join(dir, 'copy.img')]],
    },
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
