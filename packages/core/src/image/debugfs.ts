import { readFile, writeFile } from 'node:fs/promises';
import { OverlayError } from '../errors';
import { runTool } from '../tools/run';

/** Quote a path for debugfs' command parser (double quotes; callers reject `"` and newlines). */
export function debugfsQuote(path: string): string {
  if (/["\n\r\0]/.test(path))
    throw new OverlayError('E_INVALID_INPUT', `unsupported character in path ${JSON.stringify(path)}`);
  return `"${path}"`;
}

/**
 * Run debugfs commands against an unmounted image file (unprivileged, no mount). debugfs exits 0
 * even when a command fails, so its stderr is checked for the error lines it prints.
 */
export async function runDebugfs(
  image: string,
  commands: string[],
  opts: {
    write?: boolean;
    allowErrors?: RegExp;
    detached?: boolean;
    extraFds?: number[];
    /** Read the commands from this file (written here first) rather than stdin: a debugfs that outlives us still gets them all. */
    commandFile?: string;
  } = {},
): Promise<string> {
  const script = `${commands.join('\n')}\n`;
  if (opts.commandFile) await writeFile(opts.commandFile, script, { mode: 0o600, flag: 'wx' });
  const args = [...(opts.write ? ['-w'] : []), '-f', opts.commandFile ?? '-', image];
  const files = opts.commandFile && { stdout: `${opts.commandFile}.out`, stderr: `${opts.commandFile}.err` };
  let { stdout, stderr } = await runTool('debugfs', args, {
    input: opts.commandFile ? undefined : script,
    detached: opts.detached,
    extraFds: opts.extraFds,
    outputFiles: files || undefined,
  });
  if (files)
    [stdout, stderr] = await Promise.all([readFile(files.stdout, 'utf8'), readFile(files.stderr, 'utf8')]);
  const errors = stderr
    .split('\n')
    .filter((l) => l.trim() && !/^debugfs \d/.test(l) && !opts.allowErrors?.test(l));
  if (errors.length) {
    throw new OverlayError('E_TOOL_FAILED', `debugfs on ${image}: ${errors.slice(-5).join('; ')}`, {
      details: { tool: 'debugfs', stderr: errors.slice(-20).join('\n') },
    });
  }
  return stdout;
}

export interface InodeOwner {
  uid: number;
  gid: number;
  mode: number;
}

/** Owner and mode of one path in the image, or null when it does not exist. */
export async function statInImage(image: string, path: string): Promise<InodeOwner | null> {
  const { stdout, stderr } = await runTool('debugfs', ['-R', `stat ${debugfsQuote(path)}`, image]);
  if (/File not found|not found by ext2_lookup/i.test(stderr)) return null;
  const user = /User:\s*(\d+)\s+Group:\s*(\d+)/.exec(stdout);
  const mode = /Mode:\s*(\d+)/.exec(stdout);
  if (!user || !mode) return null;
  return { uid: Number(user[1]), gid: Number(user[2]), mode: Number.parseInt(mode[1]!, 8) };
}
