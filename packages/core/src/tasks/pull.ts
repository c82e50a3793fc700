import { z } from 'zod';
import { formatBytes } from '../size';
import { pullArtifact } from '../transfer/transfer';
import { pathSchema } from './common';
import { defineTask } from './define';
import { NO_HTTPS_ALIAS, plainHttpField } from './push';

export const pullTask = defineTask({
  name: 'pull',
  summary:
    'Pull an overlay image or layer from an OCI registry (verified, atomic; reuses what an older image at FILE already holds)',
  positional: ['ref', 'file'],
  cliAliases: NO_HTTPS_ALIAS,
  input: z.object({
    ref: z
      .string()
      .regex(/^oras:\/\//, 'an oras://HOST/REPO[:TAG|@sha256:DIGEST] reference')
      .describe('Registry reference, oras://HOST/REPO[:TAG|@sha256:DIGEST]'),
    file: pathSchema.describe(
      'Where to put the image or layer (an older image there is reused, then replaced)',
    ),
    plainHttp: plainHttpField,
  }),
  run: (input, ctx) =>
    pullArtifact(input.ref, input.file, { insecure: input.plainHttp, onProgress: ctx.progress }),
  render: (r) =>
    `pulled ${r.kind} ${r.ref} -> ${r.file}\n${r.chunksDownloaded}/${r.chunks} chunks downloaded (${formatBytes(r.bytesDownloaded)}), ${r.chunksReused} reused from the old file`,
});
