import { z } from 'zod';
import { buildInOverlay } from '../runtime/build';
import { sizeSchema } from '../size';
import { checkOwner, pathSchema, waitField } from './common';
import { createFields, createOptionsFrom, renderImageSummary } from './create';
import { defineTask } from './define';
import { containerFields, envRecord } from './exec';

export const buildTask = defineTask({
  name: 'build',
  summary:
    'Run a build script inside the overlay (created if missing), writable; the image changes only on success',
  positional: ['image'],
  input: z
    .object({
      image: pathSchema.describe('The ext3 overlay to build in (created with the create options if missing)'),
      ...containerFields,
      script: pathSchema
        .optional()
        .describe('Shell script on the host, run with /bin/sh -e in the container'),
      run: z
        .string()
        .min(1)
        .optional()
        .describe("Shell command line run with /bin/sh -e -c (e.g. 'make install')"),
      ...createFields,
      normalize: z
        .boolean()
        .default(true)
        .describe('Make deletion markers portable after the build (--no-normalize to keep them)'),
      size: z
        .union([z.string(), z.number().int()])
        .default('1G')
        .pipe(sizeSchema)
        .describe('Size of a new image: MiB (256) or with a unit (512M, 4G); default 1G'),
      wait: waitField,
    })
    .superRefine(checkOwner)
    .superRefine((v, ctx) => {
      if ((v.script === undefined) === (v.run === undefined))
        ctx.addIssue({
          code: 'custom',
          path: ['script'],
          message: 'give exactly one of --script FILE or --run COMMAND',
        });
    }),
  async run(input, ctx) {
    const r = await buildInOverlay({
      image: input.image,
      base: input.base,
      scriptFile: input.script,
      run: input.run,
      layers: input.layer,
      binds: input.bind,
      env: envRecord(input.env),
      pwd: input.pwd,
      // the run follows the owner of upper/ (an image made with --fakeroot is built with it)
      fakeroot: 'auto',
      normalize: input.normalize,
      create: createOptionsFrom(input),
      onProgress: ctx.progress,
    });
    return {
      exitCode: r.exitCode,
      image: r.image,
      created: r.created,
      fakeroot: r.fakeroot,
      durationMs: r.durationMs,
      buildMs: r.buildMs,
      check: r.check,
      info: r.info,
    };
  },
  render: (o) =>
    [
      `${o.created ? 'created and built' : 'built'} ${o.image} in ${(o.durationMs / 1000).toFixed(1)} s ` +
        `(build ${(o.buildMs / 1000).toFixed(1)} s${o.fakeroot ? ', --fakeroot' : ''}; check: ${o.check.status})`,
      renderImageSummary(o.info),
    ].join('\n'),
});
