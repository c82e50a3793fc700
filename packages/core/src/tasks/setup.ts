import { promises as fsp } from 'node:fs';
import { z } from 'zod';
import type { CacheStore } from '../cache/store';
import { OverlayError } from '../errors';
import { exists } from '../fs/atomic';
import { checkImage } from '../image/check';
import { createImage, PROFILES } from '../image/create';
import { type ImageInfo, imageInfo } from '../image/info';
import { sizeSchema } from '../size';
import { checkOwner, containerDirSchema, ownerFields, ownerFrom, pathSchema, waitField } from './common';
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

export const setupInput = z
  .object({
    path: pathSchema.describe('Image file to restore or create (e.g. env.img)'),
    size: z
      .union([z.string(), z.number().int()])
      .default(DEFAULT_SIZE)
      .pipe(sizeSchema)
      .describe('Size of a new image: MiB (256) or with a unit (512M, 4G); at least 64 MiB'),
    profile: createFields.profile,
    sparse: createFields.sparse,
    ...ownerFields,
    createDirs: z
      .array(containerDirSchema)
      .default([])
      .describe('Directories to create under upper/ in a new image (one per line)'),
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
    cache: z
      .boolean()
      .default(true)
      .describe('Restore the image from the cache and save it in the post step'),
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
    store: pathSchema
      .optional()
      .describe('A directory: use this local store instead of the Actions cache (self-hosted runners)'),
    check: z
      .boolean()
      .default(true)
      .describe('fsck a restored image (a corrupt one is discarded and rebuilt) and an image before saving'),
    wait: waitField,
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
  created: boolean;
  built: boolean;
  /** Fingerprint right after restore ('' when the image was created): the post step compares. */
  restoredDigest: string;
  sizeBytes: number;
  usedBytes: number | null;
  inodesUsedPercent: number | null;
  info: ImageInfo;
}

/**
 * A fingerprint that changes whenever the file is written or replaced: inode, size and the
 * ctime/mtime in nanoseconds (ctime can't be set back by a user). Cheap on an 8 GiB sparse image,
 * where hashing the content would read every hole.
 */
export async function imageDigest(path: string): Promise<string> {
  const st = await fsp.stat(path, { bigint: true });
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/** The store named by `store`, else the injected one, else none (CLI without --store). */
export async function storeFor(
  input: { store?: string },
  ctx: SetupContext,
): Promise<CacheStore | undefined> {
  if (input.store !== undefined) {
    const { LocalStore } = await import('../cache/local-store');
    return new LocalStore(input.store);
  }
  return ctx.cacheStore;
}

/**
 * Primary key and restore keys: prefix + digest of everything that shapes the image. The user's
 * restore-keys come first, then the derived fallbacks (same settings with other key-files, then
 * any image of this prefix), so a changed environment.yml still starts from the last image.
 */
export async function setupKeys(input: SetupInput): Promise<{ primary: string; restoreKeys: string[] }> {
  const { deriveKey } = await import('../cache/key');
  const derived = await deriveKey({
    prefix: input.cacheKey,
    files: input.keyFiles,
    options: {
      version: KEY_VERSION,
      size: input.size,
      profile: input.profile,
      sparse: input.sparse,
      owner: input.fakeroot ? 'fakeroot' : input.uid !== undefined ? `${input.uid}:${input.gid}` : 'caller',
      createDirs: input.createDirs,
      base: input.base ?? '',
      build: input.build ?? '',
    },
  });
  return { primary: derived.key, restoreKeys: [...new Set([...input.restoreKeys, ...derived.restoreKeys])] };
}

async function phase<T>(ctx: SetupContext, name: string, fn: () => Promise<T>): Promise<T> {
  return ctx.group ? ctx.group(name, fn) : fn();
}

export async function setupOverlay(input: SetupInput, ctx: SetupContext): Promise<SetupOutput> {
  if (await exists(input.path)) {
    throw new OverlayError('E_EXISTS', `${input.path} already exists`, {
      hint: 'setup restores or creates the image itself: remove the file or choose another path',
    });
  }
  const store = input.cache ? await storeFor(input, ctx) : undefined;
  if (input.cache && !store) ctx.info('no cache store given (pass store: DIR); the image is not cached');
  const { primary, restoreKeys } = await setupKeys(input);

  let outcome: CacheOutcome = store ? 'miss' : 'disabled';
  let matchedKey = '';
  let discarded: SetupOutput['discarded'] = null;
  let restoredDigest = '';
  if (store) {
    const restored = await phase(ctx, `Restore ${input.path} (key ${primary})`, () =>
      store.restore({ primary, restoreKeys }, input.path),
    );
    outcome = restored.outcome;
    matchedKey = restored.matchedKey ?? '';
    for (const w of restored.warnings) ctx.warn(w);
    const bad = restored.rejected?.[0];
    if (outcome === 'miss' && bad) discarded = { key: bad.key, status: 'corrupt', problems: [bad.reason] };
    ctx.info(
      outcome === 'miss'
        ? `cache miss for ${primary}`
        : `cache ${outcome === 'hit' ? 'hit' : 'partial hit'}: restored ${matchedKey} to ${input.path}`,
    );
    if (outcome !== 'miss' && input.check) {
      const report = await phase(ctx, `Check ${input.path}`, () => checkImage(input.path, { repair: false }));
      if (report.status !== 'clean') {
        discarded = { key: matchedKey, status: report.status, problems: report.problems };
        ctx.warn(
          `${input.path}: the image restored from ${matchedKey} is ${report.status}${report.problems.length ? ` (${report.problems.join('; ')})` : ''}; discarding it and creating a new one`,
        );
        await fsp.rm(input.path, { force: true });
        outcome = 'miss';
        matchedKey = '';
      }
    }
    if (outcome !== 'miss') restoredDigest = await imageDigest(input.path);
  }

  let created = false;
  if (outcome === 'miss' || outcome === 'disabled') {
    await phase(ctx, `Create ${input.path}`, () =>
      createImage({
        path: input.path,
        sizeBytes: input.size,
        inodeRatio: PROFILES[input.profile].inodeRatio,
        reservedPercent: 0,
        sparse: input.sparse,
        owner: ownerFrom(input),
        createDirs: input.createDirs,
        force: false,
        onProgress: ctx.progress,
      }),
    );
    created = true;
  }

  let built = false;
  if (outcome !== 'hit' && input.build?.trim()) {
    const { buildInOverlay } = await import('../runtime/build');
    await phase(ctx, `Build in ${input.path} (on ${input.base})`, () =>
      buildInOverlay({
        image: input.path,
        base: input.base!,
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
    created,
    built,
    restoredDigest,
    sizeBytes: info.sizeBytes,
    usedBytes: info.usedBytes,
    inodesUsedPercent: info.inodesUsedPercent,
    info,
  };
}

export interface SaveDecision {
  saved: boolean;
  /** Why nothing was saved, or the store's note on a save. */
  reason: string;
}

/**
 * The post step of setup: save the image under `key` when it was not an exact hit and it changed
 * since the restore (a created image always counts as changed). A concurrent save of the same key
 * by another job is not an error (the store reports it as a reason).
 */
export async function saveOverlay(
  opts: {
    path: string;
    key: string;
    cacheHit: boolean;
    restoredDigest: string;
    check: boolean;
    store?: string;
  },
  ctx: SetupContext,
): Promise<SaveDecision> {
  if (opts.cacheHit) return { saved: false, reason: `exact cache hit on ${opts.key}: nothing to save` };
  if (!(await exists(opts.path)))
    return { saved: false, reason: `${opts.path} no longer exists: nothing to save` };
  if (opts.restoredDigest && (await imageDigest(opts.path)) === opts.restoredDigest)
    return { saved: false, reason: `${opts.path} is unchanged since it was restored: nothing to save` };
  const store = await storeFor(opts, ctx);
  if (!store) return { saved: false, reason: 'no cache store: nothing saved' };
  if (opts.check) {
    const report = await phase(ctx, `Check ${opts.path} before saving`, () =>
      checkImage(opts.path, { repair: false }),
    );
    if (report.status === 'locked')
      return { saved: false, reason: `${opts.path} is still in use by another process: not saved` };
    if (report.status !== 'clean')
      throw new OverlayError('E_INTEGRITY', `${opts.path} is ${report.status}; not saving it to the cache`, {
        details: { problems: report.problems },
      });
  }
  const result = await phase(ctx, `Save ${opts.path} (key ${opts.key})`, () =>
    store.save(opts.key, opts.path),
  );
  return {
    saved: result.saved,
    reason: result.reason ?? (result.saved ? `saved as ${opts.key}` : 'not saved'),
  };
}

export const setupTask = defineTask({
  name: 'setup',
  summary: 'Restore an overlay from a cache (or create it), build inside it, check it (what the action does)',
  positional: ['path'],
  input: setupInput,
  run: (input, ctx) => setupOverlay(input, ctx),
  render: (o: SetupOutput) =>
    [
      `${o.path}: ${o.cacheOutcome === 'hit' ? 'restored (exact key)' : o.cacheOutcome === 'partial' ? `restored from ${o.cacheMatchedKey}` : 'created'}${o.built ? ', built' : ''}`,
      `  key ${o.cacheKey}`,
      renderImageSummary(o.info),
    ].join('\n'),
});
