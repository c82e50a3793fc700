// Write every action.yml (the root one = setup-overlay, and actions/<name>/action.yml) from the
// task schemas and packages/actions/src/specs.ts. `--check` writes nothing and fails when a file
// on disk differs (test/actions/schema-agreement.test.ts checks the same, field by field).
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build } from 'esbuild';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Bundle packages/actions/src/meta.ts (TypeScript, extension-less imports) and import it. */
export async function loadMeta() {
  const dir = mkdtempSync(join(tmpdir(), 'ov-gen-'));
  const outfile = join(dir, 'meta.mjs');
  try {
    await build({
      entryPoints: [join(root, 'packages/actions/src/meta.ts')],
      outfile,
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      external: ['koffi'],
      logLevel: 'warning',
      banner: {
        js: "import { createRequire as __r } from 'node:module'; const require = __r(import.meta.url);",
      },
    });
    return await import(pathToFileURL(outfile).href);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Write (or with check, compare) files given as { relative path: content }; returns stale ones. */
export function writeFiles(files, { check = false } = {}) {
  const stale = [];
  for (const [rel, content] of Object.entries(files)) {
    const path = join(root, rel);
    let current = null;
    try {
      current = readFileSync(path, 'utf8');
    } catch {}
    if (current === content) continue;
    stale.push(rel);
    if (!check) {
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, content);
    }
  }
  return stale;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const check = process.argv.includes('--check');
  const meta = await loadMeta();
  const stale = writeFiles(meta.actionYmlFiles(), { check });
  for (const rel of stale) console.log(`${check ? 'stale' : 'wrote'} ${rel}`);
  if (check && stale.length) {
    console.error('action.yml files are out of date: run node scripts/gen-actions.mjs');
    process.exit(1);
  }
}
