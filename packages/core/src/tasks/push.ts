import { z } from 'zod';
import { formatBytes } from '../size';
import { pushArtifact } from '../transfer/transfer';
import { pathSchema } from './common';
import { defineTask } from './define';

export const orasRefSchema = z
  .string()
  .regex(/^oras:\/\//, 'an oras://HOST/REPO:TAG reference')
  .describe('Registry reference, oras://HOST/REPO:TAG');

export const plainHttpField = z
  .boolean()
  .default(false)
  .describe('Plain HTTP to a registry that is not on loopback (loopback always is)');

/** Apptainer's spelling of the same switch. */
export const NO_HTTPS_ALIAS = {
  'no-https': { description: "Same as --plain-http (Apptainer's flag)", sets: { plainHttp: true } },
};

export const pushTask = defineTask({
  name: 'push',
  summary:
    'Push an ext3 overlay (as chunks; only missing ones are uploaded) or a SquashFS layer (as an Apptainer-pullable SIF) to an OCI registry',
  positional: ['file', 'ref'],
  cliAliases: NO_HTTPS_ALIAS,
  input: z.object({
    file: pathSchema.describe('The ext3 overlay image or committed SquashFS layer'),
    ref: orasRefSchema,
    plainHttp: plainHttpField,
  }),
  run: (input, ctx) =>
    pushArtifact(input.file, input.ref, { insecure: input.plainHttp, onProgress: ctx.progress }),
  render: (r) =>
    `pushed ${r.kind} ${r.ref}@${r.digest}\n${r.chunksUploaded}/${r.chunks} chunks uploaded (${formatBytes(r.bytesUploaded)}), ${r.chunksSkipped} already there`,
});
