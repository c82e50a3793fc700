import { chmodSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';

/**
 * Tests run the CLI and the bundled actions as an unprivileged user too, straight from this
 * checkout. A fresh clone may sit under a directory only root can enter (mktemp -d is 0700), so
 * every ancestor of the repository gets the search bit for others (x only: nothing becomes
 * listable or readable that was not).
 */
export default function setup(): void {
  if (process.getuid?.() !== 0) return;
  let dir = join(import.meta.dirname, '..');
  for (;;) {
    const mode = statSync(dir).mode;
    if (!(mode & 0o001)) {
      chmodSync(dir, (mode & 0o7777) | 0o001);
      process.stderr.write(
        `test setup: ${dir} is now searchable by others (o+x) for the unprivileged tests\n`,
      );
    }
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
}
