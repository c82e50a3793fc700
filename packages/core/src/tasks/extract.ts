import { z } from 'zod';
import { extractOverlay } from '../sif/overlay';
import { pathSchema } from './common';
import { renderImageSummary } from './create';
import { defineTask } from './define';

export const extractTask = defineTask({
  name: 'extract',
  summary: "Copy a SIF's embedded overlay out as a standalone ext3 image (sparse); the SIF is left as it is",
  positional: ['sif', 'image'],
  input: z.object({
    sif: pathSchema.describe('The SIF container with an overlay partition'),
    image: pathSchema.describe('Path of the standalone image to write'),
    force: z.boolean().default(false).describe('Replace an existing file'),
  }),
  run: (input, ctx) =>
    extractOverlay(input.sif, input.image, { force: input.force, onProgress: ctx.progress }),
  render: renderImageSummary,
});
