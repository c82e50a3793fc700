import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import * as core from '@actions/core';
import { commitTask } from '@overlay-action/core';
import { actionContext, readInputs, run, safeInfo, setOutputs, since, writeSummary } from '../runner';
import { commitLayerSpec } from '../specs';

async function sha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function main(): Promise<void> {
  const start = process.hrtime.bigint();
  const { input } = readInputs<{ image: string; output: string } & Record<string, unknown>>(commitLayerSpec);
  const out = (await core.group(`Commit ${input.image} to ${input.output}`, () =>
    commitTask.run(input as never, actionContext()),
  )) as { output?: string; layer?: string; sha256?: string } | undefined;
  const layer = out?.layer ?? out?.output ?? input.output;
  const bytes = (await fsp.stat(layer)).size;
  setOutputs({ layer, bytes, sha256: out?.sha256 ?? (await sha256(layer)) });
  const seconds = since(start);
  await writeSummary('commit-layer', [
    { image: input.image, info: await safeInfo(input.image), status: 'committed', seconds },
    { image: layer, info: await safeInfo(layer), status: 'layer', seconds },
  ]);
}

await run(main);
