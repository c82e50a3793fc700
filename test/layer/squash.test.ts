import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { modeFromPerms, type SquashEntry } from '../../packages/core/src/layer/lower';
import { mergeListings } from '../../packages/core/src/layer/squash';
import { ensureBaseImage } from '../helpers/base-image';
import { ensureTestUser, runAs, type TestUser } from '../helpers/users';

/**
 * squash as an ordinary user, over layers with every kind of deletion: the merged layer must show
 * every reader (root and user) exactly what the stack showed.
 */
const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
let dir: string;
let base: string;
let user: TestUser;

// type, mode, owner, size and checksum of every entry under /etc and /opt, and the deleted file
const LIST =
  'find /etc /opt -xdev | sort | while read -r p; do stat -c "%n %F %a %u %g" "$p"; done; ' +
  'find /etc /opt -xdev -type f | sort | while read -r f; do stat -c "%n %s" "$f"; md5sum "$f"; done; ' +
  'cat /etc/group 2>&1 | head -1; ls -a /etc/lowerdir /opt/lower';

async function view(who: 'root' | 'user', layers: string[]): Promise<string> {
  const args = ['exec', ...layers.flatMap((l) => ['--overlay', `${l}:ro`]), base, 'sh', '-c', LIST];
  const r =
    who === 'root'
      ? await execa('apptainer', args, { reject: false })
      : await runAs(user, ['apptainer', ...args]);
  expect(r.stderr).not.toMatch(/FATAL/);
  return r.stdout;
}

type Spec = Record<
  string,
  string | { dev: true } | { mode?: number; uid?: number; content?: string; dir?: true; xattr?: string }
>;

/** A layer from a spec: files, directories, 0:0 whiteouts (mknod as root), owners, modes, xattrs. */
async function layer(name: string, spec: Spec): Promise<string> {
  const root = join(dir, `${name}.d`);
  mkdirSync(root);
  const dirModes: Array<[string, number]> = [];
  for (const [path, what] of Object.entries(spec)) {
    const p = join(root, path);
    mkdirSync(dirname(p), { recursive: true });
    if (typeof what === 'string') writeFileSync(p, what);
    else if ('dev' in what) await execa('mknod', [p, 'c', '0', '0']);
    else {
      if (what.dir) mkdirSync(p, { recursive: true });
      else writeFileSync(p, what.content ?? '');
      if (what.uid !== undefined) chownSync(p, what.uid, what.uid + 1);
      if (what.xattr) await execa('setfattr', ['-n', 'user.note', '-v', what.xattr, p]);
      if (what.mode !== undefined) {
        if (what.dir) dirModes.push([p, what.mode]);
        else chmodSync(p, what.mode);
      }
    }
  }
  for (const [p, mode] of dirModes) chmodSync(p, mode);
  const out = join(dir, `${name}.sqf`);
  await execa('mksquashfs', [root, out, '-noappend', '-no-progress', '-quiet']);
  chmodSync(out, 0o644);
  return out;
}

let layers: string[];

beforeAll(async () => {
  base = await ensureBaseImage();
  user = await ensureTestUser();
  dir = mkdtempSync(join(tmpdir(), 'ov-squash-'));
  chmodSync(dir, 0o755);
  const wh = { dev: true } as const;
  layers = [
    await layer('l1', {
      'opt/s/a': '1\n',
      'opt/s/b': { content: '2\n', uid: 1234, mode: 0o640, xattr: 'kept' },
      'opt/ro/f': 'r\n',
      'opt/ro': { dir: true, mode: 0o555 },
      'opt/suid': { content: 'su\n', mode: 0o4750 },
      'opt/gone/sub/x': 'g\n',
      'opt/lower/extra': 'e\n',
    }),
    await layer('l2', {
      'opt/s/a': wh, // a deletion of an earlier layer's file
      'etc/group': wh, // a deletion of a base file
      // a replaced (opaque) base directory, as commit stores it: explicit whiteouts + new content
      'etc/lowerdir/a': wh,
      'etc/lowerdir/b': wh,
      'etc/lowerdir/c': 'new\n',
      'opt/ro/new': 'n\n',
      'opt/ro': { dir: true, mode: 0o555 },
      'opt/gone/y': 'y\n',
    }),
    await layer('l3', { 'opt/gone': wh, 'opt/lower': wh }),
    // made again over the deletions: the base's /opt/lower/file.txt must stay hidden
    await layer('l4', { 'opt/gone/z': 'again\n', 'opt/lower/new': { content: 'n\n', uid: 4321 } }),
  ];
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('merge planning', () => {
  const e = (path: string, type = '-', whiteout = false): SquashEntry => ({
    path,
    type,
    mode: 0o644,
    uid: 0,
    gid: 0,
    whiteout,
  });
  it('reads ls permission text, special bits included', () => {
    expect(modeFromPerms('rwsr-x---')).toBe(0o4750);
    expect(modeFromPerms('rwxrwxrwt')).toBe(0o1777);
    expect(modeFromPerms('rw-r-Sr--')).toBe(0o2644);
  });
  it('whiteouts remove earlier subtrees, a directory over a deletion is recreated', () => {
    const { merged, recreated } = mergeListings([
      [e('', 'd'), e('a', 'd'), e('a/x'), e('a/d', 'd'), e('a/d/y'), e('f')],
      [e('', 'd'), e('a', 'd'), e('a/d', 'c', true), e('f', 'd'), e('f/z')],
      [e('', 'd'), e('a', 'd'), e('a/d', 'd'), e('a/d/n')],
    ]);
    expect([...merged.keys()].sort()).toEqual(['', 'a', 'a/d', 'a/d/n', 'a/x', 'f', 'f/z']);
    expect(merged.get('a/d')?.layer).toBe(2);
    expect([...recreated].sort()).toEqual(['a/d', 'f']);
  });
});

describe('squash, unprivileged', () => {
  it('view over the squashed layer == view over the stack, for root and user readers', async () => {
    const stackRoot = await view('root', layers);
    // the stack really carries deletions of every kind
    expect(stackRoot).toContain("can't open '/etc/group'");
    expect(stackRoot).not.toMatch(/^\/opt\/s\/a /m);
    expect(stackRoot).not.toMatch(/^\/opt\/lower\/file\.txt /m);
    expect(stackRoot).not.toMatch(/^\/etc\/lowerdir\/a /m);
    expect(stackRoot).not.toMatch(/^\/opt\/gone\/(y|sub) /m);
    expect(stackRoot).toMatch(/^\/opt\/s\/b regular file 640 1234 1235$/m);
    expect(stackRoot).toMatch(/^\/opt\/suid regular file 4750 0 0$/m);
    expect(stackRoot).toMatch(/^\/opt\/ro directory 555 0 0$/m);

    const out = join(dir, 'out');
    mkdirSync(out);
    chownSync(out, user.uid, user.gid);
    const merged = join(out, 'merged.sqf');
    const r = await runAs(user, [CLI, 'squash', ...layers, '--output', merged, '--base', base, '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    const res = JSON.parse(r.stdout);
    expect(res).toMatchObject({ layers: 4, warnings: [] });
    // /etc/group, /etc/lowerdir/{a,b}, /opt/s/a, /opt/lower/file.txt (kept hidden under the remade dir)
    expect(res.whiteouts).toBe(5);

    expect(await view('root', [merged])).toBe(stackRoot);
    const stackUser = await view('user', layers);
    expect(stackUser).toMatch(/^\/opt\/s\/b regular file 640 65534 65534$/m); // unmapped owners, as users see them
    expect(stackUser).not.toMatch(/^\/opt\/lower\/file\.txt /m);
    expect(await view('user', [merged])).toBe(stackUser);

    // user xattrs survive an unprivileged squash
    const x = join(dir, 'x');
    await execa('unsquashfs', ['-no-progress', '-d', x, merged, 'opt/s/b']);
    expect((await execa('getfattr', ['-n', 'user.note', '--only-values', join(x, 'opt/s/b')])).stdout).toBe(
      'kept',
    );
  });

  it('as root too, and without --base it says which directory may show old content', async () => {
    const merged = join(dir, 'merged-root.sqf');
    const r = JSON.parse((await execa(CLI, ['squash', ...layers, '--output', merged, '--json'])).stdout);
    expect(r.warnings.join(' ')).toMatch(/\/opt\/lower .*--base/);
    // everything else is as the stack shows it
    const strip = (v: string) =>
      v
        .split('\n')
        .filter((l) => !l.includes('file.txt'))
        .join('\n');
    expect(strip(await view('root', [merged]))).toBe(strip(await view('root', layers)));
  });
});
