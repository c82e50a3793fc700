// The in-place xattr strip (image/inplace.ts) that a root `exec` ends with: what it writes, and
// SIGKILL at every point — of overlayctl (at each tool boundary and at moments in time) and of
// debugfs itself (at each of its writes, with strace's fault injection). After every kill, the
// image is clean (e2fsck -fn) and holds either the original attributes or none of them, once the
// next operation has run; the data is intact; the lock is free; no undo log is left.
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { blocksAtRisk } from '../../packages/core/src/image/inplace';
import { probeLock } from '../../packages/core/src/lock/ofd';
import { findOnPath } from '../helpers/tools';
import { makeKillPointDir } from './killpoints';

const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
const PAYLOAD = '/etc/services';
const killPoints = makeKillPointDir();
const root = mkdtempSync(join(tmpdir(), 'ov-inplace-'));
const stats = { kills: 0, uncleanBeforeRecovery: 0, recoveredToOriginal: 0, complete: 0 };
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
  process.stdout.write(
    `\nin-place strip: ${stats.kills} kills; ${stats.uncleanBeforeRecovery} left the image unclean until the next operation; ` +
      `after it ${stats.recoveredToOriginal} original, ${stats.complete} complete\n`,
  );
});

/** Attributes as kernel overlayfs (a root exec) leaves them: small ones in the inode, big ones in xattr blocks. */
const ATTRS: Array<[string, string, string]> = [
  ['/upper', 'trusted.overlay.impure', 'y'],
  ['/upper', 'trusted.overlay.uuid', 'x'.repeat(16)],
  ['/upper/data', 'trusted.overlay.origin', 'o'.repeat(29)],
  ...Array.from({ length: 12 }, (_, i): [string, string, string] => [
    `/upper/d${i}`,
    'trusted.overlay.origin',
    `${i}`.padEnd(180, 'z'), // too big for the inode: an xattr block each
  ]),
  ...Array.from({ length: 12 }, (_, i): [string, string, string] => [
    `/upper/d${i}`,
    'trusted.overlay.impure',
    'y',
  ]),
];

async function makeImage(d: string): Promise<string> {
  const img = join(d, 'env.img');
  await execa(process.execPath, [CLI, 'create', img, '--size', '128']);
  const cmds = [
    `write ${PAYLOAD} /upper/data`,
    ...Array.from({ length: 12 }, (_, i) => `mkdir /upper/d${i}`),
  ];
  for (const [p, name, value] of ATTRS) cmds.push(`ea_set ${p} ${name} ${value}`);
  await execa('debugfs', ['-w', '-f', '-', img], { input: `${cmds.join('\n')}\n` });
  return img;
}

async function attrsLeft(img: string): Promise<number> {
  const paths = [...new Set(ATTRS.map((a) => a[0]))];
  const r = await execa('debugfs', ['-f', '-', img], { input: paths.map((p) => `ea_list ${p}\n`).join('') });
  return (r.stdout.match(/trusted\.overlay\./g) ?? []).length;
}

const fsckClean = async (img: string) =>
  (await execa('e2fsck', ['-fn', img], { reject: false })).exitCode === 0;
async function payloadIntact(img: string): Promise<boolean> {
  const r = await execa('debugfs', ['-R', 'cat /upper/data', img], {
    encoding: 'buffer',
    stripFinalNewline: false,
  });
  return Buffer.from(r.stdout).equals(readFileSync(PAYLOAD));
}
const undoLogs = (d: string) => readdirSync(d).filter((n) => n.includes('.ovundo-') || n.includes('.ovtmp-'));

/** After the next operation: clean, data intact, all attributes or none, lock free, no logs. */
async function assertRecovered(d: string, img: string, label: string) {
  await execa(process.execPath, [CLI, 'info', img], { reject: false });
  expect(await fsckClean(img), `${label}: e2fsck -fn`).toBe(true);
  expect(await payloadIntact(img), `${label}: data`).toBe(true);
  const left = await attrsLeft(img);
  expect([0, ATTRS.length], `${label}: ${left} attributes left`).toContain(left);
  if (left === 0) stats.complete++;
  else stats.recoveredToOriginal++;
  expect(probeLock(img), `${label}: lock`).toBe('free');
  expect(undoLogs(d), `${label}: leftovers`).toEqual([]);
}

describe('in-place strip of trusted.overlay.* attributes', () => {
  it('writes only blocks it logged (or blocks that were free), and leaves a clean image', async () => {
    const d = mkdtempSync(join(root, 'blocks-'));
    const img = await makeImage(d);
    expect(await attrsLeft(img)).toBe(ATTRS.length);
    const before = readFileSync(img);
    // the inodes the strip touches, and what it may write there
    const inodes: number[] = [];
    for (const p of new Set(ATTRS.map((a) => a[0]))) {
      const r = await execa('debugfs', ['-R', `stat ${p}`, img]);
      inodes.push(Number(/Inode:\s*(\d+)/.exec(r.stdout)![1]));
    }
    const risk = await blocksAtRisk(img, inodes);
    const dump = (await execa('dumpe2fs', [img])).stdout;
    const free = new Set<number>();
    for (const m of dump.matchAll(/^\s+Free blocks: (.*)$/gm))
      for (const part of m[1]!.split(', ').filter(Boolean)) {
        const [a, b] = part.split('-').map(Number);
        for (let x = a!; x <= (b ?? a!); x++) free.add(x);
      }

    const r = await execa(process.execPath, [CLI, 'normalize', img, '--json']);
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ rewrite: 'in-place', xattrsStripped: ATTRS.length });
    expect(await attrsLeft(img)).toBe(0);
    expect(await fsckClean(img)).toBe(true);
    expect(await payloadIntact(img)).toBe(true);
    const after = readFileSync(img);
    const bs = risk.blockSize;
    const logged = new Set(risk.blocks);
    const changed: number[] = [];
    for (let b = 0; b * bs < before.length; b++)
      if (!before.subarray(b * bs, (b + 1) * bs).equals(after.subarray(b * bs, (b + 1) * bs)))
        changed.push(b);
    expect(changed.length).toBeGreaterThan(0);
    expect(changed.filter((b) => !logged.has(b) && !free.has(b))).toEqual([]);
    expect(undoLogs(d)).toEqual([]);
  });

  it('rewrites on a copy when deletion markers must change (not only attributes)', async () => {
    const d = mkdtempSync(join(root, 'copy-'));
    const img = await makeImage(d);
    await execa('debugfs', ['-w', '-R', 'write /etc/hostname /upper/.wh.gone', img]);
    const r = await execa(process.execPath, [CLI, 'normalize', img, '--json']);
    expect(JSON.parse(r.stdout)).toMatchObject({ rewrite: 'copy', deletionsRewritten: 1 });
    expect(await attrsLeft(img)).toBe(0);
  });

  it('survives SIGKILL of overlayctl at each tool boundary and at moments in time', async () => {
    const d0 = mkdtempSync(join(root, 'count-'));
    const img0 = await makeImage(d0);
    writeFileSync(killPoints.counter, '');
    const ok = await execa(process.execPath, [CLI, 'normalize', img0], {
      env: { PATH: `${killPoints.bin}:${process.env.PATH}` },
    });
    expect(ok.exitCode).toBe(0);
    const boundaries = readFileSync(killPoints.counter, 'utf8').split('\n').filter(Boolean).length;
    expect(boundaries).toBeGreaterThan(2);
    const trials: Array<{ env?: Record<string, string>; afterMs?: number }> = [
      ...Array.from({ length: boundaries }, (_, k) => ({ env: { KILL_AT: String(k + 1) } })),
      ...[20, 60, 120, 250].map((afterMs) => ({ afterMs })),
    ];
    for (const t of trials) {
      const d = mkdtempSync(join(root, 'kill-'));
      const img = await makeImage(d);
      writeFileSync(killPoints.counter, '');
      const child = execa(process.execPath, [CLI, 'normalize', img], {
        reject: false,
        env: { PATH: `${killPoints.bin}:${process.env.PATH}`, ...t.env },
      });
      if (t.afterMs !== undefined) setTimeout(() => child.kill('SIGKILL'), t.afterMs);
      await child;
      stats.kills++;
      await new Promise((res) => setTimeout(res, 500)); // an orphaned debugfs finishes
      // overlayctl's death never cuts debugfs short: clean right away, before any recovery
      expect(await fsckClean(img), `${JSON.stringify(t)}: clean right after the kill`).toBe(true);
      await assertRecovered(d, img, JSON.stringify(t));
    }
  });

  it.skipIf(!findOnPath('strace'))(
    'survives SIGKILL of debugfs itself at each of its writes (overlayctl killed too)',
    async () => {
      // a debugfs that kills overlayctl, then dies at its K-th pwrite64 when writing (-w)
      const bin = mkdtempSync(join(root, 'bin-'));
      const realDebugfs = findOnPath('debugfs')!;
      writeFileSync(
        join(bin, 'debugfs'),
        `#!/bin/bash
case " $* " in *" -w "*)
  kill -9 "$PPID"
  exec strace -f -o /dev/null -e trace=pwrite64 -e inject=pwrite64:signal=SIGKILL:when="$WRITE_K" ${realDebugfs} "$@";;
esac
exec ${realDebugfs} "$@"
`,
      );
      chmodSync(join(bin, 'debugfs'), 0o755);
      // how many writes a full strip makes
      const d0 = mkdtempSync(join(root, 'w-'));
      const img0 = await makeImage(d0);
      const counted = await execa(
        'strace',
        ['-f', '-c', '-e', 'trace=pwrite64', realDebugfs, '-w', '-f', '-', img0],
        {
          input: `${(await attrsPlan(img0)).join('\n')}\n`,
        },
      );
      // strace -c columns: % time, seconds, usecs/call, calls, [errors], syscall
      const writes = Number(
        /^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?pwrite64$/m.exec(counted.stderr)?.[1] ?? 0,
      );
      expect(writes).toBeGreaterThan(3);
      let partial = 0;
      for (let k = 1; k <= writes + 1; k++) {
        const d = mkdtempSync(join(root, 'wk-'));
        const img = await makeImage(d);
        const r = await execa(process.execPath, [CLI, 'normalize', img], {
          reject: false,
          env: { PATH: `${bin}:${process.env.PATH}`, WRITE_K: String(k) },
        });
        expect(r.signal).toBe('SIGKILL');
        stats.kills++;
        await new Promise((res) => setTimeout(res, 300));
        if (!(await fsckClean(img))) stats.uncleanBeforeRecovery++;
        const left = await attrsLeft(img);
        if (left > 0 && left < ATTRS.length) partial++;
        expect(existsSync(img)).toBe(true);
        await assertRecovered(d, img, `debugfs killed at write ${k}/${writes}`);
      }
      // the kills did leave half-done edits: the recovery (not luck) is what the assertions saw
      expect(partial).toBeGreaterThan(0);
    },
  );
});

/** The ea_rm commands a strip of ATTRS runs (to count debugfs' writes without overlayctl). */
async function attrsPlan(img: string): Promise<string[]> {
  const cmds: string[] = [];
  for (const [p, name] of ATTRS) cmds.push(`ea_rm ${p} ${name}`);
  void img;
  return cmds;
}
