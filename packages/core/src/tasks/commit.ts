import { z } from 'zod';
import { COMPRESSIONS, commitLayer } from '../layer/commit';
import { formatBytes } from '../size';
import { pathSchema, waitField } from './common';
import { defineTask } from './define';

export const commitTask = defineTask({
  name: 'commit',
  summary:
    'Freeze upper/ into a read-only SquashFS layer (deletions as portable whiteouts); --reset empties the overlay',
  positional: ['image'],
  input: z
    .object({
      image: pathSchema.describe('The ext3 overlay image'),
      output: pathSchema.describe('The SquashFS layer to write'),
      compression: z.enum(COMPRESSIONS).default('zstd').describe('SquashFS compression'),
      level: z.number().int().min(0).max(22).optional().describe('Compression level (zstd 1-22, gzip 1-9)'),
      reset: z.boolean().default(false).describe('Empty upper/ after a successful commit'),
      base: z
        .string()
        .optional()
        .describe('Base image below the overlay (to hide replaced directories exactly)'),
      layer: z.array(pathSchema).default([]).describe('Lower SquashFS layer, in stacking order (repeatable)'),
      force: z.boolean().default(false).describe('Replace an existing output file'),
      wait: waitField,
    })
    .superRefine((v, ctx) => {
      if (v.level !== undefined && v.compression === 'gzip' && (v.level < 1 || v.level > 9)) {
        ctx.addIssue({ code: 'custom', path: ['level'], message: 'gzip levels are 1-9' });
      }
      if (v.level !== undefined && v.compression === 'zstd' && v.level < 1) {
        ctx.addIssue({ code: 'custom', path: ['level'], message: 'zstd levels are 1-22' });
      }
    }),
  async run(input, ctx) {
    const { existsSync } = await import('node:fs');
    if (existsSync(input.output) && !input.force) {
      const { OverlayError } = await import('../errors');
      throw new OverlayError('E_EXISTS', `${input.output} already exists`, {
        hint: 'pass --force to replace it',
      });
    }
    const r = await commitLayer({ ...input, layers: input.layer, onProgress: ctx.progress });
    for (const w of r.warnings) ctx.warn(w);
    return r;
  },
  render: (r) =>
    `${r.layer}: ${formatBytes(r.bytes)}, ${r.files} entries, ${r.whiteouts} whiteouts, ${r.compression}, ${(r.durationMs / 1000).toFixed(1)} s\nsha256 ${r.sha256}${r.reset ? '\noverlay reset: upper/ is empty' : ''}`,
});
