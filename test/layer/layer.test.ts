import { chmodSync, chownSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { planDirectory } from '../../packages/core/src/layer/whiteouts';
import { ensureBaseImage } from '../helpers/base-image';
import { ensureTestUser, runAs, type TestUser } from '../helpers/users';

/**
 * commit and normalize through the real Apptainer: what a container sees before equals what it
 * sees after, for root and unprivileged readers, writable and :ro.
 */
const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
let dir: string;
let base: string;
let user: TestUser;

// The writer's session: delete a base file, replace a base directory, modify, add every kind of entry.
const CHANGES = [
  'rm /etc/group',
  'rm -rf /etc/lowerdir && mkdir /etc/lowerdir && echo new > /etc/lowerdir/c',
  'echo modified > /opt/lower/file.txt',
  'mkdir -p /opt/new/empty',
  'echo h > /opt/new/h1 && ln /opt/new/h1 /opt/new/h2',
  'ln -s h1 /opt/new/link',
  'echo s > /opt/new/suid && chmod 4755 /opt/new/suid',
  'echo sp > "/opt/new/sp ace" && echo u > "/opt/new/ünï"',
].join(' && ');

// A full listing with type, mode, owner, size, links and checksums, as a reader sees it.
// (directory sizes and link counts are filesystem details: ext3 and SquashFS differ, readers don't care)
const LIST =
  'find /etc/lowerdir /opt -xdev | sort | while read -r p; do stat -c "%n %F %a %u %g" "$p"; done; ' +
  'find /opt -xdev -type f | sort | while read -r f; do stat -c "%n %s %h" "$f"; md5sum "$f"; done; ' +
  'cat /etc/group 2>&1 | head -1; ls /etc/lowerdir';

async function view(who: 'root' | 'user', overlays: string[], fakeroot = false): Promise<string> {
  const args = [
    'exec',
    ...(fakeroot ? ['--fakeroot'] : []),
    ...overlays.flatMap((o) => ['--overlay', o]),
    base,
    'sh',
    '-c',
    LIST,
  ];
  const r =
    who === 'root'
      ? await execa('apptainer', args, { reject: false })
      : await runAs(user, ['apptainer', ...args]);
  return r.stdout;
}

beforeAll(async () => {
  base = await ensureBaseImage();
  user = await ensureTestUser();
  dir = mkdtempSync(join(tmpdir(), 'ov-layer-'));
  chmodSync(dir, 0o777);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('whiteout planning', () => {
  it('turns both writer forms into 0:0 whiteouts and explicit whiteouts for replaced dirs', () => {
    const p = planDirectory(
      [
        { name: '.wh.group', kind: 'file' },
        { name: 'gone', kind: 'chardev', whiteoutDevice: true },
        { name: '.wh..wh..opq', kind: 'file' },
        { name: '.wh..opq', kind: 'chardev', whiteoutDevice: true },
        { name: 'c', kind: 'file' },
      ],
      false,
      new Set(['a', 'b', 'c']),
    );
    expect(p.whiteouts).toEqual(['a', 'b', 'gone', 'group']);
    expect(p.drop).toEqual(['.wh..opq', '.wh..wh..opq', '.wh.group']);
    expect(p.needsOpaqueXattr).toBe(false);
    expect(planDirectory([{ name: 'x', kind: 'file' }], true, undefined).needsOpaqueXattr).toBe(true);
    expect(
      planDirectory(
        [
          { name: '.wh.x', kind: 'file' },
          { name: 'x', kind: 'file' },
        ],
        false,
      ).whiteouts,
    ).toEqual([]);
  });
});

describe('commit (root writer, kernel whiteouts)', () => {
  it('the view before commit equals the view after commit --reset, for every reader; ', async () => {
    const img = join(dir, 'root.img');
    await execa(CLI, ['create', img, '--size', '128']);
    await execa('apptainer', ['exec', '--overlay', img, base, 'sh', '-c', CHANGES]);
    await execa('setfattr', ['-n', 'user.note', '-v', 'kept', img]).catch(() => {});
    const before = await view('root', [`${img}:ro`]);
    expect(before).toContain("can't open '/etc/group'");
    expect(before).not.toMatch(/^\/etc\/lowerdir\/a /m);
    expect(before).toMatch(/\/opt\/new\/suid regular file 4755/);

    const layer = join(dir, 'root.sqf');
    const c = await execa(CLI, ['commit', img, '--output', layer, '--base', base, '--reset', '--json']);
    const out = JSON.parse(c.stdout);
    expect(out.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(out.reset).toBe(true);
    expect((await execa('debugfs', ['-R', 'ls /upper', img])).stdout).not.toMatch(/etc|opt/);
    chmodSync(layer, 0o644);

    expect(await view('root', [`${layer}:ro`, `${img}:ro`])).toBe(before);
    expect(await view('root', [`${layer}:ro`, img])).toBe(before);
    expect(await view('user', [`${layer}:ro`], true)).toBe(before); // owners: --fakeroot maps root back to 0

    // the layer's root is upper/'s content: no /upper inside
    expect((await execa('unsquashfs', ['-l', layer])).stdout).not.toMatch(/squashfs-root\/upper/);
  });

  it('commit fails fast with E_LOCKED while a writer runs, and leaves no layer', async () => {
    const img = join(dir, 'busy.img');
    await execa(CLI, ['create', img, '--size', '64']);
    const w = execa('apptainer', ['exec', '--overlay', img, base, 'sleep', '4'], { reject: false });
    await new Promise((r) => setTimeout(r, 1500));
    const r = await execa(CLI, ['commit', img, '--output', join(dir, 'busy.sqf'), '--json'], {
      reject: false,
    });
    expect(JSON.parse(r.stdout).error.code).toBe('E_LOCKED');
    await w;
    expect((await execa('ls', ['-a', dir])).stdout).not.toMatch(/busy\.sqf/);
  });

  it('commit refuses an image whose journal still holds writes (a read-only mount would drop them)', async () => {
    const img = join(dir, 'crashed.img');
    await execa(CLI, ['create', img, '--size', '64']);
    await execa('debugfs', ['-w', '-R', 'feature needs_recovery', img]);
    const before = (await execa('sha256sum', [img])).stdout;
    const r = await execa(CLI, ['commit', img, '--output', join(dir, 'crashed.sqf'), '--json'], {
      reject: false,
    });
    expect(r.exitCode).not.toBe(0);
    expect(JSON.parse(r.stdout).error).toMatchObject({ code: 'E_INTEGRITY' });
    expect(JSON.parse(r.stdout).error.message).toMatch(/journal/);
    expect((await execa('ls', ['-a', dir])).stdout).not.toMatch(/crashed\.sqf/);
    expect((await execa('sha256sum', [img])).stdout).toBe(before);
  });
});

describe('portable overlays (fakeroot writer through fuse-overlayfs)', () => {
  it('without normalize the :ro views differ from the writer; after normalize all four readers agree', async () => {
    const udir = mkdtempSync(join(tmpdir(), 'ov-portable-'));
    chownSync(udir, user.uid, user.gid);
    const img = join(udir, 'fr.img');
    expect((await runAs(user, [CLI, 'create', img, '--size', '128', '--fakeroot'])).exitCode).toBe(0);
    const w = await runAs(user, [
      'apptainer',
      'exec',
      '--fakeroot',
      '--overlay',
      img,
      base,
      'sh',
      '-c',
      CHANGES,
    ]);
    expect(w.exitCode, w.stderr).toBe(0);
    const writer = await view('user', [img], true);
    expect(writer).toContain("can't open '/etc/group'");

    // today's Apptainer: a read-only reader sees the deleted file again
    const roBefore = await view('user', [`${img}:ro`], true);
    expect(roBefore).not.toContain("can't open '/etc/group'");

    // info and check find the markers a nightly check should report
    const info = JSON.parse((await runAs(user, [CLI, 'info', img, '--json'])).stdout);
    expect(info.nonPortableMarkers.count).toBeGreaterThan(0);
    const check = JSON.parse((await runAs(user, [CLI, 'check', img, '--json'])).stdout);
    expect(check.images[0].warnings.join(' ')).toMatch(/non-portable/);

    const n = await runAs(user, [CLI, 'normalize', img, '--base', base, '--json']);
    expect(n.exitCode, n.stderr).toBe(0);
    expect(JSON.parse(n.stdout).changed).toBe(true);
    const again = await runAs(user, [CLI, 'normalize', img, '--base', base, '--json']);
    expect(JSON.parse(again.stdout).changed).toBe(false); // idempotent
    const after = JSON.parse((await runAs(user, [CLI, 'info', img, '--json'])).stdout);
    expect(after.nonPortableMarkers.count).toBe(0);

    const deleted = (v: string) => v.includes("can't open '/etc/group'");
    const newOnly = (v: string) => /^c$/m.test(v) && !/^\/etc\/lowerdir\/a /m.test(v);
    for (const [who, ov, fr] of [
      ['user', img, true],
      ['user', `${img}:ro`, true],
      ['root', img, false],
      ['root', `${img}:ro`, false],
    ] as const) {
      const v = await view(who, [ov], fr);
      expect(deleted(v), `${who} ${ov}`).toBe(true);
      expect(newOnly(v), `${who} ${ov}`).toBe(true);
      expect(
        v
          .split('\n')
          .filter((l) => l.startsWith('/opt/new'))
          .join('\n'),
      ).toBe(
        writer
          .split('\n')
          .filter((l) => l.startsWith('/opt/new'))
          .join('\n'),
      );
    }
    // commit of a fakeroot image gives a layer every reader honours too
    const layer = join(udir, 'fr.sqf');
    expect((await runAs(user, [CLI, 'commit', img, '--output', layer, '--base', base])).exitCode).toBe(0);
    for (const who of ['user', 'root'] as const) {
      const v = await view(who, [`${layer}:ro`], who === 'user');
      expect(deleted(v)).toBe(true);
      expect(v).not.toMatch(/^\/etc\/lowerdir\/a /m);
    }
    rmSync(udir, { recursive: true, force: true });
  });
});

describe('squash', () => {
  it('a merged layer shows what the stack showed, with deletions applied', async () => {
    const img = join(dir, 'sq.img');
    await execa(CLI, ['create', img, '--size', '64']);
    await execa('apptainer', [
      'exec',
      '--overlay',
      img,
      base,
      'sh',
      '-c',
      'mkdir -p /opt/s && echo 1 > /opt/s/a && echo 2 > /opt/s/b',
    ]);
    const l1 = join(dir, 'sq1.sqf');
    await execa(CLI, ['commit', img, '--output', l1, '--reset', '--base', base]);
    await execa('apptainer', [
      'exec',
      '--overlay',
      `${l1}:ro`,
      '--overlay',
      img,
      base,
      'sh',
      '-c',
      'rm /opt/s/a /etc/group && echo 3 > /opt/s/c',
    ]);
    const l2 = join(dir, 'sq2.sqf');
    await execa(CLI, ['commit', img, '--output', l2, '--reset', '--base', base, '--layer', l1]);
    const stacked = await view('root', [`${l1}:ro`, `${l2}:ro`]);
    const merged = join(dir, 'merged.sqf');
    const r = JSON.parse((await execa(CLI, ['squash', l1, l2, '--output', merged, '--json'])).stdout);
    expect(r.layers).toBe(2);
    expect(await view('root', [`${merged}:ro`])).toBe(stacked);
    expect(stacked).toContain("can't open '/etc/group'");
  });
});
