import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { squashfsProgress, withOutputProgress } from '../../packages/core/src/layer/commit';

describe('progress of squashfs tools', () => {
  it('turns the redrawn bar into one line per 5 % step and passes other lines on', () => {
    const lines: string[] = [];
    const on = squashfsProgress('mksquashfs', (l) => lines.push(l))!;
    for (const pct of [0, 1, 2, 6, 7, 13, 100]) on(`[====\\        ] ${pct * 10}/1000 ${pct}%`);
    on('Filesystem size 123 Kbytes');
    expect(lines).toEqual([
      'mksquashfs 0% (0/1000 blocks)',
      'mksquashfs 6% (60/1000 blocks)',
      'mksquashfs 13% (130/1000 blocks)',
      'mksquashfs 100% (1000/1000 blocks)',
      'Filesystem size 123 Kbytes',
    ]);
  });

  it('reports how much of the output is written while a step runs, and stops after it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ov-progress-'));
    const file = join(dir, 'out');
    const lines: string[] = [];
    try {
      await withOutputProgress(
        'mksquashfs',
        file,
        (l) => lines.push(l),
        async () => {
          writeFileSync(file, Buffer.alloc(3 * 1024 * 1024));
          await new Promise((r) => setTimeout(r, 400));
        },
        50,
      );
      const seen = lines.length;
      expect(seen).toBeGreaterThan(0);
      expect(lines[0]).toMatch(/^mksquashfs: 3\.0 MiB written, \d+ s$/);
      await new Promise((r) => setTimeout(r, 200));
      expect(lines.length).toBe(seen);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
