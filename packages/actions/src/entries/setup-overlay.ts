import { resolve } from 'node:path';
import * as core from '@actions/core';
import { type SetupContext, type SetupInput, saveOverlay, setupOverlay } from '@overlay-action/core';
import { GitHubCacheStore } from '../github-cache-store';
import { actionContext, readInputs, run, safeInfo, setOutputs, since, writeSummary } from '../runner';
import { setupOverlaySpec } from '../specs';

/** What main leaves for post (action state; actions/cache calls these CACHE_KEY / CACHE_RESULT). */
const State = {
  path: 'IMAGE_PATH',
  key: 'CACHE_KEY',
  result: 'CACHE_RESULT',
  digest: 'RESTORED_DIGEST',
  store: 'STORE',
  cache: 'CACHE',
  check: 'CHECK',
} as const;

function context(input: { cache: boolean; store?: string }): SetupContext {
  return {
    ...actionContext(),
    cacheStore: input.cache && input.store === undefined ? new GitHubCacheStore() : undefined,
  };
}

async function main(): Promise<void> {
  const start = process.hrtime.bigint();
  const { input } = readInputs<SetupInput>(setupOverlaySpec);
  const out = await setupOverlay(input, context(input));

  // post runs in the same working directory, but absolute paths in the state don't depend on it
  core.saveState(State.path, resolve(out.path));
  core.saveState(State.key, out.cacheKey);
  core.saveState(State.result, out.cacheOutcome);
  core.saveState(State.digest, out.restoredDigest);
  core.saveState(State.store, input.store === undefined ? '' : resolve(input.store));
  core.saveState(State.cache, String(input.cache));
  core.saveState(State.check, String(input.check));

  if (out.discarded) {
    core.error(
      `the image restored from ${out.discarded.key} was ${out.discarded.status}${out.discarded.problems.length ? ` (${out.discarded.problems.join('; ')})` : ''}; it was discarded and created anew`,
      { file: input.path, title: 'corrupt overlay image in the cache' },
    );
  }
  setOutputs({
    path: input.path,
    'cache-hit': out.cacheHit,
    'cache-key': out.cacheKey,
    'cache-matched-key': out.cacheMatchedKey,
    'size-bytes': out.sizeBytes,
    'used-bytes': out.usedBytes,
    'inodes-used-percent': out.inodesUsedPercent,
  });
  const status =
    out.cacheOutcome === 'hit'
      ? 'restored (exact key)'
      : out.cacheOutcome === 'partial'
        ? `restored from ${out.cacheMatchedKey}`
        : out.discarded
          ? 'cached copy corrupt: created'
          : 'created';
  await writeSummary(
    'setup-overlay',
    [
      {
        image: input.path,
        info: out.info,
        status: `${status}${out.built ? ', built' : ''}`,
        seconds: since(start),
      },
    ],
    `key ${out.cacheKey}${out.cacheMatchedKey && out.cacheMatchedKey !== out.cacheKey ? `, restored from ${out.cacheMatchedKey}` : ''}`,
  );
}

async function post(): Promise<void> {
  const start = process.hrtime.bigint();
  const path = core.getState(State.path);
  if (!path) {
    core.info('the main step did not finish: nothing to save');
    return;
  }
  if (core.getState(State.cache) !== 'true') {
    core.info('cache: false: nothing to save');
    return;
  }
  const store = core.getState(State.store) || undefined;
  const result = await saveOverlay(
    {
      path,
      key: core.getState(State.key),
      cacheHit: core.getState(State.result) === 'hit',
      restoredDigest: core.getState(State.digest),
      check: core.getState(State.check) !== 'false',
      store,
    },
    context({ cache: true, store }),
  );
  core.info(result.reason);
  await writeSummary('setup-overlay (post)', [
    {
      image: path,
      info: await safeInfo(path),
      status: result.saved ? 'saved' : result.reason,
      seconds: since(start),
    },
  ]);
}

await run(main, post);
