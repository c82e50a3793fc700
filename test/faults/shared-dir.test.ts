import {
  chmodSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createExclusive, replaceAtomically, tempPathFor } from '../../packages/core/src/fs/atomic';

/** Shared directories (a runner's workspace, an HPC project dir): nothing we write follows a planted link. */
const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
let dir: string;
let victim: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ov-shared-'));
  victim = join(dir, 'victim.txt');
  writeFileSync(victim, 'precious');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('temporary files', () => {
  it('are created exclusively and never through a symlink', async () => {
    const link = join(dir, 'planted');
    symlinkSync(victim, link);
    await expect(createExclusive(link)).rejects.toMatchObject({ code: 'E_EXISTS' });
    expect(readFileSync(victim, 'utf8')).toBe('precious');
  });

  it('have unpredictable names in the target directory', () => {
    const a = tempPathFor(join(dir, 'x.img'));
    const b = tempPathFor(join(dir, 'x.img'));
    expect(a).not.toBe(b);
    expect(a.startsWith(join(dir, '.x.img.ovtmp-'))).toBe(true);
  });

  it('replaceAtomically replaces a symlinked target by a file, leaving the link target alone', async () => {
    const target = join(dir, 'target.img');
    symlinkSync(victim, target);
    await replaceAtomically(target, async (tmp) => writeFileSync(tmp, 'new'));
    expect(lstatSync(target).isSymbolicLink()).toBe(false);
    expect(readFileSync(victim, 'utf8')).toBe('precious');
  });
});

describe('the CLI in a shared directory', () => {
  it('refuses to create over a planted symlink without --force, and never writes through it', async () => {
    const link = join(dir, 'env.img');
    symlinkSync(victim, link);
    const r = await execa(CLI, ['create', link, '--size', '64', '--json'], { reject: false });
    expect(JSON.parse(r.stdout).error.code).toBe('E_EXISTS');
    expect(readFileSync(victim, 'utf8')).toBe('precious');
  });

  it('refuses a cache store that others can write to', async () => {
    const img = join(dir, 'ok.img');
    await execa(CLI, ['create', img, '--size', '64']);
    const store = join(dir, 'open-store');
    mkdirSync(store);
    chmodSync(store, 0o777);
    const r = await execa(CLI, ['cache', 'save', img, '--key', 'k', '--store', store, '--json'], {
      reject: false,
    });
    expect(r.exitCode).not.toBe(0);
    expect(JSON.parse(r.stdout).error.code).toBe('E_UNSAFE_PATH');
  });
});
