// Write the values the non-GitHub front ends (Snakemake wrappers, CWL tools, Nextflow config) take
// from the exit-status table in packages/core/src/errors.ts, and copy the lines every Snakemake
// wrapper shares (packages/snakemake/wrapper-common.py) into each wrapper.py. `--check` writes
// nothing and fails when a file is stale (test/workflows/generated.test.ts runs it).
//
// A generated value sits on a line that ends with a marker comment, `gen-workflows: NAME`; the code
// before the marker holds exactly one value of NAME's kind (a number, or a parenthesised/bracketed
// list), which is replaced. So the files stay hand-written and readable, and only these values follow
// the table.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { pathToFileURL } from 'node:url';
import { build } from 'esbuild';
import { root, writeFiles } from './gen-actions.mjs';

/** The exit-status table (errors.ts has no imports: transpiled on its own and imported). */
export async function loadTable() {
  const out = await build({
    entryPoints: [join(root, 'packages/core/src/errors.ts')],
    bundle: true,
    write: false,
    platform: 'node',
    format: 'esm',
    logLevel: 'warning',
  });
  const url = `data:text/javascript;base64,${Buffer.from(out.outputFiles[0].text).toString('base64')}`;
  const { ERROR_CODES, EXIT_STATUS } = await import(url);
  return { ERROR_CODES, EXIT_STATUS };
}

/** The generated values, by marker name, each as the text it is written as. */
export function values({ ERROR_CODES, EXIT_STATUS }) {
  const retryableCodes = Object.keys(ERROR_CODES).filter(
    (c) => ERROR_CODES[c].exit === EXIT_STATUS.retryable,
  );
  if (!retryableCodes.includes('E_LOCKED')) throw new Error('E_LOCKED must exit with EXIT_STATUS.retryable');
  return {
    retryable: { pattern: /\b\d+\b/, text: String(EXIT_STATUS.retryable) },
    'retryable-codes': { pattern: /\([^()]*\)/, text: `(${retryableCodes.map((c) => `"${c}"`).join(', ')})` },
  };
}

const MARKER = /^(.*?)(\s*(?:#|\/\/)\s*gen-workflows: ([a-z-]+))\s*$/;

/** `text` with every marked value replaced; throws on an unknown marker or a line without one value. */
export function renderMarked(text, vals, file = '') {
  return text
    .split('\n')
    .map((line, i) => {
      const m = MARKER.exec(line);
      if (!m) return line;
      const [, code, marker, name] = m;
      const v = vals[name];
      if (!v) throw new Error(`${file}:${i + 1}: unknown marker gen-workflows: ${name}`);
      const global = new RegExp(v.pattern.source, 'g');
      if ((code.match(global) ?? []).length !== 1)
        throw new Error(`${file}:${i + 1}: needs exactly one value for ${name}: ${line}`);
      return code.replace(v.pattern, v.text) + marker;
    })
    .join('\n');
}

const COMMON_BEGIN = /^# --- common: begin .*---$/m;
const COMMON_END = /^# --- common: end ---$/m;

/** wrapper.py with the shared lines (the common file minus its leading comment block) in place. */
export function withCommon(wrapper, common, file = '') {
  const begin = COMMON_BEGIN.exec(wrapper);
  const end = COMMON_END.exec(wrapper);
  if (!begin || !end || end.index < begin.index)
    throw new Error(`${file}: no "# --- common: begin/end" markers`);
  const body = common.replace(/^(#[^\n]*\n)+\n/, '');
  const head = wrapper.slice(0, begin.index + begin[0].length);
  return `${head}\n${body.trimEnd()}\n${wrapper.slice(end.index)}`;
}

function walk(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? walk(path) : [path];
  });
}

/** Every generated file: { path relative to the root: content }. */
export async function generate() {
  const vals = values(await loadTable());
  const common = renderMarked(
    readFileSync(join(root, 'packages/snakemake/wrapper-common.py'), 'utf8'),
    vals,
    'wrapper-common.py',
  );
  const files = {};
  const sources = [
    ...walk(join(root, 'packages/snakemake')),
    ...walk(join(root, 'packages/cwl')),
    ...walk(join(root, 'packages/nextflow')),
    join(root, 'docs/workflows.md'),
    join(root, 'docs/nextflow.md'),
  ].filter((p) => /\.(py|cwl|config|nf|yml|yaml|md)$/.test(p) || p.endsWith('Snakefile'));
  for (const path of sources) {
    const rel = relative(root, path);
    let text = readFileSync(path, 'utf8');
    if (rel.startsWith('packages/snakemake/wrappers/') && rel.endsWith('/wrapper.py'))
      text = withCommon(text, common, rel);
    text = renderMarked(text, vals, rel);
    files[rel] = text;
  }
  return files;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const check = process.argv.includes('--check');
  const stale = writeFiles(await generate(), { check });
  for (const rel of stale) console.log(`${check ? 'stale' : 'wrote'} ${rel}`);
  if (check && stale.length) {
    console.error('workflow files are out of date: run node scripts/gen-workflows.mjs');
    process.exit(1);
  }
}
