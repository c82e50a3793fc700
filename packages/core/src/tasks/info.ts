import { z } from 'zod';
import { type ImageInfo, imageInfo } from '../image/info';
import { truncationMessage } from '../image/truncation';
import { renderSifObjects } from '../sif/overlay';
import { pathSchema } from './common';
import { renderImageSummary } from './create';
import { defineTask } from './define';

export const infoTask = defineTask({
  name: 'info',
  summary: 'Show format, sizes, usage, inodes and Apptainer compatibility of an image (no mount)',
  positional: ['image'],
  input: z.object({
    image: pathSchema.describe(
      'Image file (ext3 overlay or SquashFS layer), or a SIF (its objects and embedded overlay)',
    ),
  }),
  run: (input) => imageInfo(input.image),
  render: (i) =>
    [renderImageSummary(i), ...damageLines(i), ...(i.sif ? [renderSifObjects(i.sif)] : [])].join('\n'),
});

/** Damage info found, said first-hand rather than only as an Apptainer problem. */
function damageLines(i: ImageInfo): string[] {
  const lines: string[] = [];
  if (i.truncated) lines.push(`  TRUNCATED: ${truncationMessage(i.image, i.truncated)}`);
  const b = i.superblock?.backup;
  if (i.superblock?.primary === 'damaged')
    lines.push(
      `  PRIMARY SUPERBLOCK DAMAGED${b ? `: read from the backup at block ${b.block} (block size ${b.blockSize}); overlayctl check --repair restores it` : ''}`,
    );
  return lines;
}
