import { promises as fsp } from 'node:fs';
import { z } from 'zod';
import { resolveBase } from '../base/resolve';
import { deriveKey } from '../cache/key';
import { forgetRestoreState, restoreImage, saveImage } from '../cache/state';
import type { CacheStore } from '../cache/store';
import { openStore } from '../cache/stores';
import { isOverlayError, OverlayError } from '../errors';
import { exists } from '../fs/atomic';
import { checkImage } from '../image/check';
import { chownImage } from '../image/chown';
import { createImage, PROFILES } from '../image/create';
import { type ImageInfo, imageInfo } from '../image/info';
import { resizeImage } from '../image/resize';
import { formatBytes, sizeSchema } from '../size';
import { checkOwner, containerDirSchema, ownerFields, ownerFrom, pathSchema } from './common';
import { createFields, renderImageSummary } from './create';
import { defineTask, type TaskContext } from './define';

/**
 * setup: the overlay a CI job works in. Restore it from a cache store (exact key → hit, a
 * restore-key → partial), check a restored image (a corrupt one is discarded: a miss), else create
 * it; when it was not an exact hit and a build script is given, build inside it and normalize.
 * The store is injected (SetupContext.cacheStore): a local directory store from `store`, or the
 * GitHub Actions cache adapter the action passes in. The schema fields are the action inputs.
 */

const DEFAULT_SIZE = '1G';
/** Bumped when what an image under a key contains changes meaning (layout, normalization). */
const KEY_VERSION = 'v1';

const cacheKeySchema = z
  .string()
  .max(200, 'at most 200 characters')
  .regex(/^[A-Za-z0-9._+=-]+$/, 'use letters, digits and . _ + = - only');

/** Everything that goes into setup's cache key: `cache key` takes the same fields, so it derives the same key. */
export const setupKeyFields = {
  size: z
    .union([z.string(), z.number().int()])
    .default(DEFAULT_SIZE)
    .pipe(sizeSchema)
    .describe('Size of the image: MiB (256) or with a unit (512M, 4G); at least 64 MiB'),
  profile: createFields.profile,
  sparse: createFields.sparse,
  ...ownerFields,
  createDir: z
    .array(containerDirSchema)
    .default([])
    .describe('Directory to create under upper/ in a new image (repeatable; one per line in the action)'),
  base: z
    .string()
    .min(1)
    .refine((s) => !/[\0\n\r]/.test(s), 'may not contain NUL or newline characters')
    .optional()
    .describe('Container for the build: a SIF path or a reference (docker://…, oras://…)'),
  build: z
    .string()
    .optional()
    .describe(
      'Script run inside the overlay (on base) unless the image was an exact cache hit; on a partial hit it runs on the restored image',
    ),
  cacheKey: cacheKeySchema
    .default('overlay')
    .describe('Key prefix; the key adds a digest of the image settings, base, build and key-files'),
  keyFiles: z
    .array(pathSchema)
    .default([])
    .describe('Globs (one per line) whose file contents go into the key (e.g. environment.yml)'),
  restoreKeys: z
    .array(cacheKeySchema)
    .default([])
    .describe('Key prefixes tried in order when the exact key misses (one per line)'),
};

export const setupInput = z
  .object({
    path: pathSchema.describe('Image file to restore or create (e.g. env.img)'),
    ...setupKeyFields,
    cache: z.boolean().default(true).describe('Restore the image from the cache (and save it, see save)'),
    save: z
      .boolean()
      .default(true)
      .describe(
        'Save the image to the cache when it was not an exact hit (the action saves in its post step; false: restore only, e.g. on pull requests)',
      ),
    store: z
      .string()
      .min(1)
      .optional()
      .describe(
        'Cache store: a directory (self-hosted runners, clusters). Default: the Actions cache in the action, $OVERLAY_CACHE_STORE on the command line',
      ),
    check: z
      .boolean()
      .default(true)
      .describe('fsck a restored image (a corrupt one is discarded and rebuilt) and an image before saving'),
  })
  .superRefine(checkOwner)
  .superRefine((v, ctx) => {
    if (v.build?.trim() && v.base === undefined)
      ctx.addIssue({ code: 'custom', path: ['base'], message: 'required when build is given' });
  });

export type SetupInput = z.output<typeof setupInput>;

/** The run context of setup: a task context plus the injected store and an optional log grouping. */
export interface SetupContext extends TaskContext {
  /** Used when `store` is not given (the action passes its GitHub Actions cache adapter). */
  cacheStore?: CacheStore;
  /** Wrap a long phase (the action folds it into a log group). */
  group?<T>(name: string, fn: () => Promise<T>): Promise<T>;
}

export type CacheOutcome = 'hit' | 'partial' | 'miss' | 'disabled';

export interface SetupOutput {
  path: string;
  /** True only for the exact key. */
  cacheHit: boolean;
  cacheOutcome: CacheOutcome;
  cacheKey: string;
  /** The key the restored entry was saved under ('' when nothing was restored). */
  cacheMatchedKey: string;
  restoreKeys: string[];
  /** A restored image failed its check and was discarded. */
  discarded: { key: string; status: string; problems: string[] } | null;
  /** The store the image came from / goes to (its spec), '' without a store. */
  store: string;
  created: boolean;
  built: boolean;
  /** What restoring a fallback entry changed to match the settings asked for. */
  reconciled: string[];
  /** The base image as a path the runtime can run ('' without base): a pulled reference's SIF. */
  basePath: string;
  /** The save made right after setup (the CLI with a store; the action saves in its post step). */
  saved: SaveDecision | null;
  sizeBytes: number;
  usedBytes: number | null;
  inodesUsedPercent: number | null;
  info: ImageInfo;
}

/** The store named by `store`, else the injected one, else $OVERLAY_CACHE_STORE, else none. */
export function storeFor(input: { store?: string }, ctx: SetupContext): CacheStore | undefined {
  if (input.store !== undefined) return openStore(input.store);
  if (ctx.cacheStore) return ctx.cacheStore;
  return process.env.OVERLAY_CACHE_STORE ? openStore(process.env.OVERLAY_CACHE_STORE) : undefined;
}

type KeyFields = z.output<z.ZodObject<typeof setupKeyFields>>;

/**
 * Primary key and restore keys: prefix + digest of what is fixed when the filesystem is made
 * (the profile: inodes per byte) + digest of the rest of the settings + digest of the key-files.
 * The user's restore-keys come first, then the derived fallbacks (same settings with other
 * key-files, then same profile), so a changed environment.yml still starts from the last image,
 * and never from one whose inode ratio differs.
 */
export async function setupKeys(input: KeyFields): Promise<{ primary: string; restoreKeys: string[] }> {
  const derived = await deriveKey({
    prefix: input.cacheKey,
    files: input.keyFiles,
    fixed: { version: KEY_VERSION, profile: input.profile },
    options: {
      size: input.size,
      sparse: input.sparse,
      owner: input.fakeroot ? 'fakeroot' : input.uid !== undefined ? `${input.uid}:${input.gid}` : 'caller',
      createDirs: input.createDir,
      base: input.base ?? '',
      build: input.build ?? '',
    },
  });
  return { primary: derived.key, restoreKeys: [...new Set([...input.restoreKeys, ...derived.restoreKeys])] };
}

async function phase<T>(ctx: SetupContext, name: string, fn: () => Promise<T>): Promise<T> {
  return ctx.group ? ctx.group(name, fn) : fn();
}

/**
 * Bring an image restored from another key to the settings asked for: grow (or shrink) it to the
 * requested size and give upper/ the requested owner. What mkfs fixed (the inode ratio) cannot
 * change, and data larger than the requested size cannot shrink into it: such an entry is refused.
 */
async function reconcile(
  path: string,
  input: SetupInput,
  ctx: SetupContext,
  done: string[],
): Promise<string | null> {
  const info = await imageInfo(path);
  const wanted = PROFILES[input.profile].inodeRatio;
  if (info.inodeRatio && Math.abs(Math.log2(info.inodeRatio / wanted)) > 0.5)
    return `its inode ratio (${info.inodeRatio} bytes/inode) is not profile ${input.profile}'s (${wanted})`;
  if (info.sizeBytes !== input.size) {
    try {
      await resizeImage(path, input.size, { onProgress: ctx.progress });
    } catch (e) {
      if (isOverlayError(e, 'E_SHRINK_TOO_SMALL'))
        return `its data does not fit in the requested size ${formatBytes(input.size)}`;
      throw e;
    }
    done.push(`resized from ${formatBytes(info.sizeBytes)} to ${formatBytes(input.size)}`);
  }
  const owner = ownerFrom(input);
  if (info.upper && (info.upper.uid !== owner.uid || info.upper.gid !== owner.gid)) {
    await chownImage(path, owner);
    done.push(`upper/ owner changed from ${info.upper.uid}:${info.upper.gid} to ${owner.uid}:${owner.gid}`);
  }
  return null;
}

export async function setupOverlay(input: SetupInput, ctx: SetupContext): Promise<SetupOutput> {
  if (await exists(input.path)) {
    throw new OverlayError('E_EXISTS', `${input.path} already exists`, {
      hint: 'setup restores or creates the image itself: remove the file or choose another path',
    });
  }
  const store = input.cache ? storeFor(input, ctx) : undefined;
  if (input.cache && !store)
    ctx.info('no cache store given (--store DIR or OVERLAY_CACHE_STORE); the image is not cached');
  const { primary, restoreKeys } = await setupKeys(input);

  let outcome: CacheOutcome = store ? 'miss' : 'disabled';
  let matchedKey = '';
  let discarded: SetupOutput['discarded'] = null;
  const reconciled: string[] = [];
  // from here on the image is ours: a failure removes it, so a rerun starts clean
  try {
    if (store) {
      const restored = await phase(ctx, `Restore ${input.path} (key ${primary})`, () =>
        restoreImage(store, { primary, restoreKeys }, input.path, {
          accept: (path, key) =>
            key === primary ? Promise.resolve(null) : reconcile(path, input, ctx, reconciled),
        }),
      );
      outcome = restored.outcome;
      matchedKey = restored.matchedKey ?? '';
      for (const w of restored.warnings) ctx.warn(w);
      const bad = restored.rejected?.[0];
      if (outcome === 'miss' && bad) discarded = { key: bad.key, status: 'corrupt', problems: [bad.reason] };
      ctx.info(
        outcome === 'miss'
          ? `cache miss for ${primary}`
          : `cache ${outcome === 'hit' ? 'hit' : 'partial hit'}: restored ${matchedKey} to ${input.path}${reconciled.length ? ` (${reconciled.join('; ')})` : ''}`,
      );
      if (outcome !== 'miss' && input.check) {
        const report = await phase(ctx, `Check ${input.path}`, () =>
          checkImage(input.path, { repair: false }),
        );
        if (report.status !== 'clean') {
          discarded = { key: matchedKey, status: report.status, problems: report.problems };
          ctx.warn(
            `${input.path}: the image restored from ${matchedKey} is ${report.status}${report.problems.length ? ` (${report.problems.join('; ')})` : ''}; discarding it and creating a new one`,
          );
          await discard(input.path);
          outcome = 'miss';
          matchedKey = '';
        }
      }
    }

    let created = false;
    if (outcome === 'miss' || outcome === 'disabled') {
      await forgetRestoreState(input.path);
      await phase(ctx, `Create ${input.path}`, () =>
        createImage({
          path: input.path,
          sizeBytes: input.size,
          inodeRatio: PROFILES[input.profile].inodeRatio,
          reservedPercent: 0,
          sparse: input.sparse,
          owner: ownerFrom(input),
          createDirs: input.createDir,
          force: false,
          onProgress: ctx.progress,
        }),
      );
      created = true;
    }

    let basePath = '';
    if (input.base !== undefined)
      basePath = (
        await phase(ctx, `Base ${input.base}`, () => resolveBase(input.base!, { onProgress: ctx.progress }))
      ).path;

    let built = false;
    if (outcome !== 'hit' && input.build?.trim()) {
      const { buildInOverlay } = await import('../runtime/build');
      await phase(ctx, `Build in ${input.path} (on ${input.base})`, () =>
        buildInOverlay({
          image: input.path,
          base: basePath,
          script: input.build!,
          // the run follows the owner of upper/; the build normalizes deletion markers itself
          fakeroot: 'auto',
          onProgress: ctx.progress,
        }),
      );
      built = true;
    }

    const info = await imageInfo(input.path);
    return {
      path: input.path,
      cacheHit: outcome === 'hit',
      cacheOutcome: outcome,
      cacheKey: primary,
      cacheMatchedKey: matchedKey,
      restoreKeys,
      discarded,
      store: store?.spec ?? '',
      created,
      built,
      reconciled,
      basePath,
      saved: null,
      sizeBytes: info.sizeBytes,
      usedBytes: info.usedBytes,
      inodesUsedPercent: info.inodesUsedPercent,
      info,
    };
  } catch (e) {
    await discard(input.path);
    throw e;
  }
}

/** Remove an image setup made (and its restore record): nothing half-made blocks a rerun. */
async function discard(path: string): Promise<void> {
  await fsp.rm(path, { force: true });
  await forgetRestoreState(path);
}

export interface SaveDecision {
  saved: boolean;
  /** exists, unchanged, refused (the store declined: read-only token, throttled), hit, gone. */
  reason: string;
  /** One line for the log. */
  message: string;
}

/**
 * The save half of setup (the action's post step; the CLI right after setup): save the image
 * under `key` unless it was an exact hit. saveImage decides "unchanged" (one mechanism), verifies
 * the image and reports a concurrent save or a refusing store as a reason, not an error.
 * `replaceKey`: the entry under this key failed verification at restore; replace it.
 */
export async function saveOverlay(
  opts: { path: string; key: string; cacheHit: boolean; check: boolean; replaceKey?: string },
  store: CacheStore,
  ctx: SetupContext,
): Promise<SaveDecision> {
  if (opts.cacheHit)
    return { saved: false, reason: 'hit', message: `exact cache hit on ${opts.key}: nothing to save` };
  if (!(await exists(opts.path)))
    return { saved: false, reason: 'gone', message: `${opts.path} no longer exists: nothing to save` };
  const r = await phase(ctx, `Save ${opts.path} (key ${opts.key})`, () =>
    saveImage(store, opts.key, opts.path, {
      check: opts.check,
      replace: opts.replaceKey === opts.key ? 'always' : 'never',
    }),
  );
  const message = r.saved
    ? `saved ${opts.path} as ${opts.key}${r.replaced ? ' (replacing a corrupt entry)' : ''}`
    : r.reason === 'exists'
      ? `an entry ${opts.key} already exists (entries are immutable): not saved`
      : r.reason === 'unchanged'
        ? `${opts.path} is unchanged since it was restored from ${opts.key}: nothing to save`
        : `the cache store did not take the entry: ${r.message ?? 'refused'}`;
  return { saved: r.saved, reason: r.saved ? 'saved' : (r.reason ?? 'not saved'), message };
}

export const setupTask = defineTask({
  name: 'setup',
  summary:
    'Restore an overlay from a cache (or create it), build inside it, check it, save it (what the action does)',
  positional: ['path'],
  input: setupInput,
  run: async (input, ctx) => {
    const out = await setupOverlay(input, ctx);
    // the save half, right away (the action runs it in its post step): a failed save leaves the image
    const store = input.cache && input.save ? storeFor(input, ctx) : undefined;
    if (store) {
      out.saved = await saveOverlay(
        {
          path: out.path,
          key: out.cacheKey,
          cacheHit: out.cacheHit,
          check: input.check,
          replaceKey: out.discarded?.key,
        },
        store,
        ctx,
      );
      ctx.info(out.saved.message);
    }
    return out;
  },
  render: (o: SetupOutput) =>
    [
      `${o.path}: ${o.cacheOutcome === 'hit' ? 'restored (exact key)' : o.cacheOutcome === 'partial' ? `restored from ${o.cacheMatchedKey}` : 'created'}${o.built ? ', built' : ''}${o.saved?.saved ? ', saved' : ''}`,
      `  key ${o.cacheKey}`,
      ...(o.basePath ? [`  base ${o.basePath}`] : []),
      renderImageSummary(o.info),
    ].join('\n'),
});
