/**
 * The one whiteout model shared by commit, squash and normalize.
 *
 * Writers mark deletions differently: kernel overlayfs (root, no fakeroot) writes a char device
 * 0:0 and `trusted.overlay.opaque=y`; fuse-overlayfs (--fakeroot, unprivileged) writes `.wh.NAME`
 * files and `.wh..wh..opq` (+ `user.fuseoverlayfs.opaque`, and a stray 0:0 device `.wh..opq`).
 * Every reader honours one form only: a char 0:0 device per deleted name, and explicit whiteouts
 * for every lower name of a replaced (opaque) directory. That is the portable form we emit.
 */
export const WH_PREFIX = '.wh.';
export const FUSE_OPAQUE_FILE = '.wh..wh..opq';
export const STRAY_OPAQUE_DEVICE = '.wh..opq';
export const OPAQUE_XATTRS = ['trusted.overlay.opaque', 'user.fuseoverlayfs.opaque'];
export const STRIP_XATTR_PREFIXES = ['trusted.overlay.', 'user.fuseoverlayfs.'];

export interface UpperEntry {
  name: string;
  kind: 'file' | 'dir' | 'symlink' | 'chardev' | 'other';
  /** For char devices: true when major:minor is 0:0. */
  whiteoutDevice?: boolean;
}

export type EntryRole =
  | { role: 'content' }
  | { role: 'whiteout'; hides: string; form: 'kernel' | 'fuse' }
  | { role: 'opaque-marker' };

export function classify(entry: UpperEntry): EntryRole {
  if (entry.name === FUSE_OPAQUE_FILE) return { role: 'opaque-marker' };
  if (entry.name === STRAY_OPAQUE_DEVICE && entry.kind === 'chardev') return { role: 'opaque-marker' };
  if (entry.kind === 'chardev' && entry.whiteoutDevice)
    return { role: 'whiteout', hides: entry.name, form: 'kernel' };
  if (entry.name.startsWith(WH_PREFIX) && entry.name.length > WH_PREFIX.length && entry.kind === 'file') {
    return { role: 'whiteout', hides: entry.name.slice(WH_PREFIX.length), form: 'fuse' };
  }
  return { role: 'content' };
}

export interface DirPlan {
  /** Names to store as char 0:0 whiteouts in the portable form. */
  whiteouts: string[];
  /** Entries to drop: `.wh.NAME` files, opaque markers. */
  drop: string[];
  /** The directory replaced a lower one and no lower listing was given: fall back to the xattr. */
  needsOpaqueXattr: boolean;
}

/**
 * Plan one upper directory: `entries` as found, `opaque` whether any opaque marker was found
 * (marker file or xattr), `lowerNames` the names the lower stack has here (undefined = unknown).
 */
export function planDirectory(entries: UpperEntry[], opaque: boolean, lowerNames?: Set<string>): DirPlan {
  const whiteouts = new Set<string>();
  const drop: string[] = [];
  const present = new Set<string>();
  let isOpaque = opaque;
  for (const e of entries) {
    const c = classify(e);
    if (c.role === 'opaque-marker') {
      isOpaque = true;
      drop.push(e.name);
    } else if (c.role === 'whiteout') {
      whiteouts.add(c.hides);
      if (c.form === 'fuse') drop.push(e.name);
    } else present.add(e.name);
  }
  for (const name of present) whiteouts.delete(name); // a name both deleted and present: the file wins
  let needsOpaqueXattr = false;
  if (isOpaque) {
    if (lowerNames) {
      for (const name of lowerNames) if (!present.has(name)) whiteouts.add(name);
    } else needsOpaqueXattr = true;
  }
  return { whiteouts: [...whiteouts].sort(), drop: drop.sort(), needsOpaqueXattr };
}
