#!/usr/bin/env node
// Claim: `overlayctl create` is as fast as `apptainer overlay create` for the same size, sparse and
// allocated. N runs each, interleaved; prints medians and ratios (ours / apptainer).
// Usage: node bench/create.mjs [N] [SIZE_MIB]   (defaults 5, 2048)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ctl, median, run, table, timed } from './lib.mjs';

const N = Number(process.argv[2] ?? 5);
const MIB = Number(process.argv[3] ?? 2048);
const dir = mkdtempSync(join(tmpdir(), 'bench-create-'));
const t = { oursSparse: [], appSparse: [], oursAlloc: [], appAlloc: [] };
try {
  for (let i = 0; i < N; i++) {
    const p = (n) => join(dir, `${n}-${i}.img`);
    t.oursSparse.push(timed(() => ctl(['create', p('os'), '--size', String(MIB)])));
    t.appSparse.push(
      timed(() => run('apptainer', ['overlay', 'create', '--sparse', '--size', String(MIB), p('as')])),
    );
    t.oursAlloc.push(timed(() => ctl(['create', p('oa'), '--size', String(MIB), '--allocated'])));
    t.appAlloc.push(timed(() => run('apptainer', ['overlay', 'create', '--size', String(MIB), p('aa')])));
    for (const n of ['os', 'as', 'oa', 'aa']) rmSync(p(n));
  }
  const m = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, median(v)]));
  console.log(`create ${MIB} MiB, median of ${N}`);
  table([
    {
      variant: 'sparse',
      overlayctl_s: m.oursSparse.toFixed(3),
      apptainer_s: m.appSparse.toFixed(3),
      ratio: (m.oursSparse / m.appSparse).toFixed(2),
    },
    {
      variant: 'allocated',
      overlayctl_s: m.oursAlloc.toFixed(3),
      apptainer_s: m.appAlloc.toFixed(3),
      ratio: (m.oursAlloc / m.appAlloc).toFixed(2),
    },
  ]);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
