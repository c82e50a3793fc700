import { chmod, lstat, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { replaceAtomically } from '../fs/atomic';
import { runTool } from '../tools/run';
import { type Compression, escapePseudo, sha256File } from './commit';
import { type LowerListing, lowerListing, type SquashEntry, squashListing } from './lower';

export interface SquashResult {
  layer: string;
  bytes: number;
  layers: number;
  whiteouts: number;
  sha256: string;
  seconds: number;
  warnings: string[];
}

interface Owned extends SquashEntry {
  /** Index of the layer the entry comes from. */
  layer: number;
}

const parentOf = (path: string) => (path.includes('/') ? path.slice(0, path.lastIndexOf('/')) : '');

/**
 * The merged stack from the layers' listings alone, as overlayfs would show it: a later entry
 * replaces an earlier one, a 0:0 whiteout removes the earlier subtree (and stays, since the base
 * image below may have the name), a non-directory over a directory replaces the subtree.
 * `recreated`: directories made over a deletion (or over a non-directory), under which the stack
 * hides whatever the base has.
 */
export function mergeListings(listings: SquashEntry[][]): {
  merged: Map<string, Owned>;
  recreated: Set<string>;
} {
  const merged = new Map<string, Owned>();
  const children = new Map<string, Set<string>>();
  const recreated = new Set<string>();
  // a subtree's removal costs its size, not the whole map's
  const removeTree = (path: string) => {
    merged.delete(path);
    recreated.delete(path);
    for (const child of children.get(path) ?? []) removeTree(child);
    children.delete(path);
  };
  listings.forEach((entries, layer) => {
    for (const e of entries) {
      const prev = merged.get(e.path);
      if (prev && (e.whiteout || (prev.type === 'd') !== (e.type === 'd'))) {
        removeTree(e.path);
        if (e.type === 'd') recreated.add(e.path);
      }
      merged.set(e.path, { ...e, layer });
      if (e.path !== '') {
        const parent = parentOf(e.path);
        if (!children.has(parent)) children.set(parent, new Set());
        children.get(parent)!.add(e.path);
      }
    }
  });
  return { merged, recreated };
}

/**
 * Whiteouts that keep hiding the base under recreated directories: every base name in such a
 * directory (or a directory below it that the merge still has) that the merge does not provide.
 */
export function hideBaseUnder(
  merged: Map<string, Owned>,
  recreated: Set<string>,
  base: LowerListing,
): string[] {
  const out: string[] = [];
  const under = (p: string) => [...recreated].some((r) => p === r || p.startsWith(`${r}/`));
  for (const [dir, names] of base) {
    if (!under(dir) || merged.get(dir)?.type !== 'd') continue;
    for (const name of names) {
      const path = `${dir}/${name}`;
      if (!merged.has(path)) out.push(path);
    }
  }
  return out.sort();
}

/** Make every directory writable and every file readable by us (modes are restored from the listing). */
async function openUp(root: string) {
  await chmod(root, 0o700);
  for (const d of await readdir(root, { recursive: true, withFileTypes: true })) {
    if (d.isSymbolicLink()) continue;
    const p = join(d.parentPath, d.name);
    const want = d.isDirectory() ? 0o700 : d.isFile() ? 0o600 : 0;
    if (!want) continue;
    const { mode } = await lstat(p);
    if ((mode & want) !== want) await chmod(p, (mode & 0o7777) | want);
  }
}

const DEVICE_TYPES = new Set(['c', 'b']);
const octal = (m: number) => m.toString(8).padStart(4, '0');

/**
 * Merge a stack of layers (earliest first) into one, applying each layer's whiteouts to what the
 * earlier ones provided: deleted files are gone from the result, so long chains stop growing.
 *
 * Works unprivileged: the merge is planned from the layers' listings (`unsquashfs -lln`); each
 * layer extracts only what survives from it (never a device node), and mksquashfs gets every
 * device (0:0 whiteouts included) and every owner and mode from the listing as pseudo definitions.
 * Xattrs come through extraction: all of them as root, `user.*` only otherwise (unsquashfs cannot
 * set the other namespaces unprivileged; docs/layers.md says so).
 */
export async function squashLayers(
  layers: string[],
  output: string,
  opts: { compression: Compression; base?: string; onProgress?: (line: string) => void },
): Promise<SquashResult> {
  const started = Date.now();
  const root = process.getuid?.() === 0;
  const listings: SquashEntry[][] = [];
  for (const layer of layers) listings.push(await squashListing(layer));
  const { merged, recreated } = mergeListings(listings);
  const warnings: string[] = [];
  if (recreated.size && opts.base) {
    for (const path of hideBaseUnder(merged, recreated, await lowerListing(opts.base, []))) {
      merged.set(path, { path, type: 'c', mode: 0, uid: 0, gid: 0, dev: [0, 0], whiteout: true, layer: -1 });
    }
  } else if (recreated.size) {
    warnings.push(
      `${[...recreated].map((p) => `/${p}`).join(', ')} deleted and made again in a later layer: give --base so the merged layer keeps hiding the base image's old content there`,
    );
  }
  const staging = await mkdtemp(join(dirname(output), '.squash-'));
  try {
    const tree = join(staging, 'root');
    for (const [i, layer] of layers.entries()) {
      // everything of this layer that does not survive as it is here; directories that survive
      // (whoever owns their metadata) are merged into, so they stay in
      const exclude = (listings[i] as SquashEntry[])
        .filter((e) => e.path !== '')
        .filter((e) => {
          const m = merged.get(e.path);
          if (m?.type === 'd' && e.type === 'd') return false;
          return m?.layer !== i || DEVICE_TYPES.has(e.type);
        })
        .map((e) => e.path);
      const excludeFile = join(staging, `exclude-${i}`);
      await writeFile(excludeFile, exclude.map((p) => `${p}\n`).join(''));
      opts.onProgress?.(`extracting ${layer}`);
      const r = await runTool(
        'unsquashfs',
        [
          '-f',
          '-no-progress',
          '-no-wildcards',
          ...(root ? [] : ['-user-xattrs']),
          '-exclude-file',
          excludeFile,
          '-d',
          tree,
          layer,
        ],
        { timeoutSeconds: 3600 },
      );
      if (/xattr/i.test(r.stderr)) warnings.push(`${layer}: ${r.stderr.trim().split('\n')[0]}`);
      // a later layer must be able to write into directories an earlier one made read-only
      if (!root) await openUp(tree);
    }
    // owners and modes from the listings (an unprivileged extraction owns everything itself),
    // devices and whiteouts as definitions: nothing on the host needs privileges
    const pseudo: string[] = [];
    let whiteouts = 0;
    for (const e of merged.values()) {
      if (e.path === '') continue;
      const name = escapePseudo(e.path);
      if (DEVICE_TYPES.has(e.type)) {
        if (e.whiteout) whiteouts++;
        const [major, minor] = e.dev ?? [0, 0];
        pseudo.push(`${name} ${e.type} ${octal(e.mode)} ${e.uid} ${e.gid} ${major} ${minor}`);
      } else if (!root) {
        pseudo.push(`${name} m ${octal(e.mode)} ${e.uid} ${e.gid}`);
      }
    }
    const pseudoFile = join(staging, 'pseudo');
    await writeFile(pseudoFile, pseudo.map((p) => `${p}\n`).join(''));
    const top = merged.get('');
    const rootArgs = top
      ? ['-root-mode', octal(top.mode), '-root-uid', String(top.uid), '-root-gid', String(top.gid)]
      : [];
    await mkdir(tree, { recursive: true });
    await replaceAtomically(output, async (tmp) => {
      const args = [tree, tmp, '-noappend', '-no-progress', '-comp', opts.compression, '-pf', pseudoFile];
      await runTool('mksquashfs', [...args, ...rootArgs], { onLine: opts.onProgress, timeoutSeconds: 3600 });
    });
    const { size } = await lstat(output);
    return {
      layer: output,
      bytes: size,
      layers: layers.length,
      whiteouts,
      sha256: await sha256File(output),
      seconds: Math.round((Date.now() - started) / 100) / 10,
      warnings,
    };
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
