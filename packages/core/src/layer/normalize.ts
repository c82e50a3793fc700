import { replaceAtomically } from '../fs/atomic';
import { copyImageFile } from '../image/copy';
import { debugfsQuote, runDebugfs } from '../image/debugfs';
import { requireExt3 } from '../image/format';
import { canEditInPlace, editInPlace, type InodeBlocks, parseInodeBlocks } from '../image/inplace';
import { acquireLock } from '../lock/ofd';
import { type LowerListing, lowerListing } from './lower';
import { OPAQUE_XATTRS, planDirectory, STRIP_XATTR_PREFIXES, type UpperEntry } from './whiteouts';

interface Node {
  ino: number;
  path: string; // '' for upper/ itself, else 'etc/x'
  name: string;
  mode: number;
}

const LS_LINE = /^\/(\d+)\/(\d+)\/\d+\/\d+\/(.*)\/[^/]*\/$/;
const S_IFMT = 0o170000;

/** Split `debugfs -f` output into one block per command (it echoes each as `debugfs: CMD`). */
function blocks(out: string): string[] {
  return out.split(/^debugfs: .*$/m).slice(1);
}

/** The attribute names in the `Extended attributes:` section of debugfs `ea_list` or `stat` output. */
function xattrNames(out: string): string[] {
  const at = out.indexOf('Extended attributes:\n');
  if (at < 0) return [];
  const names: string[] = [];
  for (const line of out.slice(at).split('\n').slice(1)) {
    const m = /^\s+(\S+) \(\d+\)/.exec(line);
    if (!m) break;
    names.push(m[1]!);
  }
  return names;
}

const S_IFDIR = 0o040000;
const S_IFCHR = 0o020000;

/**
 * What scan reads about an entry: directories `imap` + `stat` (xattrs, and where an in-place
 * strip writes), character devices `stat` (device numbers, xattrs), the rest `ea_list`.
 */
function factCmds(n: Node, ref: string): string[] {
  const t = n.mode & S_IFMT;
  if (t === S_IFDIR) return [`imap ${ref}`, `stat ${ref}`];
  return [t === S_IFCHR ? `stat ${ref}` : `ea_list ${ref}`];
}

/**
 * Every entry under upper/ with its path, breadth-first, one debugfs run per depth. With `facts`,
 * each run also reads the `factCmds` of the entries the run before found (one run fewer than a
 * separate pass; none more when the deepest level is empty).
 */
async function walkUpper(
  image: string,
  opts: { facts?: boolean } = {},
): Promise<{ dirs: Node[]; all: Node[]; children: Map<string, Node[]>; facts: Map<number, string[]> }> {
  const rootNode: Node = { ino: 0, path: '', name: 'upper', mode: 0o040755 };
  const dirs: Node[] = [rootNode];
  const all: Node[] = [rootNode];
  const children = new Map<string, Node[]>();
  const facts = new Map<number, string[]>();
  const seenDirs = new Set<number>();
  let level = [rootNode];
  let pending = opts.facts ? [rootNode] : [];
  // the first level is listed by path: its `.` entry gives upper/'s inode (one debugfs run fewer)
  let first = true;
  while (level.length || pending.length) {
    const ref = (n: Node) => (first ? '/upper' : `<${n.ino}>`);
    const out = blocks(
      await runDebugfs(image, [
        ...level.map((d) => `ls -p ${ref(d)}`),
        ...pending.flatMap((n) => factCmds(n, ref(n))),
      ]),
    );
    if (first) {
      const dot = (out[0] ?? '')
        .split('\n')
        .map((l) => LS_LINE.exec(l))
        .find((m) => m?.[3] === '.');
      rootNode.ino = Number(dot?.[1]);
      seenDirs.add(rootNode.ino);
      first = false;
    }
    let k = level.length;
    for (const n of pending) {
      const count = factCmds(n, '').length;
      facts.set(n.ino, out.slice(k, k + count));
      k += count;
    }
    const next: Node[] = [];
    const found: Node[] = [];
    level.forEach((dir, i) => {
      const kids: Node[] = [];
      for (const line of (out[i] ?? '').split('\n')) {
        const m = LS_LINE.exec(line);
        if (!m || m[3] === '.' || m[3] === '..' || m[1] === '0') continue;
        const node = {
          ino: Number(m[1]),
          name: m[3]!,
          path: dir.path ? `${dir.path}/${m[3]}` : m[3]!,
          mode: Number.parseInt(m[2]!, 8),
        };
        kids.push(node);
        all.push(node);
        found.push(node);
        // a damaged image can link a directory into itself: visit each directory inode once
        if ((node.mode & S_IFMT) === S_IFDIR && !seenDirs.has(node.ino)) {
          seenDirs.add(node.ino);
          next.push(node);
        }
      }
      children.set(dir.path, kids);
    });
    dirs.push(...next);
    level = next;
    pending = opts.facts ? found.filter((n) => !facts.has(n.ino)) : [];
  }
  return { dirs, all, children, facts };
}

export interface NormalizeResult {
  image: string;
  deletionsRewritten: number;
  opaqueDirs: number;
  explicitWhiteouts: number;
  xattrsStripped: number;
  changed: boolean;
  /** How the image was rewritten: in place (only xattrs removed, under an undo log), on a copy, or not at all. */
  rewrite: 'in-place' | 'copy' | 'none';
  warnings: string[];
}

export interface NonPortableMarkers {
  count: number;
  examples: string[];
}

async function scan(image: string, lower: LowerListing | undefined) {
  const { dirs, all, children, facts } = await walkUpper(image, { facts: true });
  const zeroDev = new Set<number>();
  const xattrs = new Map<number, string[]>();
  const known = new Map<number, InodeBlocks>();
  for (const n of all) {
    const f = facts.get(n.ino) ?? [];
    const t = n.mode & S_IFMT;
    if (t === S_IFDIR) {
      const where = parseInodeBlocks(f[0] ?? '', f[1] ?? '');
      if (where) known.set(n.ino, where);
    }
    if (t === S_IFCHR && /major\/minor number:\s*00:00/.test(f[0] ?? '')) zeroDev.add(n.ino);
    const names = xattrNames(f.at(-1) ?? '');
    if (names.length) xattrs.set(n.ino, names);
  }
  const cmds: string[] = [];
  const warnings: string[] = [];
  const examples: string[] = [];
  let deletions = 0;
  let opaqueDirs = 0;
  let explicit = 0;
  let stripped = 0;
  for (const dir of dirs) {
    const kids = children.get(dir.path) ?? [];
    const entries: UpperEntry[] = kids.map((k) => {
      const t = k.mode & S_IFMT;
      const kind =
        t === 0o040000
          ? 'dir'
          : t === 0o100000
            ? 'file'
            : t === 0o120000
              ? 'symlink'
              : t === 0o020000
                ? 'chardev'
                : 'other';
      return { name: k.name, kind, whiteoutDevice: zeroDev.has(k.ino) };
    });
    const dirXattrs = xattrs.get(dir.ino) ?? [];
    const opaque = dirXattrs.some((x) => OPAQUE_XATTRS.includes(x));
    const plan = planDirectory(entries, opaque, lower ? (lower.get(dir.path) ?? new Set()) : undefined);
    const at = `/upper${dir.path ? `/${dir.path}` : ''}`;
    const existing = new Set(
      entries.filter((e) => e.kind === 'chardev' && e.whiteoutDevice).map((e) => e.name),
    );
    const markerFound = plan.drop.length > 0 || opaque;
    if (plan.drop.length || plan.whiteouts.some((w) => !existing.has(w)) || markerFound) {
      cmds.push(`cd ${debugfsQuote(at)}`);
      for (const name of plan.drop) {
        cmds.push(`rm ${debugfsQuote(name)}`);
        if (name.startsWith('.wh.') && !name.startsWith('.wh..')) deletions++;
        if (examples.length < 5) examples.push(`${at}/${name}`);
      }
      for (const name of plan.whiteouts) {
        if (existing.has(name)) continue;
        if (!plan.drop.includes(`.wh.${name}`)) explicit++;
        cmds.push(`mknod ${debugfsQuote(name)} c 0 0`, `sif ${debugfsQuote(name)} mode 020000`);
      }
    }
    if (plan.needsOpaqueXattr) {
      warnings.push(
        `${at} replaced a lower directory; without --base/--layer it is marked trusted.overlay.opaque (root readers only)`,
      );
      if (!dirXattrs.includes('trusted.overlay.opaque'))
        cmds.push(`ea_set ${debugfsQuote(at)} trusted.overlay.opaque y`);
    }
    if (opaque || plan.drop.some((d) => d.startsWith('.wh..'))) opaqueDirs++;
    for (const x of dirXattrs) {
      if (plan.needsOpaqueXattr && x === 'trusted.overlay.opaque') continue;
      if (OPAQUE_XATTRS.includes(x)) {
        cmds.push(`ea_rm <${dir.ino}> ${x}`);
        stripped++;
      }
    }
  }
  for (const n of all) {
    if (dirs.includes(n)) continue;
    for (const x of xattrs.get(n.ino) ?? []) {
      if (STRIP_XATTR_PREFIXES.some((p) => x.startsWith(p))) {
        cmds.push(`ea_rm <${n.ino}> ${x}`);
        stripped++;
      }
    }
  }
  for (const dir of dirs) {
    for (const x of xattrs.get(dir.ino) ?? []) {
      if (STRIP_XATTR_PREFIXES.some((p) => x.startsWith(p)) && !OPAQUE_XATTRS.includes(x)) {
        cmds.push(`ea_rm <${dir.ino}> ${x}`);
        stripped++;
      }
    }
  }
  return { cmds, warnings, examples, deletions, opaqueDirs, explicit, stripped, known };
}

/** Writer-specific markers (fuse-overlayfs `.wh.*` files, opaque markers) that read-only readers ignore. */
export async function findNonPortableMarkers(image: string): Promise<NonPortableMarkers> {
  const { all } = await walkUpper(image);
  const markers = all.filter((n) => n.name.startsWith('.wh.'));
  return { count: markers.length, examples: markers.slice(0, 5).map((n) => `/upper/${n.path}`) };
}

/**
 * Rewrite upper/'s deletion markers into the form every reader honours (0:0 devices; explicit
 * whiteouts for replaced directories when the lower stack is known), strip overlay bookkeeping
 * xattrs. On the image file with debugfs: unprivileged, no mount; on a copy, renamed into place;
 * idempotent (a second run finds nothing to do and leaves the file alone).
 */
export async function normalizeImage(
  image: string,
  opts: { base?: string; layers?: string[]; lockHeld?: boolean; onProgress?: (line: string) => void } = {},
): Promise<NormalizeResult> {
  const progress = opts.onProgress ?? (() => {});
  await requireExt3(image);
  const work = async (lockFd?: number) => {
    progress(`normalize: scanning ${image} upper/`);
    let plan = await scan(image, undefined);
    // the lower stack is listed only when a replaced directory needs it (listing a base costs)
    if (plan.opaqueDirs > 0 && (opts.base || opts.layers?.length)) {
      progress('normalize: listing the lower layers (replaced directories need them)');
      plan = await scan(image, await lowerListing(opts.base, opts.layers ?? []));
    }
    // removing xattrs only (a root exec) is done in place; anything else on a copy renamed into place
    const rewrite: NormalizeResult['rewrite'] = !plan.cmds.length
      ? 'none'
      : canEditInPlace(plan.cmds)
        ? 'in-place'
        : 'copy';
    if (rewrite !== 'none')
      progress(`normalize: ${plan.cmds.length} edits, ${rewrite === 'in-place' ? 'in place' : 'on a copy'}`);
    if (rewrite === 'in-place') await editInPlace(image, plan.cmds, { lockFd, known: plan.known });
    if (rewrite === 'copy') {
      await replaceAtomically(image, async (tmp) => {
        await copyImageFile(image, tmp);
        await runDebugfs(tmp, plan.cmds, { write: true });
      });
    }
    return {
      image,
      deletionsRewritten: plan.deletions,
      opaqueDirs: plan.opaqueDirs,
      explicitWhiteouts: plan.explicit,
      xattrsStripped: plan.stripped,
      changed: plan.cmds.length > 0,
      rewrite,
      warnings: plan.warnings,
    };
  };
  if (opts.lockHeld) return work();
  const lock = await acquireLock(image, 'exclusive');
  try {
    return await work(lock.fd);
  } finally {
    lock.release();
  }
}
