#!/usr/bin/env node
// Claim: caching an overlay with overlayctl (sparse-aware pack + verified unpack) is >= 20x faster
// than tar|zstd of the raw image (what actions/cache does with a path), >= 2x faster than tar|zstd
// of the environment's directory tree, within 1.5x of the floor `tar --sparse | zstd -T0` with
// verification included, and the restored image allocates <= 1.1x the bytes in use.
// Root (the tree is written through a loop mount). Usage: sudo node bench/cache.mjs [--small]
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ctl, run, table, timed } from './lib.mjs';

const small = process.argv.includes('--small');
const SIZE = small ? '2G' : '8G';
const FILES = small ? 5000 : 20000;
const BIG_MIB = small ? 60 : 250; // incompressible part of the payload
const dir = mkdtempSync(join(tmpdir(), 'bench-cache-'));
const env = { ...process.env, ZSTD_NBTHREADS: '0', ZSTD_CLEVEL: '3' };
const tar = (args) => run('tar', args, { env });
try {
  const img = join(dir, 'env.img');
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  ctl(['create', img, '--size', SIZE, '--profile', 'small']);
  run('mount', ['-o', 'loop', img, mnt]);
  try {
    for (let i = 0; i < FILES; i++) {
      const d = join(mnt, 'upper/opt/env/lib', `pkg${i % 500}`);
      if (i < 500) mkdirSync(d, { recursive: true });
      writeFileSync(
        join(d, `f${i}.py`),
        `# ${i}\n${'value = "some python source"\n'.repeat(100 + (i % 300))}`,
      );
    }
    run('dd', [
      'if=/dev/urandom',
      `of=${join(mnt, 'upper/opt/env/lib/blob.so')}`,
      'bs=1M',
      `count=${BIG_MIB}`,
    ]);
    run('cp', ['-a', join(mnt, 'upper/opt/env'), join(dir, 'tree')]);
  } finally {
    run('umount', [mnt]);
  }
  const used = JSON.parse(ctl(['info', img, '--json'])).usedBytes;
  const out = (n) => join(dir, n);
  const rows = [];
  const measure = (name, save, restore, restored) => {
    const s = timed(save);
    const r = timed(restore);
    const alloc = restored ? statSync(restored).blocks * 512 : NaN;
    rows.push({
      method: name,
      save_s: s.toFixed(2),
      restore_s: r.toFixed(2),
      total_s: (s + r).toFixed(2),
      restored_alloc_mib: (alloc / 2 ** 20).toFixed(0),
    });
    return s + r;
  };
  const tRaw = measure(
    '(a) tar|zstd raw image',
    () => tar(['--zstd', '-cf', out('raw.tar.zst'), '-C', dir, 'env.img']),
    () => {
      mkdirSync(out('raw-x'));
      tar(['--zstd', '-xf', out('raw.tar.zst'), '-C', out('raw-x')]);
    },
    join(out('raw-x'), 'env.img'),
  );
  rmSync(out('raw-x'), { recursive: true });
  const tTree = measure(
    '(b) tar|zstd directory tree',
    () => tar(['--zstd', '-cf', out('tree.tar.zst'), '-C', dir, 'tree']),
    () => {
      mkdirSync(out('tree-x'));
      tar(['--zstd', '-xf', out('tree.tar.zst'), '-C', out('tree-x')]);
    },
  );
  const tFloor = measure(
    '(c) tar --sparse|zstd (floor)',
    () => tar(['--sparse', '--zstd', '-cf', out('sparse.tar.zst'), '-C', dir, 'env.img']),
    () => {
      mkdirSync(out('sp-x'));
      tar(['--sparse', '--zstd', '-xf', out('sparse.tar.zst'), '-C', out('sp-x')]);
    },
    join(out('sp-x'), 'env.img'),
  );
  const tOurs = measure(
    'overlayctl cache save/restore',
    () => ctl(['cache', 'save', img, '--key', 'bench', '--store', out('store')]),
    () => ctl(['cache', 'restore', out('restored.img'), '--key', 'bench', '--store', out('store')]),
    out('restored.img'),
  );
  console.log(`${SIZE} sparse image, ${FILES} files, ${(used / 2 ** 20).toFixed(0)} MiB in use`);
  table(rows);
  const allocRatio = (statSync(out('restored.img')).blocks * 512) / used;
  console.log(`vs (a) raw image:      ${(tRaw / tOurs).toFixed(1)}x faster (target >= 20x)`);
  console.log(`vs (b) directory tree: ${(tTree / tOurs).toFixed(1)}x faster (target >= 2x)`);
  console.log(
    `vs (c) floor:          ${(tOurs / tFloor).toFixed(2)}x the floor, verification included (target <= 1.5x)`,
  );
  console.log(`restored allocation:   ${allocRatio.toFixed(2)}x the bytes in use (target <= 1.1x)`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
