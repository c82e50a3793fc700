import { z } from 'zod';
import { resizeImage } from '../image/resize';
import { formatBytes, sizeSchema } from '../size';
import { pathSchema, waitField } from './common';
import { renderImageSummary } from './create';
import { defineTask } from './define';

export const resizeTask = defineTask({
  name: 'resize',
  summary: 'Grow or shrink an ext3 overlay crash-safely; refuses to shrink below what is used',
  positional: ['image'],
  input: z.object({
    image: pathSchema.describe('The ext3 overlay image'),
    size: sizeSchema.describe('New size: MiB (256) or with a unit (512M, 4G)'),
    wait: waitField,
  }),
  run: (input, ctx) => resizeImage(input.image, input.size, { onProgress: ctx.progress }),
  render: (r) =>
    `${r.changed ? `resized from ${formatBytes(r.previousSizeBytes)}` : 'size unchanged'}\n${renderImageSummary(r)}`,
});
