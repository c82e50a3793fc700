import { z } from 'zod';
import { deriveKey, validateKey } from '../cache/key';
import { LocalStore } from '../cache/local-store';
import { restoreImage, saveImage } from '../cache/state';
import { requireExt3 } from '../image/format';
import { sizeSchema } from '../size';
import { pathSchema } from './common';
import { defineTask } from './define';

const keySchema = z
  .string()
  .min(1)
  .max(512)
  .refine((k) => !k.includes(','), 'may not contain commas')
  .describe('Cache key (at most 512 characters, no commas)');
export const storeField = pathSchema
  .optional()
  .describe('Local store directory (default $OVERLAY_CACHE_STORE or ~/.cache/overlay-action/store)');

export const cacheSaveTask = defineTask({
  name: 'cache save',
  summary: 'Save an overlay image into a local cache store (sparse-aware, verified; no-op when unchanged)',
  positional: ['image'],
  input: z.object({
    image: pathSchema.describe('The ext3 overlay image'),
    key: keySchema,
    store: storeField,
  }),
  async run(input, ctx) {
    await requireExt3(input.image);
    const r = await saveImage(new LocalStore(input.store), validateKey(input.key), input.image);
    if (r.reason === 'exists')
      ctx.info(`cache entry ${input.key} already exists (entries are immutable): not saved`);
    if (r.reason === 'unchanged') ctx.info('image unchanged since it was restored: not saved');
    return r;
  },
  render: (r) => (r.saved ? `saved ${r.key} (${r.bytes} bytes)` : `not saved (${r.reason}): ${r.key}`),
});

export const cacheRestoreTask = defineTask({
  name: 'cache restore',
  summary: 'Restore an overlay image from a local cache store: hit, partial (restore-key) or miss',
  positional: ['image'],
  input: z.object({
    image: pathSchema.describe('Where to put the image'),
    key: keySchema,
    restoreKey: z
      .array(z.string().min(1))
      .default([])
      .describe('Key prefix to fall back to (repeatable, in order)'),
    store: storeField,
  }),
  async run(input, ctx) {
    const r = await restoreImage(
      new LocalStore(input.store),
      { primary: input.key, restoreKeys: input.restoreKey },
      input.image,
    );
    for (const w of r.warnings) ctx.warn(w);
    return r;
  },
  render: (r) => (r.outcome === 'miss' ? 'miss' : `${r.outcome}: ${r.matchedKey}`),
});

export const cacheKeyTask = defineTask({
  name: 'cache key',
  summary: 'Derive a cache key (and restore-keys) from files, create options and the base image',
  input: z.object({
    prefix: z.string().default('overlay').describe('Key prefix'),
    files: z
      .array(z.string())
      .default([])
      .describe('Glob of files whose content goes into the key (repeatable)'),
    size: sizeSchema.optional().describe('Image size'),
    profile: z.string().optional().describe('Filesystem profile'),
    owner: z.string().optional().describe('Owner of upper/ (fakeroot, caller or UID:GID)'),
    base: z.string().optional().describe('Base image reference'),
    baseDigest: z.string().optional().describe('Digest of the base image, when known'),
    build: z.string().optional().describe('The build command'),
  }),
  run: (input) =>
    deriveKey({
      prefix: input.prefix,
      files: input.files,
      options: {
        size: input.size,
        profile: input.profile,
        owner: input.owner,
        base: input.base,
        baseDigest: input.baseDigest,
        build: input.build,
      },
    }),
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
    const m = /^(\d+)\s*([kmgt])?/i.exec(input.maxSize)!;
    const unit =
      { K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 }[(m[2] ?? 'M').toUpperCase() as 'K'] ?? 2 ** 20;
    return new LocalStore(input.store).prune(Number(m[1]) * unit);
  },
  render: (r) => `removed ${r.removed.length} entries; store holds ${r.bytes} bytes`,
});
