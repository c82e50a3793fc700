import { glob, mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import * as core from '@actions/core';
import {
  checkImages,
  type EntryVerdict,
  listableStore,
  OverlayError,
  openStore,
  verifyStore,
} from '@overlay-action/core';
import { readInputs, run, type SummaryRow, safeInfo, setOutputs, writeSummary } from '../runner';
import { checkOverlaySpec } from '../specs';

const MAGIC = /[*?[\]{}]/;

/** `paths` lines: globs expanded against the workspace (files only), literal paths kept as given. */
async function expand(patterns: string[]): Promise<string[]> {
  const found = new Set<string>();
  for (const pattern of patterns) {
    if (!MAGIC.test(pattern)) {
      found.add(pattern);
      continue;
    }
    for await (const entry of glob(pattern, { withFileTypes: true }))
      if (entry.isFile()) found.add(join(entry.parentPath, entry.name));
  }
  return [...found].sort();
}

/**
 * The `check` task's implementation and policy (checkImages): the step fails exactly when
 * `overlayctl check` would exit non-zero — an image corrupt or not checkable, or (only) images in
 * use that could not be checked — unless fail-on-corrupt is false. Each image that is not clean
 * gets an annotation that says why.
 */
async function main(): Promise<void> {
  const { input, extra } = readInputs<
    { images: string[]; repair: boolean; requireApptainer: boolean; timeout?: number },
    { failOnCorrupt: boolean; store?: string; removeBadEntries: boolean }
  >(checkOverlaySpec);
  const images = await expand(input.images);
  if (images.length === 0)
    throw new OverlayError('E_NOT_FOUND', `paths: no file matched ${input.images.join(', ')}`);

  const rows: SummaryRow[] = [];
  const report = await checkImages(images, {
    repair: input.repair,
    requireApptainer: input.requireApptainer,
    timeoutSeconds: input.timeout,
    onResult: (r) => {
      const image = r.image;
      const why = r.error ? `: ${r.error.message}` : r.problems.length ? `: ${r.problems.join('; ')}` : '';
      core.info(`${image}: ${r.status}${why}`);
      if (r.status === 'corrupt')
        core.error(`${image} is corrupt${why}`, { file: image, title: 'corrupt overlay image' });
      else if (r.status === 'error')
        core.error(`${image} could not be checked${why}`, { file: image, title: 'overlay check failed' });
      else if (r.status === 'locked')
        core.warning(`${image} is in use by another process: not checked`, { file: image });
      else if (r.status === 'repaired') core.notice(`${image} was repaired${why}`, { file: image });
      for (const w of r.warnings) core.warning(`${image}: ${w}`, { file: image });
      rows.push({ image, info: null, status: r.status, seconds: r.durationMs / 1000 });
    },
  });
  for (const row of rows) row.info = await safeInfo(row.image);

  // the cache store too (cache verify): every entry restored into a temp dir and checked
  let entries: EntryVerdict[] = [];
  if (extra.store) {
    const store = listableStore(openStore(extra.store));
    entries = await core.group(`Verify cache store ${extra.store}`, () =>
      verifyStore(store, { removeBad: extra.removeBadEntries, timeoutSeconds: input.timeout }),
    );
    for (const e of entries.filter((x) => x.status !== 'clean'))
      core.error(
        `cache entry ${e.key} is ${e.status}${e.removed ? ' (removed)' : ''}: ${e.problems.concat(e.error?.message ?? []).join('; ')}`,
        { title: 'bad cache entry' },
      );
  }
  const badEntries = entries.filter((e) => e.status !== 'clean' && !e.removed);

  const { counts } = report;
  const dir = process.env.RUNNER_TEMP || resolve('.');
  await mkdir(dir, { recursive: true });
  const reportPath = join(dir, `check-overlay-${process.pid}-${Date.now()}.json`);
  await writeFile(reportPath, `${JSON.stringify({ repair: input.repair, ...report, entries }, null, 2)}\n`);
  setOutputs({
    report: reportPath,
    clean: counts.clean,
    repaired: counts.repaired,
    corrupt: counts.corrupt,
    locked: counts.locked,
  });
  await writeSummary(
    'check-overlay',
    rows,
    `${counts.clean} clean, ${counts.repaired} repaired, ${counts.corrupt} corrupt, ${counts.locked} locked${counts.error ? `, ${counts.error} not checkable` : ''}${extra.store ? `; cache store: ${entries.length} entries, ${entries.filter((e) => e.status !== 'clean').length} bad, ${entries.filter((e) => e.removed).length} removed` : ''}`,
  );
  if (!extra.failOnCorrupt) return;
  const bad = report.images.filter(
    (r) =>
      r.status === 'corrupt' ||
      r.status === 'error' ||
      (input.requireApptainer && r.status !== 'locked' && !r.apptainerCompatible),
  );
  // damage (an image, or a cache entry that would not restore) before "try later"
  if (bad.length || badEntries.length)
    throw new OverlayError(
      'E_INTEGRITY',
      [
        bad.length
          ? `${bad.length} image(s) corrupt or not checkable${input.requireApptainer ? ' or not usable by Apptainer' : ''}: ${bad.map((r) => r.image).join(', ')}`
          : '',
        badEntries.length
          ? `${badEntries.length} cache entr${badEntries.length === 1 ? 'y' : 'ies'} would not restore: ${badEntries.map((e) => e.key).join(', ')}`
          : '',
      ]
        .filter(Boolean)
        .join('; '),
      {
        hint:
          counts.corrupt && !input.repair
            ? 'repair: true fixes what e2fsck can fix'
            : badEntries.length
              ? 'remove-bad-entries: true deletes the bad entries (the next restore rebuilds)'
              : 'see the annotations and the report',
      },
    );
  if (report.exitCode === 0) return;
  throw new OverlayError(
    'E_LOCKED',
    `${counts.locked} image(s) in use by another process were not checked: ${report.images
      .filter((r) => r.status === 'locked')
      .map((r) => r.image)
      .join(', ')}`,
    { hint: 'check again when the containers using them have exited' },
  );
}

await run(main);
