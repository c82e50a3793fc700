import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HOST, pidAlive } from './atomic';

const swept = new Set<string>();

/**
 * A private scratch directory in $TMPDIR (or `base`) named `PREFIX-PID-HOST-XXXXXX`, so what a
 * killed process left there (a check's metadata copy, a rehearsed restore) is found and removed:
 * the first call per prefix and process clears the directories of dead processes of this host.
 */
export async function scratchDir(prefix: string, base = tmpdir()): Promise<string> {
  const key = `${base}\0${prefix}`;
  if (!swept.has(key)) {
    swept.add(key);
    const names = await readdir(base).catch(() => [] as string[]);
    for (const name of names) {
      const m = new RegExp(`^${prefix}-(\\d+)-([^/]+)-[^-]+$`).exec(name);
      if (!m || m[2] !== HOST || pidAlive(Number(m[1]))) continue;
      await rm(join(base, name), { recursive: true, force: true }).catch(() => {});
    }
  }
  return mkdtemp(join(base, `${prefix}-${process.pid}-${HOST}-`));
}
