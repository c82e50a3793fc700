// Small helpers for the runtime tests: the CLI bundle run as root or as the test user, images and
// SquashFS layers made with the real tools.
import { chown, mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { SYSTEM_PATH } from '../helpers/tools';
import { runAs, type TestUser } from '../helpers/users';

/** The bundled CLI (node_modules/.bin/overlayctl links to it); rebuild with scripts/bundle.mjs. */
export const CLI = join(import.meta.dirname, '../../node_modules/.bin/overlayctl');

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Run overlayctl with node given by path, so PATH can be anything (even without a runtime). */
export async function overlayctl(
  args: string[],
  opts: { env?: Record<string, string>; input?: string } = {},
) {
  const r = await execa(process.execPath, [CLI, ...args], {
    reject: false,
    env: { OVERLAYCTL_QUIET: '1', ...opts.env },
    input: opts.input ?? '',
  });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** overlayctl as the unprivileged test user, in a clean environment. */
export async function overlayctlAs(user: TestUser, args: string[], cwd?: string): Promise<CliResult> {
  const r = await runAs(user, [process.execPath, CLI, ...args], {
    cwd,
    env: { OVERLAYCTL_QUIET: '1', PATH: SYSTEM_PATH },
    input: '',
  });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** The last line of stdout parsed as JSON (with --json, stdout holds only the object). */
export function lastJson(stdout: string): Record<string, unknown> {
  const lines = stdout.trim().split('\n');
  return JSON.parse(lines.at(-1)!);
}

/** A SquashFS layer holding `files` (container paths → content), owned by `owner` if given. */
export async function makeLayer(
  path: string,
  files: Record<string, string>,
  owner?: { uid: number; gid: number },
): Promise<string> {
  const root = `${path}.d`;
  for (const [file, content] of Object.entries(files)) {
    await mkdir(dirname(join(root, file)), { recursive: true });
    await writeFile(join(root, file), content);
  }
  await execa('mksquashfs', [root, path, '-noappend', '-quiet', '-no-progress', '-all-root']);
  if (owner) await chown(path, owner.uid, owner.gid);
  return path;
}
