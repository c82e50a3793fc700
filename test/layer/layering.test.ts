// Data flows one way through packages/core: a folder may import only folders ranked below it.
// This reads the real sources, so a new `layer/ -> runtime/` import (the cycle that once existed)
// fails here before it can tangle the tree again.
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = join(__dirname, '../../packages/core/src');

/** Higher imports lower, never the other way; equal ranks must not import each other. */
const RANK: Record<string, number> = {
  tasks: 6,
  runtime: 5,
  layer: 4,
  cache: 4,
  // the SIF format and embedded overlays: uses image/ and lock/; cache/ (registry layers) uses it
  sif: 3.5,
  image: 3,
  base: 3,
  lock: 2,
  fs: 2,
  tools: 1,
  errors: 0,
  size: 0,
  // OCI: the registry client sits below cache/ (the registry store); push/pull of images and layers above
  registry: 3,
  transfer: 5,
  index: 7,
};

function folderOf(file: string): string {
  const rel = relative(SRC, file);
  const top = rel.split('/')[0] ?? rel;
  return top.replace(/\.ts$/, '');
}

/**
 * Upward imports that exist today, deferred with `await import()` so no load-time cycle forms:
 * image/ asks layer/normalize for non-portable whiteout markers, and hands a SIF to sif/overlay.
 * Moving that scan into image/ empties the first two; adding to the list needs a reason.
 */
const KNOWN_UPWARD = new Set([
  'image/check.ts: image -> layer',
  'image/info.ts: image -> layer',
  // a SIF given to info/check/resize/create goes to its embedded overlay (sif/overlay.ts), so
  // every front end (CLI, actions, build, workflows) takes SIFs without knowing about them
  'image/check.ts: image -> sif',
  'image/info.ts: image -> sif',
  'image/resize.ts: image -> sif',
  'image/create.ts: image -> sif',
  // taking a lock on an image first finishes or rolls back an in-place edit (exec's xattr strip)
  // that a killed process left, so no holder of the lock ever sees a half-edited image
  'lock/ofd.ts: lock -> fs',
  'lock/ofd.ts: lock -> image',
]);

/** Every relative import in packages/core/src as [fromFolder, toFolder, file]. */
function edges(): Array<[string, string, string]> {
  const out: Array<[string, string, string]> = [];
  for (const e of readdirSync(SRC, { recursive: true, withFileTypes: true })) {
    if (!e.isFile() || !e.name.endsWith('.ts')) continue;
    const file = join(e.parentPath, e.name);
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(/(?:from|import\()\s*'(\.{1,2}\/[^']+)'/g)) {
      const target = join(e.parentPath, m[1] as string);
      out.push([folderOf(file), folderOf(target), relative(SRC, file)]);
    }
  }
  return out;
}

describe('packages/core layering', () => {
  const all = edges();

  it('finds the imports it checks', () => {
    expect(all.some(([from, to]) => from === 'runtime' && to === 'layer')).toBe(true);
    expect(all.some(([from, to]) => from === 'layer' && to === 'base')).toBe(true);
  });

  it('layer/ never imports runtime/ or tasks/', () => {
    const bad = all.filter(([from, to]) => from === 'layer' && (to === 'runtime' || to === 'tasks'));
    expect(bad).toEqual([]);
  });

  it('every folder imports only folders ranked below it', () => {
    const bad = all
      .filter(([from, to]) => from !== to)
      .filter(([from, to]) => {
        const a = RANK[from];
        const b = RANK[to];
        return a === undefined || b === undefined || b >= a;
      })
      .map(([from, to, file]) => `${file}: ${from} -> ${to}`)
      .filter((edge) => !KNOWN_UPWARD.has(edge));
    expect(bad).toEqual([]);
  });
});
