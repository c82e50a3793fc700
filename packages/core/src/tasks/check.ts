import { z } from 'zod';
import { EXIT_STATUS } from '../errors';
import { type CheckResult, checkImage } from '../image/check';
import { pathSchema, waitField } from './common';
import { defineTask } from './define';

export interface CheckBatchReport {
  images: CheckResult[];
  counts: Record<CheckResult['status'], number>;
  exitCode: number;
}

/** Check a batch one image at a time; every image gets a status, whatever happens to the others. */
export async function checkImages(
  paths: string[],
  opts: { repair: boolean; onResult?: (r: CheckResult) => void },
): Promise<CheckBatchReport> {
  const images: CheckResult[] = [];
  for (const path of paths) {
    const r = await checkImage(path, { repair: opts.repair });
    opts.onResult?.(r);
    images.push(r);
  }
  const counts = { clean: 0, repaired: 0, corrupt: 0, locked: 0, error: 0 };
  for (const r of images) counts[r.status]++;
  // the one exit-status table: a finding (corrupt, not checkable) is 1; only locked ones: try later
  const exitCode =
    counts.corrupt + counts.error > 0
      ? EXIT_STATUS.findings
      : counts.locked > 0
        ? EXIT_STATUS.retryable
        : EXIT_STATUS.ok;
  return { images, counts, exitCode };
}

export const checkTask = defineTask({
  name: 'check',
  summary:
    'Check (and with --repair, crash-safely repair) ext3 overlays with e2fsck; lock-aware, never waits',
  positional: ['images'],
  input: z.object({
    images: z.array(pathSchema).min(1, 'give at least one image').describe('Images to check'),
    repair: z.boolean().default(false).describe('Repair corrupt images (on a copy, renamed into place)'),
    wait: waitField,
  }),
  run: (input, ctx) =>
    checkImages(input.images, {
      repair: input.repair,
      onResult: (r) => {
        ctx.progress(`${r.image}: ${r.status}`);
        for (const w of r.warnings) ctx.warn(`${r.image}: ${w}`);
      },
    }),
  render: (report) =>
    report.images
      .map((r) => {
        const detail = r.error
          ? ` (${r.error.code}: ${r.error.message})`
          : r.problems.length
            ? ` (${r.problems.slice(0, 3).join('; ')})`
            : '';
        return `${r.status.padEnd(8)} ${r.image}${detail}`;
      })
      .join('\n'),
});
