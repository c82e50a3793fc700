import { randomBytes } from 'node:crypto';
import { closeSync, copyFileSync, existsSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

/**
 * Damaged and hostile ext3 images, generated from one clean image at test time (the corpus is
 * code, not bytes in the repo): overlayctl must answer every command with one JSON object and a
 * stable status or error code, within a bound, and never crash or hang.
 */
const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
const FUZZ_SEEDS = Number(process.env.HOSTILE_FUZZ_COUNT ?? 12);
const HANG_BOUND_MS = 120_000; // a hang detector, not a speed assertion

let dir: string;
let clean: string;

function patch(path: string, offset: number, bytes: Buffer): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

async function debugfsWrite(image: string, cmds: string[]): Promise<void> {
  await execa('debugfs', ['-w', '-f', '-', image], { input: `${cmds.join('\n')}\n` });
}

async function inodeTableBlock(image: string): Promise<number> {
  const { stdout } = await execa('dumpe2fs', [image]);
  return Number(/Inode table at (\d+)/.exec(stdout)![1]);
}

interface Case {
  name: string;
  make(path: string): Promise<void>;
}

const cases: Case[] = [
  { name: 'zeroed primary superblock', make: async (p) => patch(p, 1024, Buffer.alloc(1024)) },
  { name: 'superblock magic only', make: async (p) => patch(p, 1024 + 56, Buffer.from([0x53, 0xef])) },
  { name: 'garbage group descriptors', make: async (p) => patch(p, 4096, randomBytes(4096)) },
  {
    name: 'zeroed inode table start',
    make: async (p) => patch(p, (await inodeTableBlock(p)) * 4096, Buffer.alloc(16 * 256)),
  },
  {
    name: 'directory loop',
    make: (p) => debugfsWrite(p, ['link /upper /upper/loop', 'link /upper /work/back']),
  },
  {
    name: 'huge file size in metadata',
    make: (p) => debugfsWrite(p, ['write /dev/null /upper/f', 'sif /upper/f size 0xfffffffffff0']),
  },
  { name: 'inode count absurd', make: async (p) => patch(p, 1024, Buffer.from([0xff, 0xff, 0xff, 0x7f])) },
  { name: 'truncated to 1 MiB', make: async (p) => execa('truncate', ['-s', '1M', p]).then(() => {}) },
  { name: 'empty file', make: async (p) => execa('truncate', ['-s', '0', p]).then(() => {}) },
  ...Array.from({ length: FUZZ_SEEDS }, (_, i) => ({
    name: `fuzzed metadata #${i}`,
    make: async (p: string) => {
      // flip random bytes in the first 256 KiB (superblock, descriptors, bitmaps, inode tables)
      for (let k = 0; k < 64; k++)
        patch(p, 1024 + Math.floor(Math.random() * 256 * 1024), randomBytes(1 + (k % 8)));
    },
  })),
];

async function cli(args: string[]) {
  const r = await execa(CLI, [...args, '--json'], {
    reject: false,
    timeout: HANG_BOUND_MS,
    killSignal: 'SIGKILL',
  });
  expect(r.timedOut, `${args.join(' ')} hung`).toBe(false);
  expect(r.stderr).not.toMatch(/^\s+at .+:\d+:\d+\)?$/m);
  const lines = r.stdout.trim().split('\n');
  expect(lines, r.stdout).toHaveLength(1);
  return { exitCode: r.exitCode, out: JSON.parse(lines[0]!) };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ov-hostile-'));
  clean = join(dir, 'clean.img');
  await execa(CLI, ['create', clean, '--size', '64', '--create-dir', '/opt/env']);
  await debugfsWrite(clean, ['write /etc/hostname /upper/opt/env/hostname', 'mkdir /upper/opt/env/d']);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('hostile and damaged images', () => {
  it.each(cases.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const img = join(dir, `case-${Math.random().toString(16).slice(2)}.img`);
    copyFileSync(clean, img);
    await c.make(img);

    const info = await cli(['info', img]);
    if (info.exitCode !== 0)
      expect(info.out.error.code).toMatch(/^E_(UNKNOWN_FORMAT|TOOL_FAILED|NOT_EXT3|INTEGRITY)$/);

    const check = await cli(['check', img]);
    const status = check.out.images?.[0]?.status;
    expect(['clean', 'corrupt', 'error']).toContain(status);
    expect(check.exitCode === 0).toBe(status === 'clean');

    // commit mounts the image read-only (kernel loop mount as root): only an image that checks
    // clean may be mounted; anything else is refused with a stable code and no layer is written
    const layer = join(dir, `${Math.random().toString(16).slice(2)}.sqf`);
    const commit = await cli(['commit', img, '--output', layer]);
    if (status === 'clean') expect(commit.exitCode, JSON.stringify(commit.out)).toBe(0);
    else {
      expect(commit.exitCode).not.toBe(0);
      expect(commit.out.error.code).toMatch(/^E_(UNKNOWN_FORMAT|NOT_EXT3|INTEGRITY|TRUNCATED)$/);
      expect(existsSync(layer)).toBe(false);
    }

    const repair = await cli(['check', img, '--repair']);
    const after = repair.out.images?.[0]?.status;
    expect(['clean', 'repaired', 'corrupt', 'error']).toContain(after);
    if (after === 'repaired' || after === 'clean') {
      // a repaired image really is sound now
      const fsck = await execa('e2fsck', ['-fn', img], { reject: false });
      expect(fsck.exitCode, fsck.stdout).toBe(0);
    }
    rmSync(img, { force: true });
  });
});
