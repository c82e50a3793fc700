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
    base: z
      .string()
      .min(1)
      .optional()
      .describe(
        'Base image under the layers (SIF, sandbox or reference): lets a directory deleted and made again keep hiding its old content',
      ),
  }),
  run: (input, ctx) =>
    squashLayers(input.layers, input.output, {
      compression: input.compression,
      base: input.base,
      onProgress: ctx.progress,
    }),
  render: (r) =>
    [
      `${r.layer}: ${formatBytes(r.bytes)} from ${r.layers} layers, ${r.whiteouts} whiteouts kept`,
      `sha256 ${r.sha256}`,
      ...r.warnings.map((w) => `warning: ${w}`),
    ].join('\n'),
});
