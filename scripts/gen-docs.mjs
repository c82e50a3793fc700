// Generate docs/reference.md (every task: CLI usage and flags; every action: inputs, outputs,
// defaults) and docs/errors.md (ERROR_CODES) from the schemas. `--check` fails on stale docs.
import { pathToFileURL } from 'node:url';
import { loadMeta, writeFiles } from './gen-actions.mjs';

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const check = process.argv.includes('--check');
  const meta = await loadMeta();
  const stale = writeFiles(meta.docFiles(), { check });
  for (const rel of stale) console.log(`${check ? 'stale' : 'wrote'} ${rel}`);
  if (check && stale.length) {
    console.error('generated docs are out of date: run npm run docs');
    process.exit(1);
  }
}
