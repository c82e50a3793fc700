import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveBase } from '../base/resolve';
import { OverlayError } from '../errors';
import { runTool } from '../tools/run';

/** The lower stack's view: directory path ('' = root, 'etc', 'opt/x') -> names it holds. */
export type LowerListing = Map<string, Set<string>>;

const LLN = /^([dlcbps-])\S*\s+\S+\s+(?:\d+,\s*\d+|\d+)\s+\S+\s+\S+\s+squashfs-root\/(.*?)(?: -> .*)?$/;

/** Entries of a SquashFS file (path relative to its root, and whether it is a 0:0 whiteout). */
export async function squashEntries(file: string): Promise<Array<{ path: string; whiteout: boolean }>> {
  const { stdout } = await runTool('unsquashfs', ['-lln', file], { timeoutSeconds: 600 });
  const out = [];
  for (const line of stdout.split('\n')) {
    const m = LLN.exec(line);
    if (!m?.[2]) continue;
    out.push({ path: m[2], whiteout: m[1] === 'c' && /\s0,\s*0\s/.test(line) });
  }
  return out;
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
