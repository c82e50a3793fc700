import { z } from 'zod';
import { validateKey } from '../cache/key';
import { LocalStore } from '../cache/local-store';
import { restoreImage, saveImage } from '../cache/state';
import { openStore } from '../cache/stores';
import { OverlayError } from '../errors';
import { exists } from '../fs/atomic';
import { requireExt3 } from '../image/format';
import { pathSchema, waitField } from './common';
import { defineTask } from './define';
import { setupKeyFields, setupKeys } from './setup';

const keySchema = z
  .string()
  .min(1)
  .max(512)
  .refine((k) => !k.includes(','), 'may not contain commas')
  .describe('Cache key (at most 512 characters, no commas)');
export const storeField = z
  .string()
  .min(1)
  .optional()
  .describe(
    'Cache store: a directory or oras://HOST/REPO (default $OVERLAY_CACHE_STORE or ~/.cache/overlay-action/store)',
  );

export const cacheSaveTask = defineTask({
  name: 'cache save',
  summary:
    'Save an overlay image into a cache store: verified first (not truncated, e2fsck clean); no-op when it is what was restored from this store under this key',
  positional: ['image'],
  input: z.object({
    image: pathSchema.describe('The ext3 overlay image'),
    key: keySchema,
    store: storeField,
    replaceCorrupt: z
      .boolean()
      .default(false)
      .describe('When an entry exists under the key, verify it and replace it if it does not restore'),
    wait: waitField,
  }),
  async run(input, ctx) {
    await requireExt3(input.image);
    const r = await saveImage(openStore(input.store), validateKey(input.key), input.image, {
      replace: input.replaceCorrupt ? 'corrupt' : 'never',
      onProgress: ctx.progress,
    });
    if (r.reason === 'exists')
      ctx.info(
        `cache entry ${input.key} already exists (entries are immutable): not saved${input.replaceCorrupt ? ' (it verified)' : ''}`,
      );
    if (r.reason === 'unchanged') ctx.info('image unchanged since it was restored from this key: not saved');
    if (r.replaced) ctx.info(`the entry ${input.key} did not verify: replaced`);
    return r;
  },
  render: (r) =>
    r.saved
      ? `saved ${r.key} (${r.bytes} bytes)${r.replaced ? ', replacing a corrupt entry' : ''}`
      : `not saved (${r.reason}): ${r.key}`,
});

export const cacheRestoreTask = defineTask({
  name: 'cache restore',
  summary: 'Restore an overlay image from a cache store: hit, partial (restore-key) or miss',
  positional: ['image'],
  input: z.object({
    image: pathSchema.describe('Where to put the image'),
    key: keySchema,
    restoreKey: z
      .array(z.string().min(1))
      .default([])
      .describe('Key prefix to fall back to (repeatable, in order)'),
    store: storeField,
    force: z.boolean().default(false).describe('Replace an existing file at the image path'),
    wait: waitField,
  }),
  async run(input, ctx) {
    if (!input.force && (await exists(input.image)))
      throw new OverlayError('E_EXISTS', `${input.image} already exists`, {
        hint: 'pass --force to replace it with the cached image, or restore to another path',
      });
    const r = await restoreImage(
      openStore(input.store),
      { primary: input.key, restoreKeys: input.restoreKey },
      input.image,
      { onProgress: ctx.progress },
    );
    for (const w of r.warnings) ctx.warn(w);
    return r;
  },
  render: (r) => (r.outcome === 'miss' ? 'miss' : `${r.outcome}: ${r.matchedKey}`),
});

export const cacheDeleteTask = defineTask({
  name: 'cache delete',
  summary: 'Delete the entry under a key from a cache store (e.g. one that no longer restores)',
  positional: ['key'],
  input: z.object({ key: keySchema, store: storeField }),
  async run(input) {
    const store = openStore(input.store);
    await store.ensureWritable();
    return { key: input.key, deleted: await store.delete(validateKey(input.key)) };
  },
  render: (r) => (r.deleted ? `deleted ${r.key}` : `no entry ${r.key}`),
});

export const cacheKeyTask = defineTask({
  name: 'cache key',
  summary: "Derive setup's cache key (and restore-keys) from the same options setup takes",
  input: z.object(setupKeyFields),
  run: async (input) => {
    const k = await setupKeys(input);
    return { key: k.primary, restoreKeys: k.restoreKeys };
  },
  render: (k) => [k.key, ...k.restoreKeys.map((r) => `  restore-key: ${r}`)].join('\n'),
});

export const cachePruneTask = defineTask({
  name: 'cache prune',
  summary: 'Shrink a local cache store to a size budget, least recently used entries first',
  input: z.object({
    store: storeField,
    maxSize: z
      .string()
      .regex(/^\d+\s*[kmgt]?(i?b)?$/i, 'a size such as 10G')
      .describe('Budget: MiB or with a unit (10G)'),
  }),
  async run(input) {
    const store = openStore(input.store);
    if (store.kind === 'oras')
      throw new OverlayError(
        'E_INVALID_INPUT',
        `${store.spec}: registries prune by their own retention rules`,
        {
          hint: 'set a retention policy in the registry (ghcr.io: package settings or actions/delete-package-versions; Harbor: tag retention); remove one entry with overlayctl cache delete',
        },
      );
    if (!(store instanceof LocalStore))
      throw new OverlayError('E_INVALID_INPUT', `cache prune works on a directory store, not ${store.spec}`);
    const m = /^(\d+)\s*([kmgt])?/i.exec(input.maxSize)!;
    const unit =
      { K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 }[(m[2] ?? 'M').toUpperCase() as 'K'] ?? 2 ** 20;
    return store.prune(Number(m[1]) * unit);
  },
  render: (r) => `removed ${r.removed.length} entries; store holds ${r.bytes} bytes`,
});
