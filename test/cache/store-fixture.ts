// Runs cache-store operations in a child process (fixtures-store.ts, bundled once per test file):
// the GitHub adapter reads ACTIONS_*/GITHUB_WORKSPACE from the environment, as in a job.
import { copyFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { build } from 'esbuild';
import { execa } from 'execa';

export interface StoreCall {
  value?: unknown;
  error?: { code: string; message: string; hint?: string };
  stdout: string;
}

export async function bundleStoreFixture(dir: string): Promise<string> {
  const entry = join(dir, 'store-fixture.mjs');
  await build({
    entryPoints: [join(import.meta.dirname, 'fixtures-store.ts')],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outfile: entry,
    external: ['koffi'],
    banner: {
      js: "import { createRequire as __r } from 'node:module'; const require = __r(import.meta.url);",
    },
    logLevel: 'error',
  });
  const req = createRequire(join(import.meta.dirname, '../../packages/core/package.json'));
  copyFileSync(
    join(dirname(req.resolve('@koromix/koffi-linux-x64/package.json')), 'linux_x64/koffi.node'),
    join(dir, 'koffi.node'),
  );
  return entry;
}

export async function callStore(
  entry: string,
  spec: string,
  op: Record<string, unknown>,
  env: Record<string, string> = {},
): Promise<StoreCall> {
  const r = await execa(process.execPath, [entry, spec, JSON.stringify(op)], {
    env,
    reject: false,
    cwd: env.GITHUB_WORKSPACE,
  });
  const line = r.stdout.split('\n').find((l) => l.startsWith('RESULT '));
  if (!line) throw new Error(`store fixture failed (${r.exitCode}): ${r.stderr}\n${r.stdout}`);
  return { ...JSON.parse(line.slice(7)), stdout: r.stdout };
}
