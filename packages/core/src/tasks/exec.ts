import { z } from 'zod';
import { isSifFile } from '../image/format';
import { type NormalizeResult, normalizeImage } from '../layer/normalize';
import { runInContainer } from '../runtime/exec';
import { pathSchema, waitField } from './common';
import { defineTask } from './define';

const textSchema = z
  .string()
  .min(1)
  .refine((s) => !/[\0\n\r]/.test(s), 'may not contain NUL or newline characters');

/** `K=V` pairs from repeated --env flags. */
export const envListSchema = z
  .array(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*=/, 'must be NAME=VALUE'))
  .default([])
  .describe('Environment variable NAME=VALUE in the container (repeatable)');

export function envRecord(list: string[]): Record<string, string> {
  return Object.fromEntries(list.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
}

/** Fields exec and build share: what the container sees besides the image. */
export const containerFields = {
  base: textSchema.describe(
    'Base container: SIF file, sandbox directory, or docker:// oras:// library:// https://',
  ),
  layer: z
    .array(pathSchema)
    .default([])
    .describe(
      'Read-only layer (SquashFS) under the overlay; a later --layer covers an earlier one (repeatable)',
    ),
  bind: z.array(textSchema).default([]).describe('Bind mount SRC[:DST[:ro]] (repeatable)'),
  env: envListSchema,
  pwd: textSchema.optional().describe('Working directory inside the container'),
};

export const execTask = defineTask({
  name: 'exec',
  summary: 'Run a command in a container with the overlay mounted (writable, or --ro); exits with its status',
  positional: ['image', 'command'],
  input: z.object({
    image: pathSchema.describe('The ext3 overlay image (on top of every layer)'),
    command: z
      .array(z.string())
      .min(1, 'give the command after --')
      .describe('Command and arguments, after --'),
    ...containerFields,
    ro: z.boolean().default(false).describe('Mount the overlay read-only (several readers may share it)'),
    normalize: z
      .boolean()
      .default(true)
      .describe('After a writable session, make deletion markers portable (--no-normalize to keep them)'),
    fakeroot: z
      .boolean()
      .optional()
      .describe('Force --fakeroot on or off (default: on when upper/ belongs to root or another user)'),
    wait: waitField,
  }),
  async run(input, ctx) {
    const r = await runInContainer({
      image: input.image,
      ro: input.ro,
      layers: input.layer,
      fakeroot: input.fakeroot ?? 'auto',
      binds: input.bind,
      env: envRecord(input.env),
      pwd: input.pwd,
      base: input.base,
      command: input.command,
      // with --json stdout carries only the result object: the command's output goes to stderr
      stdout: ctx.json ? 'stderr' : 'inherit',
    });
    let normalized: NormalizeResult | undefined;
    // a SIF's embedded overlay is not rewritten after each session (see docs/overlay-forms.md)
    if (!input.ro && input.normalize && !(await isSifFile(input.image))) {
      normalized = await normalizeImage(input.image, {
        base: input.base,
        layers: input.layer,
        onProgress: ctx.progress,
      }).catch((e) => {
        ctx.warn(`could not normalize ${input.image}: ${(e as Error).message}`);
        return undefined;
      });
      for (const w of normalized?.warnings ?? []) ctx.warn(w);
    }
    return {
      exitCode: r.exitCode,
      fakeroot: r.fakeroot,
      overlayReader: r.overlayReader,
      durationMs: r.durationMs,
      argv: r.argv,
      normalized,
    };
  },
  // the command's own output is the output
  render: () => '',
});
