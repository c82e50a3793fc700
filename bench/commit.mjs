#!/usr/bin/env node
// Claim: `overlayctl commit` (fsck + whiteout planning + fuse2fs read + mksquashfs) stays within
// 1.3x of a bare mksquashfs of the same tree with the same compression. Also prints a compression
// table (time and size) for zstd levels, gzip, lz4 and xz. Root (the tree is written by a loop mount).
// The headline ratio (zstd-3) is the median of ROUNDS alternating runs; each bare run starts from a
// fresh mount, as commit does. Usage: sudo node bench/commit.mjs [FILES] [ROUNDS]  (20000, 5)
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ctl, median, run, table, timed } from './lib.mjs';

const FILES = Number(process.argv[2] ?? 20000);
const ROUNDS = Number(process.argv[3] ?? 5);
const dir = mkdtempSync(join(tmpdir(), 'bench-commit-'));
const mnt = join(dir, 'mnt');
try {
  const img = join(dir, 'env.img');
  ctl(['create', img, '--size', '2G', '--profile', 'small']);
  mkdirSync(mnt);
  run('mount', ['-o', 'loop', img, mnt]);
  try {
    // a conda-like tree: many small text files in nested package dirs
    for (let i = 0; i < FILES; i++) {
      const d = join(mnt, 'upper/opt/env/lib', `pkg${i % 400}`, `mod${i % 7}`);
      if (i < 2800) mkdirSync(d, { recursive: true });
      writeFileSync(join(d, `f${i}.py`), `# module ${i}\n${'x = 1\n'.repeat(20 + (i % 200))}`);
    }
  } finally {
    run('umount', [mnt]);
  }
  run('mount', ['-o', 'ro,loop', img, mnt]);
  const rows = [];
  let ratioLine = '';
  const zstd3 = [];
  try {
    for (const [round, [comp, level]] of [
      ...Array.from({ length: ROUNDS }, () => ['zstd', 3]),
      ['zstd', 1],
      ['zstd', 9],
      ['zstd', 19],
      ['gzip', 6],
      ['lz4', undefined],
      ['xz', undefined],
    ].entries()) {
      const lv =
        level === undefined
          ? []
          : comp === 'zstd' || comp === 'gzip'
            ? ['-Xcompression-level', String(level)]
            : [];
      const bare = join(dir, `bare-${comp}-${level}.sqf`);
      const ours = join(dir, `ours-${round}-${comp}-${level}.sqf`);
      const tBare = timed(() =>
        run('mksquashfs', [join(mnt, 'upper'), bare, '-noappend', '-no-progress', '-comp', comp, ...lv]),
      );
      run('umount', [mnt]);
      const tOurs = timed(() =>
        ctl([
          'commit',
          img,
          '--output',
          ours,
          '--compression',
          comp,
          ...(level === undefined ? [] : ['--level', String(level)]),
        ]),
      );
      run('mount', ['-o', 'ro,loop', img, mnt]);
      if (comp === 'zstd' && level === 3) {
        zstd3.push({ tBare, tOurs });
        if (zstd3.length < ROUNDS) continue;
        const bareMedian = median(zstd3.map((r) => r.tBare));
        const oursMedian = median(zstd3.map((r) => r.tOurs));
        ratioLine = `commit / bare mksquashfs (zstd-3, median of ${ROUNDS}): ${oursMedian.toFixed(2)} s / ${bareMedian.toFixed(2)} s = ${(oursMedian / bareMedian).toFixed(2)}x (target <= 1.3x)`;
      }
      rows.push({
        compression: `${comp}${level === undefined ? '' : `-${level}`}`,
        mksquashfs_s: tBare.toFixed(2),
        commit_s: tOurs.toFixed(2),
        ratio: (tOurs / tBare).toFixed(2),
        size_mib: (statSync(ours).size / 2 ** 20).toFixed(1),
      });
    }
  } finally {
    run('umount', [mnt]);
  }
  console.log(`${FILES} files`);
  table(rows);
  console.log(ratioLine);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
