import * as core from '@actions/core';
import { resizeTask } from '@overlay-action/core';
import { actionContext, readInputs, run, safeInfo, setOutputs, since, writeSummary } from '../runner';
import { resizeOverlaySpec } from '../specs';

async function main(): Promise<void> {
  const start = process.hrtime.bigint();
  const { input } = readInputs<{ image: string } & Record<string, unknown>>(resizeOverlaySpec);
  await core.group(`Resize ${input.image}`, () => resizeTask.run(input as never, actionContext()));
  const info = await safeInfo(input.image);
  setOutputs({ 'size-bytes': info?.sizeBytes, 'used-bytes': info?.usedBytes });
  await writeSummary('resize-overlay', [
    { image: input.image, info, status: 'resized', seconds: since(start) },
  ]);
}

await run(main);
