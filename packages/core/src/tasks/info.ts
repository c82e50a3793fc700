import { z } from 'zod';
import { imageInfo } from '../image/info';
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
  render: (i) => [renderImageSummary(i), ...(i.sif ? [renderSifObjects(i.sif)] : [])].join('\n'),
});
