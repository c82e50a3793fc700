import { z } from 'zod';
import { embedOverlay } from '../sif/overlay';
import { pathSchema } from './common';
import { renderImageSummary } from './create';
import { defineTask } from './define';

export const embedTask = defineTask({
  name: 'embed',
  summary: "Add an ext3 overlay image to a SIF as its writable overlay partition (Apptainer's --writable)",
  positional: ['image', 'sif'],
  input: z.object({
    image: pathSchema.describe('The ext3 overlay image to embed (left as it is)'),
    sif: pathSchema.describe(
      'The SIF container; refused when signed, encrypted or already holding an overlay',
    ),
  }),
  run: (input, ctx) => embedOverlay(input.image, input.sif, { onProgress: ctx.progress }),
  render: renderImageSummary,
});
