import { z } from 'zod';
import { COMPRESSIONS } from '../layer/commit';
import { squashLayers } from '../layer/squash';
import { formatBytes } from '../size';
import { pathSchema } from './common';
import { defineTask } from './define';

export const squashTask = defineTask({
  name: 'squash',
  summary: 'Merge a stack of SquashFS layers (earliest first) into one, applying their whiteouts',
  positional: ['layers'],
  input: z.object({
    layers: z.array(pathSchema).min(1, 'give the layers, earliest first').describe('Layers, earliest first'),
    output: pathSchema.describe('The merged SquashFS layer to write'),
    compression: z.enum(COMPRESSIONS).default('zstd').describe('SquashFS compression'),
  }),
  run: (input, ctx) =>
    squashLayers(input.layers, input.output, { compression: input.compression, onProgress: ctx.progress }),
  render: (r) =>
    `${r.layer}: ${formatBytes(r.bytes)} from ${r.layers} layers, ${r.whiteouts} whiteouts kept\nsha256 ${r.sha256}`,
});
