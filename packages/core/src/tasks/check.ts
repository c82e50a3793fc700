import { z } from 'zod';
import { EXIT_STATUS } from '../errors';
import { type CheckResult, checkImage } from '../image/check';
import { fsckTimeoutField, pathSchema, waitField } from './common';
import { defineTask } from './define';

export interface CheckBatchReport {
  images: CheckResult[];
  counts: Record<CheckResult['status'], number>;
  /** Images Apptainer cannot use as a writable overlay (a finding only with requireApptainer). */
  apptainerIncompatible: number;
  exitCode: number;
}

export interface CheckBatchOptions {
  repair: boolean;
  /** Count an image Apptainer cannot use as an overlay as a finding (exit 1), whatever its status. */
  requireApptainer?: boolean;
  timeoutSeconds?: number;
  onResult?: (r: CheckResult) => void;
  onProgress?: (line: string) => void;
}

/** Check a batch one image at a time; every image gets a status, whatever happens to the others. */
export async function checkImages(paths: string[], opts: CheckBatchOptions): Promise<CheckBatchReport> {
  const images: CheckResult[] = [];
  for (const path of paths) {
    const r = await checkImage(path, {
      repair: opts.repair,
      timeoutSeconds: opts.timeoutSeconds,
      onProgress: opts.onProgress,
    });
    opts.onResult?.(r);
    images.push(r);
  }
  const counts = { clean: 0, repaired: 0, corrupt: 0, locked: 0, error: 0 };
  for (const r of images) counts[r.status]++;
  const apptainerIncompatible = images.filter((r) => r.apptainerCompatible === false).length;
  // the one exit-status table: a finding (corrupt, not checkable, or not usable by Apptainer when
  // that is required) is 1; only locked ones: try later
  const findings =
    counts.corrupt + counts.error > 0 ||
    (opts.requireApptainer && images.some((r) => r.status !== 'locked' && !r.apptainerCompatible));
  const exitCode = findings
    ? EXIT_STATUS.findings
    : counts.locked > 0
      ? EXIT_STATUS.retryable
      : EXIT_STATUS.ok;
  return { images, counts, apptainerIncompatible, exitCode };
}

export function renderCheckResult(r: CheckResult): string {
  const detail = r.error
    ? ` (${r.error.code}: ${r.error.message})`
    : r.problems.length
      ? ` (${r.problems.slice(0, 3).join('; ')}${r.problems.length > 3 ? `; … ${r.problems.length - 3} more` : ''})`
      : '';
  const apptainer =
    r.apptainerCompatible === false && r.status !== 'corrupt'
      ? `\n         not usable by Apptainer as an overlay: ${r.apptainerProblems.join('; ')}`
      : '';
  return `${r.status.padEnd(8)} ${r.image}${detail}${apptainer}`;
}

export const checkTask = defineTask({
  name: 'check',
  summary:
    'Check (and with --repair, crash-safely repair) ext2/3/4 images with e2fsck on a copy; lock-aware, time-bounded, never writes without --repair',
  positional: ['images'],
  input: z.object({
    images: z.array(pathSchema).min(1, 'give at least one image').describe('Images to check'),
    repair: z.boolean().default(false).describe('Repair corrupt images (on a copy, renamed into place)'),
    requireApptainer: z
      .boolean()
      .default(false)
      .describe(
        'Count an image Apptainer cannot use as a writable overlay as a finding (exit 1, failed step)',
      ),
    timeout: fsckTimeoutField,
    wait: waitField,
  }),
  run: (input, ctx) =>
    checkImages(input.images, {
      repair: input.repair,
      requireApptainer: input.requireApptainer,
      timeoutSeconds: input.timeout,
      onProgress: ctx.progress,
      onResult: (r) => {
        ctx.progress(`${r.image}: ${r.status}`);
        for (const w of r.warnings) ctx.warn(`${r.image}: ${w}`);
      },
    }),
  render: (report) => report.images.map(renderCheckResult).join('\n'),
});
