// The single-file CLI copied alone (README "Install"): the native lock module travels in a comment
// on the bundle's last line and is written to the cache on first use; the copy works without the
// repository, and a bundle whose payload was altered refuses to load it.
import { copyFileSync, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
const MARKER = '// overlay-koffi-base64 ';

describe('overlayctl.mjs copied alone', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ov-standalone-'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  const run = (cli: string, cache: string, args: string[]) =>
    execa(process.execPath, [cli, ...args], {
      cwd: dir,
      env: { XDG_CACHE_HOME: cache, HOME: dir, TMPDIR: join(dir, 'no-such-tmp') },
      reject: false,
    });

  it('keeps the native module out of the code and writes it to the cache on first use', async () => {
    const text = readFileSync(CLI, 'latin1');
    const last = text.trimEnd().split('\n').at(-1)!;
    expect(last.startsWith(MARKER)).toBe(true);
    // no other copy of it (e.g. as a string literal parsed on every run)
    expect(text.indexOf(last.slice(MARKER.length + 17, MARKER.length + 17 + 200))).toBe(
      text.lastIndexOf(last.slice(MARKER.length + 17, MARKER.length + 17 + 200)),
    );

    const cli = join(dir, 'overlayctl.mjs');
    copyFileSync(CLI, cli);
    const cache = join(dir, 'cache');
    const img = join(dir, 'a.img');
    expect((await run(cli, cache, ['create', img, '--size', '64'])).exitCode).toBe(0);
    const r = await run(cli, cache, ['lock', img, '--', 'true']);
    expect(r.exitCode, r.stderr).toBe(0);
    const written = readdirSync(join(cache, 'overlay-action'));
    expect(written).toHaveLength(1);
    const req = createRequire(join(import.meta.dirname, '../../packages/core/package.json'));
    const native = join(
      dirname(req.resolve('@koromix/koffi-linux-x64/package.json')),
      'linux_x64/koffi.node',
    );
    expect(readFileSync(join(cache, 'overlay-action', written[0]!)).equals(readFileSync(native))).toBe(true);
    // a second run uses the cached file
    expect((await run(cli, cache, ['lock', img, '--', 'true'])).exitCode).toBe(0);
  });

  it('refuses an altered payload instead of loading it', async () => {
    const text = readFileSync(CLI, 'latin1');
    const at = text.lastIndexOf(`\n${MARKER}`);
    const id = text.slice(at + 1 + MARKER.length, at + 1 + MARKER.length + 16);
    // other bytes under the original id
    const forged = `${text.slice(0, at)}\n${MARKER}${id} ${Buffer.from('not koffi').toString('base64')}\n`;
    const cli = join(dir, 'forged.mjs');
    writeFileSync(cli, forged, 'latin1');
    const cache = join(dir, 'cache-forged');
    const img = join(dir, 'b.img');
    expect((await run(cli, cache, ['create', img, '--size', '64'])).exitCode).toBe(0);
    const r = await run(cli, cache, ['lock', img, '--', 'true']);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/^E_INTEGRITY: .*forged.mjs is damaged/);
    for (const d of [cache, join(dir, 'no-such-tmp')])
      if (existsSync(d))
        expect(readdirSync(d, { recursive: true }).filter((f) => String(f).endsWith('.node'))).toEqual([]);
  });

  it('defines only the invoked command, with the same help and errors as before', async () => {
    const cache = join(dir, 'cache');
    const help = await run(CLI, cache, ['--help']);
    expect(help.stdout).toMatch(/^\s+exec /m);
    expect(help.stdout).toMatch(/^\s+cache /m);
    const execHelp = await run(CLI, cache, ['exec', '--help']);
    expect(execHelp.stdout).toContain('--base <value>');
    const saveHelp = await run(CLI, cache, ['cache', 'save', '--help']);
    expect(saveHelp.stdout).toContain('--key <value>');
    const unknown = await run(CLI, cache, ['nope']);
    expect(unknown.exitCode).not.toBe(0);
    expect(unknown.stderr).toMatch(/^E_INVALID_INPUT: unknown command 'nope'/);
  });
});
