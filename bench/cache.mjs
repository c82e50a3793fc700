#!/usr/bin/env node
// Claim: caching an overlay with overlayctl (sparse-aware pack + verified unpack) is >= 20x faster
// than tar|zstd of the raw image (what actions/cache does with a path), >= 2x faster than tar|zstd
// of the environment's directory tree, within 1.5x of the floor `tar --sparse | zstd -T0` with
// verification included, and the restored image allocates <= 1.1x the bytes in use.
// Every timed step starts after a `sync` (so no method pays for another's writeback). Our restore
// fsyncs the image before renaming it into place (crash safety); tar does not, so a second figure
// adds a `sync` after each restore: the time until the restored bytes are on disk.
// The cheap methods run ROUNDS times (median); (a) once. Nothing is deleted until the end: on a
// filesystem mounted with `discard` (this VM's root) deleting 20k files slows the next writes.
// Root (the tree is written through a loop mount). Usage: sudo node bench/cache.mjs [--small] [--rounds N]
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ctl, median, run, table, timed } from './lib.mjs';

const small = process.argv.includes('--small');
const SIZE = small ? '2G' : '8G';
const FILES = small ? 5000 : 20000;
const BIG_MIB = small ? 60 : 250; // incompressible part of the payload
const ri = process.argv.indexOf('--rounds');
const ROUNDS = ri > 0 ? Number(process.argv[ri + 1]) : 3;
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
  // save(i) and restore(i) write fresh names in round i; restored(i) is the restored image
  const measure = (name, rounds, save, restore, restored) => {
    const runs = [];
    for (let i = 0; i < rounds; i++) {
      run('sync', []);
      const s = timed(() => save(i));
      run('sync', []);
      const r = timed(() => restore(i));
      const synced = timed(() => run('sync', []));
      const alloc = restored ? statSync(restored(i)).blocks * 512 : NaN;
      runs.push({ s, r, synced, alloc });
    }
    const pick = (f) => median(runs.map(f));
    const [s, r, synced] = [pick((x) => x.s), pick((x) => x.r), pick((x) => x.synced)];
    rows.push({
      method: name,
      save_s: s.toFixed(2),
      restore_s: r.toFixed(2),
      total_s: (s + r).toFixed(2),
      'total+sync_s': (s + r + synced).toFixed(2),
      restored_alloc_mib: (runs[0].alloc / 2 ** 20).toFixed(0),
    });
    return { plain: s + r, durable: s + r + synced };
  };
  const tRaw = measure(
    '(a) tar|zstd raw image',
    1,
    (i) => tar(['--zstd', '-cf', out(`raw${i}.tar.zst`), '-C', dir, 'env.img']),
    (i) => {
      mkdirSync(out(`raw-x${i}`));
      tar(['--zstd', '-xf', out(`raw${i}.tar.zst`), '-C', out(`raw-x${i}`)]);
    },
    (i) => join(out(`raw-x${i}`), 'env.img'),
  );
  const tTree = measure(
    '(b) tar|zstd directory tree',
    ROUNDS,
    (i) => tar(['--zstd', '-cf', out(`tree${i}.tar.zst`), '-C', dir, 'tree']),
    (i) => {
      mkdirSync(out(`tree-x${i}`));
      tar(['--zstd', '-xf', out(`tree${i}.tar.zst`), '-C', out(`tree-x${i}`)]);
    },
  );
  const tFloor = measure(
    '(c) tar --sparse|zstd (floor)',
    ROUNDS,
    (i) => tar(['--sparse', '--zstd', '-cf', out(`sparse${i}.tar.zst`), '-C', dir, 'env.img']),
    (i) => {
      mkdirSync(out(`sp-x${i}`));
      tar(['--sparse', '--zstd', '-xf', out(`sparse${i}.tar.zst`), '-C', out(`sp-x${i}`)]);
    },
    (i) => join(out(`sp-x${i}`), 'env.img'),
  );
  const tOurs = measure(
    'overlayctl cache save/restore',
    ROUNDS,
    (i) => ctl(['cache', 'save', img, '--key', 'bench', '--store', out(`store${i}`)]),
    (i) => ctl(['cache', 'restore', out(`restored${i}.img`), '--key', 'bench', '--store', out(`store${i}`)]),
    (i) => out(`restored${i}.img`),
  );
  console.log(`${SIZE} sparse image, ${FILES} files, ${(used / 2 ** 20).toFixed(0)} MiB in use`);
  table(rows);
  const allocRatio = (statSync(out('restored0.img')).blocks * 512) / used;
  const ratios = (label, t) =>
    `${label}: ${(t.plain / tOurs.plain).toFixed(2)}x as plain round trips, ${(t.durable / tOurs.durable).toFixed(2)}x until on disk`;
  console.log(`${ratios('(a) raw image / ours     ', tRaw)}  (target: ours >= 20x faster)`);
  console.log(`${ratios('(b) directory tree / ours', tTree)}  (target: ours >= 2x faster)`);
  console.log(
    `ours / (c) floor: ${(tOurs.plain / tFloor.plain).toFixed(2)}x as plain round trips, ${(tOurs.durable / tFloor.durable).toFixed(2)}x until on disk, verification included (target <= 1.5x)`,
  );
  console.log(`restored allocation: ${allocRatio.toFixed(2)}x the bytes in use (target <= 1.1x)`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
