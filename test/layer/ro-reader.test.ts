import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBaseImage } from '../helpers/base-image';
import { ensureTestUser, runAs, type TestUser } from '../helpers/users';

/**
 * What a read-only reader lists in a stack holding an ext3 overlay with deletions (0:0 whiteouts,
 * the portable form): deleted names must not be listed, by root or by an ordinary user.
 */
const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
let dir: string;
let base: string;
let user: TestUser;
let img: string;
let layer: string;

// what the deletions touch: /etc/group (a base file), /etc/lowerdir/{a,b} (replaced directory,
// explicit whiteouts), /opt/s/gone (a file of the layer below)
const LIST = 'ls /etc; echo --; ls /etc/lowerdir; echo --; ls /opt/s; echo --; cat /etc/group 2>&1';
const EXPECTED = [
  'hosts',
  'localtime',
  'lowerdir',
  'passwd',
  'resolv.conf',
  '--',
  'c',
  '--',
  'kept',
  '--',
  "cat: can't open '/etc/group': No such file or directory",
].join('\n');

beforeAll(async () => {
  base = await ensureBaseImage();
  user = await ensureTestUser();
  dir = mkdtempSync(join(tmpdir(), 'ov-roread-'));
  chmodSync(dir, 0o755);
  const src = join(dir, 'layer');
  mkdirSync(join(src, 'opt/s'), { recursive: true });
  await execa('sh', ['-c', `echo g > ${src}/opt/s/gone && echo k > ${src}/opt/s/kept`]);
  layer = join(dir, 'layer.sqf');
  await execa('mksquashfs', [src, layer, '-noappend', '-no-progress', '-quiet']);
  img = join(dir, 'env.img');
  await execa(CLI, ['create', img, '--size', '64']);
  // the deletions as commit, normalize and a root writer store them: char 0:0 devices
  const cmds = [
    'mkdir /upper/etc',
    'mkdir /upper/etc/lowerdir',
    'mkdir /upper/opt',
    'mkdir /upper/opt/s',
    `write ${join(dir, 'layer/opt/s/kept')} /upper/etc/lowerdir/c`,
    'cd /upper/etc',
    'mknod group c 0 0',
    'cd /upper/etc/lowerdir',
    'mknod a c 0 0',
    'mknod b c 0 0',
    'cd /upper/opt/s',
    'mknod gone c 0 0',
  ];
  await execa('debugfs', ['-w', '-f', '-', img], { input: `${cmds.join('\n')}\n` });
  chmodSync(img, 0o644);
  chmodSync(layer, 0o644);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function run(who: 'root' | 'user', argv: string[]) {
  const r =
    who === 'root' ? await execa(argv[0]!, argv.slice(1), { reject: false }) : await runAs(user, argv);
  return { out: r.stdout.trim(), err: r.stderr };
}

describe('read-only readers of an ext3 overlay with deletions', () => {
  it('overlayctl exec --ro lists no deleted name, as root and as an ordinary user', async () => {
    for (const [who, fakeroot] of [
      ['root', false],
      ['user', false],
      ['user', true],
    ] as const) {
      const r = await run(who, [
        CLI,
        'exec',
        img,
        '--ro',
        ...(fakeroot ? ['--fakeroot'] : []),
        '--layer',
        layer,
        '--base',
        base,
        '--json',
        '--',
        'sh',
        '-c',
        `(${LIST}) >&2; true`,
      ]);
      expect(r.err, who).toContain(EXPECTED);
      expect(r.err, who).not.toMatch(/^ls: /m);
      const out = JSON.parse(r.out);
      expect(out.exitCode, who).toBe(0);
      // root reads through a loop mount (file types in readdir); a user through fuse2fs, which has none
      expect(out.overlayReader, who).toBe(who === 'root' ? 'kernel' : 'fuse-overlayfs');
    }
  });

  it('plain apptainer: kernel overlayfs over fuse2fs (unprivileged :ro) lists deleted names it cannot open', async () => {
    const argv = [
      'apptainer',
      'exec',
      '--overlay',
      `${layer}:ro`,
      '--overlay',
      `${img}:ro`,
      base,
      'sh',
      '-c',
      LIST,
    ];
    const root = await run('root', argv);
    expect(root.out).toBe(EXPECTED);
    // what docs/layers.md states: the names are listed, every open fails (if this starts failing,
    // the kernel or fuse2fs changed: update the docs and the reader choice in runtime/exec.ts)
    const plain = await run('user', argv);
    expect(plain.err).toMatch(/ls: \/etc\/group: No such file or directory/);
    expect(plain.err).toMatch(/ls: \/etc\/lowerdir\/a: No such file or directory/);
    expect(plain.out).toContain("can't open '/etc/group'");
  });
});
