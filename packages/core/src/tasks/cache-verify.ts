import { z } from 'zod';
import { openStore } from '../cache/stores';
import { type EntryVerdict, listableStore, verifyStore } from '../cache/verify';
import { EXIT_STATUS } from '../errors';
import { storeField } from './cache';
import { renderCheckResult } from './check';
import { fsckTimeoutField } from './common';
import { defineTask } from './define';

export interface VerifyStoreReport {
  store: string;
  entries: EntryVerdict[];
  counts: Record<EntryVerdict['status'], number>;
  removed: number;
  exitCode: number;
}

export const cacheVerifyTask = defineTask({
  name: 'cache verify',
  summary:
    'Verify every entry of a cache store directory (content digest, fsck of what a restore gives, in a temp dir); --remove-bad deletes failing entries',
  input: z.object({
    store: storeField,
    removeBad: z
      .boolean()
      .default(false)
      .describe('Delete entries that fail verification (the next restore misses and rebuilds)'),
    timeout: fsckTimeoutField,
  }),
  async run(input, ctx): Promise<VerifyStoreReport> {
    const store = listableStore(openStore(input.store));
    const entries = await verifyStore(store, {
      removeBad: input.removeBad,
      timeoutSeconds: input.timeout,
      onResult: (r) => ctx.progress(`${r.key}: ${r.status}${r.removed ? ' (removed)' : ''}`),
    });
    const counts = { clean: 0, repaired: 0, corrupt: 0, locked: 0, error: 0 };
    for (const e of entries) counts[e.status]++;
    const removed = entries.filter((e) => e.removed).length;
    // like check --repair: an entry that failed but was removed leaves a healthy store
    const ok = entries.every((e) => e.status === 'clean' || e.removed);
    return {
      store: store.dir,
      entries,
      counts,
      removed,
      exitCode: ok ? EXIT_STATUS.ok : EXIT_STATUS.findings,
    };
  },
  render: (r) =>
    [
      ...r.entries.map(
        (e) => `${renderCheckResult(e)}\n         key ${e.key}${e.removed ? ' (removed)' : ''}`,
      ),
      `${r.entries.length} entries: ${r.counts.clean} clean, ${r.counts.corrupt} corrupt, ${r.counts.error} not checkable; ${r.removed} removed`,
    ].join('\n'),
});
