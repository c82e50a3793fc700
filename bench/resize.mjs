#!/usr/bin/env node
// Claim: crash-safe resize (copy + resize2fs + rename) costs little over in-place resize2fs.
// Both grow the same image (DATA_MIB of data) from SIZE to 2*SIZE; medians of N, ratio printed.
// Usage: node bench/resize.mjs [N] [SIZE_MIB] [DATA_MIB]   (defaults 3, 1024, 200)
import { mkdtempSync, rmSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ctl, median, run, table, timed } from './lib.mjs';

const N = Number(process.argv[2] ?? 3);
const SIZE = Number(process.argv[3] ?? 1024);
const DATA = Number(process.argv[4] ?? 200);
const dir = mkdtempSync(join(tmpdir(), 'bench-resize-'));
try {
  const seed = join(dir, 'seed.img');
  ctl(['create', seed, '--size', String(SIZE)]);
  run('dd', ['if=/dev/urandom', `of=${join(dir, 'data')}`, 'bs=1M', `count=${DATA}`]);
  run('debugfs', ['-w', '-R', `write ${join(dir, 'data')} /upper/data`, seed]);
  const ours = [];
  const inPlace = [];
  for (let i = 0; i < N; i++) {
    const a = join(dir, `a${i}.img`);
    const b = join(dir, `b${i}.img`);
    run('cp', ['--sparse=always', seed, a]);
    run('cp', ['--sparse=always', seed, b]);
    ours.push(timed(() => ctl(['resize', a, '--size', String(SIZE * 2)])));
    inPlace.push(
      timed(() => {
        run('e2fsck', ['-fy', b]);
        truncateSync(b, SIZE * 2 * 2 ** 20);
        run('resize2fs', [b, `${SIZE * 2}M`]);
      }),
    );
    rmSync(a);
    rmSync(b);
  }
  console.log(`grow ${SIZE} -> ${SIZE * 2} MiB with ${DATA} MiB of data, median of ${N}`);
  table([
    {
      crash_safe_s: median(ours).toFixed(3),
      in_place_s: median(inPlace).toFixed(3),
      ratio: (median(ours) / median(inPlace)).toFixed(2),
    },
  ]);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
