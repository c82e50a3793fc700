import { chmodSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A PATH directory of wrappers, one per external tool overlayctl spawns. Each call bumps a counter;
 * when the call number matches KILL_AT (e.g. "3"), the wrapper SIGKILLs overlayctl (its parent)
 * before running the real tool: a crash exactly at that tool boundary. With KILL_AT unset the
 * wrappers only count, which tells how many boundaries an operation has.
 */
export const WRAPPED_TOOLS = [
  'mkfs.ext3',
  'mke2fs',
  'e2fsck',
  'resize2fs',
  'debugfs',
  'dumpe2fs',
  'e2image',
  'tune2fs',
  'cp',
  'fallocate',
  'mksquashfs',
  'unsquashfs',
  'tar',
  'zstd',
  'fuse2fs',
  'mount',
  'umount',
  'unshare',
];

export function makeKillPointDir(): { bin: string; counter: string } {
  const root = mkdtempSync(join(tmpdir(), 'ov-killpoints-'));
  const bin = join(root, 'bin');
  mkdirSync(bin);
  const counter = join(root, 'calls');
  writeFileSync(counter, '');
  for (const tool of WRAPPED_TOOLS) {
    const script = `#!/bin/bash
# fault-injection wrapper for ${tool}
echo "${tool}" >> "${counter}"
n=$(wc -l < "${counter}")
real=$(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin command -v ${tool})
if [ -n "\${KILL_AT:-}" ] && [ "$n" = "$KILL_AT" ]; then
  kill -9 "$PPID" 2>/dev/null
fi
exec "$real" "$@"
`;
    writeFileSync(join(bin, tool), script);
    chmodSync(join(bin, tool), 0o755);
  }
  return { bin, counter };
}
