import { z } from 'zod';
import { normalizeImage } from '../layer/normalize';
import { pathSchema, waitField } from './common';
import { defineTask } from './define';

export const normalizeTask = defineTask({
  name: 'normalize',
  summary:
    'Rewrite writer-specific deletion markers in upper/ so every reader (root or not, rw or :ro) sees the same files',
  positional: ['image'],
  input: z.object({
    image: pathSchema.describe('The ext3 overlay image'),
    base: z
      .string()
      .optional()
      .describe('Base image below the overlay (to hide replaced directories exactly)'),
    layer: z.array(pathSchema).default([]).describe('Lower SquashFS layer, in stacking order (repeatable)'),
    wait: waitField,
  }),
  async run(input, ctx) {
    const r = await normalizeImage(input.image, { base: input.base, layers: input.layer });
    for (const w of r.warnings) ctx.warn(w);
    return r;
  },
  render: (r) =>
    r.changed
      ? `${r.image}: ${r.deletionsRewritten} deletions rewritten, ${r.opaqueDirs} replaced directories, ${r.explicitWhiteouts} explicit whiteouts, ${r.xattrsStripped} xattrs stripped`
      : `${r.image}: already portable`,
});
