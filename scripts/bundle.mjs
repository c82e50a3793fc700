// Bundle the CLI and every action into self-contained ESM files (committed, checked by check-dist).
// koffi's native module (fcntl locks) cannot be inlined: it is copied next to each action bundle,
// where packages/core/src/tools/native.ts looks for it first; the CLI carries it in a comment on
// its last line (read only when the cached copy is missing, never parsed as code).
import { createHash } from 'node:crypto';
import { appendFileSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { build } from 'esbuild';

const root = join(dirname(new URL(import.meta.url).pathname), '..');
const require = createRequire(join(root, 'packages/core/package.json'));
const koffiNative = join(
  dirname(require.resolve('@koromix/koffi-linux-x64/package.json')),
  'linux_x64/koffi.node',
);
const koffiData = readFileSync(koffiNative);
const koffiId = createHash('sha256').update(koffiData).digest('hex').slice(0, 16);
// keep in step with KOFFI_PAYLOAD_MARKER in packages/core/src/tools/native.ts
// not compressed: zlib's output differs between builds of it, and check-dist needs the same bytes
const koffiLine = `\n// overlay-koffi-base64 ${koffiId} ${koffiData.toString('base64')}\n`;

// zod's classic API re-exports every locale (~360 kB of the bundle, parsed on every run); we use
// its default English messages only, which zod imports on its own.
const zodEnglishOnly = {
  name: 'zod-english-only',
  setup(b) {
    b.onResolve({ filter: /^\.\.\/locales\/index\.js$/ }, (args) =>
      args.importer.includes('/node_modules/zod/')
        ? // a path relative to the repository: the bundle names it, and must not depend on the checkout
          { path: relative(root, args.importer), namespace: 'zod-locales' }
        : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: 'zod-locales' }, (args) => ({
      contents: `export { default as en } from '../locales/en.js';`,
      resolveDir: dirname(join(root, args.path)),
      loader: 'js',
    }));
  },
};
const version = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version;

const common = {
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  external: ['koffi'],
  plugins: [zodEnglishOnly],
  legalComments: 'none',
  logLevel: 'warning',
  define: { OVERLAYCTL_VERSION: JSON.stringify(version) },
  // CommonJS dependencies call require(); give the ESM bundle one.
  banner: {
    js: "import { createRequire as __ovCreateRequire } from 'node:module'; const require = __ovCreateRequire(import.meta.url);",
  },
};

const targets = [
  {
    entry: 'packages/cli/src/bin.ts',
    out: 'packages/cli/dist/overlayctl.mjs',
    banner: '#!/usr/bin/env node',
    // one self-contained file for clusters: the native module travels inside it
    embedKoffi: true,
  },
];
const actionSrc = join(root, 'packages/actions/src/entries');
if (existsSync(actionSrc)) {
  for (const file of readdirSync(actionSrc)
    .filter((f) => f.endsWith('.ts'))
    .sort()) {
    const name = file.replace(/\.ts$/, '');
    targets.push({ entry: `packages/actions/src/entries/${file}`, out: `actions/${name}/dist/index.mjs` });
  }
}

for (const t of targets) {
  const outfile = join(root, t.out);
  mkdirSync(dirname(outfile), { recursive: true });
  await build({
    ...common,
    entryPoints: [join(root, t.entry)],
    outfile,
    banner: { js: [t.banner, common.banner.js].filter(Boolean).join('\n') },
    define: {
      ...common.define,
      ...(t.embedKoffi ? { __OVERLAY_KOFFI_ID__: JSON.stringify(koffiId) } : {}),
    },
  });
  if (t.embedKoffi) appendFileSync(outfile, koffiLine);
  else copyFileSync(koffiNative, join(dirname(outfile), 'koffi.node'));
  console.log(`bundled ${t.out}`);
}
