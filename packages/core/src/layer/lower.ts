import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveBase } from '../base/resolve';
import { OverlayError } from '../errors';
import { runTool } from '../tools/run';

/** The lower stack's view: directory path ('' = root, 'etc', 'opt/x') -> names it holds. */
export type LowerListing = Map<string, Set<string>>;

/** One entry of a SquashFS listing (`unsquashfs -lln`), with what a merge needs to rebuild it. */
export interface SquashEntry {
  /** Path relative to the layer's root; '' is the root itself. */
  path: string;
  /** ls type letter: '-' file, d, l, c, b, p, s. */
  type: string;
  mode: number;
  uid: number;
  gid: number;
  /** Devices: major, minor. */
  dev?: [number, number];
  /** A char 0:0 device: a deletion of the name in the layers below. */
  whiteout: boolean;
}

const LLN =
  /^([-dlcbps])([rwxsStT-]{9})\s+(\d+)\/(\d+)\s+(?:(\d+),\s*(\d+)|\d+)\s+\S+\s+\S+\s+squashfs-root(?:\/(.*))?$/;

/** Permission bits from `rwsr-xr-T`-style text (setuid, setgid and sticky included). */
export function modeFromPerms(perms: string): number {
  let mode = 0;
  const special = [0o4000, 0o2000, 0o1000];
  for (let i = 0; i < 3; i++) {
    const [r, w, x] = perms.slice(i * 3, i * 3 + 3);
    const shift = (2 - i) * 3;
    if (r === 'r') mode |= 4 << shift;
    if (w === 'w') mode |= 2 << shift;
    if (x === 'x' || x === 's' || x === 't') mode |= 1 << shift;
    if (x === 's' || x === 'S' || x === 't' || x === 'T') mode |= special[i] as number;
  }
  return mode;
}

/** Every entry of a SquashFS file, root first, parents before children (unsquashfs order). */
export async function squashListing(file: string): Promise<SquashEntry[]> {
  const { stdout } = await runTool('unsquashfs', ['-lln', file], { timeoutSeconds: 600 });
  const out: SquashEntry[] = [];
  for (const line of stdout.split('\n')) {
    const m = LLN.exec(line);
    if (!m) continue;
    const type = m[1] as string;
    let path = m[7] ?? '';
    if (type === 'l') path = path.slice(0, path.indexOf(' -> ') < 0 ? undefined : path.indexOf(' -> '));
    const dev: [number, number] | undefined = m[5] ? [Number(m[5]), Number(m[6])] : undefined;
    out.push({
      path,
      type,
      mode: modeFromPerms(m[2] as string),
      uid: Number(m[3]),
      gid: Number(m[4]),
      dev,
      whiteout: type === 'c' && dev?.[0] === 0 && dev[1] === 0,
    });
  }
  return out;
}

/** Entries of a SquashFS file (path relative to its root, and whether it is a 0:0 whiteout). */
export async function squashEntries(file: string): Promise<Array<{ path: string; whiteout: boolean }>> {
  return (await squashListing(file)).filter((e) => e.path !== '');
}

async function sifEntries(sif: string): Promise<Array<{ path: string; whiteout: boolean }>> {
  const { stdout } = await runTool('apptainer', ['sif', 'list', sif]);
  const id = /^(\d+)\s*\|[^\n]*\|\s*FS \(Squashfs/m.exec(stdout)?.[1];
  if (!id) throw new OverlayError('E_UNKNOWN_FORMAT', `${sif} has no SquashFS root filesystem partition`);
  const dir = await mkdtemp(join(tmpdir(), 'overlay-sif-'));
  try {
    const part = join(dir, 'rootfs.sqf');
    await runTool('apptainer', ['sif', 'dump', id, sif], { stdout: { file: part } });
    return await squashEntries(part);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function dirEntries(root: string): Promise<Array<{ path: string; whiteout: boolean }>> {
  const out: Array<{ path: string; whiteout: boolean }> = [];
  for (const e of await readdir(root, { recursive: true, withFileTypes: true })) {
    const rel = join(e.parentPath, e.name).slice(root.length + 1);
    out.push({ path: rel, whiteout: e.isCharacterDevice() });
  }
  return out;
}

function add(listing: LowerListing, path: string) {
  const i = path.lastIndexOf('/');
  const dir = i < 0 ? '' : path.slice(0, i);
  const name = path.slice(i + 1);
  if (!listing.has(dir)) listing.set(dir, new Set());
  listing.get(dir)!.add(name);
}

function remove(listing: LowerListing, path: string) {
  const i = path.lastIndexOf('/');
  listing.get(i < 0 ? '' : path.slice(0, i))?.delete(path.slice(i + 1));
  for (const dir of [...listing.keys()]) if (dir === path || dir.startsWith(`${path}/`)) listing.delete(dir);
}

/** Merge the base image and the given layers (later over earlier), honouring 0:0 whiteouts. */
export async function lowerListing(base: string | undefined, layers: string[]): Promise<LowerListing> {
  const listing: LowerListing = new Map();
  const sources: Array<Array<{ path: string; whiteout: boolean }>> = [];
  if (base) {
    const { path } = await resolveBase(base);
    const isDir = await readdir(path)
      .then(() => true)
      .catch(() => false);
    sources.push(isDir ? await dirEntries(path) : await sifEntries(path));
  }
  for (const layer of layers) sources.push(await squashEntries(layer));
  for (const entries of sources) {
    for (const e of entries) {
      if (e.whiteout) remove(listing, e.path);
      else add(listing, e.path);
    }
  }
  return listing;
}
