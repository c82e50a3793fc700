import { resolve } from 'node:path';
import * as core from '@actions/core';
import {
  forgetRestoreState,
  isOverlayError,
  OverlayError,
  openStore,
  type SetupContext,
  type SetupInput,
  saveOverlay,
  setupOverlay,
} from '@overlay-action/core';
import { z } from 'zod';
import { restoreBase, saveBase } from '../base-cache';
import { GitHubCacheStore } from '../github-cache-store';
import {
  actionContext,
  failureLine,
  readInputs,
  run,
  safeInfo,
  setOutputs,
  since,
  writeSummary,
} from '../runner';
import { setupOverlaySpec } from '../specs';

/** What main leaves for post: one JSON object in the action state, validated when post reads it. */
const POST_STATE = 'SETUP_OVERLAY';
const postState = z.object({
  path: z.string().min(1),
  key: z.string().min(1),
  cacheHit: z.boolean(),
  /** A store spec ('' = the Actions cache). */
  store: z.string(),
  save: z.boolean(),
  check: z.boolean(),
  /** The entry under the key failed verification at restore: replace it. */
  replaceKey: z.string().optional(),
  /** The pulled base image in the Actions cache (a reference with a digest). */
  base: z.object({ key: z.string(), path: z.string(), present: z.boolean() }).optional(),
});
type PostState = z.infer<typeof postState>;

function context(input: { cache: boolean; store?: string }): SetupContext {
  return {
    ...actionContext(),
    cacheStore: input.cache && input.store === undefined ? new GitHubCacheStore() : undefined,
  };
}

async function main(): Promise<void> {
  const start = process.hrtime.bigint();
  const { input } = readInputs<SetupInput>(setupOverlaySpec);
  const base =
    input.base !== undefined && input.cache && input.store === undefined
      ? await restoreBase(input.base, (line) => core.info(line))
      : undefined;
  const out = await setupOverlay(input, context(input));

  if (input.cache && out.store) {
    // post runs in the same working directory, but absolute paths don't depend on it
    const state: PostState = {
      path: resolve(out.path),
      key: out.cacheKey,
      cacheHit: out.cacheHit,
      store: input.store === undefined ? '' : out.store,
      save: input.save,
      check: input.check,
      replaceKey: out.discarded?.key,
      base,
    };
    core.saveState(POST_STATE, JSON.stringify(state));
  }

  if (out.discarded) {
    core.error(
      `the image restored from ${out.discarded.key} was ${out.discarded.status}${out.discarded.problems.length ? ` (${out.discarded.problems.join('; ')})` : ''}; it was discarded and created anew`,
      { file: input.path, title: 'corrupt overlay image in the cache' },
    );
  }
  setOutputs({
    path: input.path,
    base: out.basePath,
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
  const raw = core.getState(POST_STATE);
  if (!raw) {
    core.info('no cache store, cache: false, or the main step did not finish: nothing to save');
    return;
  }
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch {}
  const parsed = postState.safeParse(json);
  if (!parsed.success)
    throw new OverlayError(
      'E_INTERNAL',
      `the state main left for post is malformed: ${parsed.error.message}`,
    );
  const state = parsed.data;
  if (!state.save) {
    core.info('save: false: the image is not saved');
    await forgetRestoreState(state.path);
    return;
  }
  if (state.base) await saveBase(state.base, (line) => core.info(line));
  const store = state.store ? openStore(state.store) : new GitHubCacheStore();
  let status: string;
  try {
    const result = await saveOverlay(
      {
        path: state.path,
        key: state.key,
        cacheHit: state.cacheHit,
        check: state.check,
        replaceKey: state.replaceKey,
      },
      store,
      actionContext(),
    );
    // saved, exists, unchanged, or refused (read-only token, throttled): an info line, not a failure
    core.info(result.message);
    status = result.saved ? 'saved' : result.message;
  } catch (e) {
    // the store failed (an upload that did not go through) or the image is still in use: the job's
    // work is fine, say what happened
    if (!isOverlayError(e, 'E_CACHE') && !isOverlayError(e, 'E_LOCKED')) throw e;
    core.warning(`the image was not saved: ${failureLine(e)}`, { title: 'cache save failed' });
    status = `not saved: ${e.message}`;
  } finally {
    await forgetRestoreState(state.path);
  }
  await writeSummary('setup-overlay (post)', [
    {
      image: state.path,
      info: await safeInfo(state.path),
      status,
      seconds: since(start),
    },
  ]);
}

/** An oras://ghcr.io store authenticates with the job's token (the core reads GITHUB_TOKEN for ghcr.io). */
function useRegistryToken(token?: string): void {
  if (!token || process.env.GITHUB_TOKEN) return;
  core.setSecret(token);
  process.env.GITHUB_TOKEN = token;
}

useRegistryToken(core.getInput('registry-token')); // main and post
await run(main, post);
