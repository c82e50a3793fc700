import { glob, mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import * as core from '@actions/core';
import {
  type CheckReport,
  checkImage,
  type EntryVerdict,
  listableStore,
  OverlayError,
  openStore,
  verifyStore,
} from '@overlay-action/core';
import { readInputs, run, type SummaryRow, safeInfo, setOutputs, since, writeSummary } from '../runner';
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

async function main(): Promise<void> {
  const { input, extra } = readInputs<
    { images: string[]; repair: boolean; requireApptainer: boolean; timeout?: number },
    { failOnCorrupt: boolean; store?: string; removeBadEntries: boolean }
  >(checkOverlaySpec);
  const images = await expand(input.images);
  if (images.length === 0)
    throw new OverlayError('E_NOT_FOUND', `paths: no file matched ${input.images.join(', ')}`);

  const reports: (CheckReport & { seconds: number })[] = [];
  const rows: SummaryRow[] = [];
  for (const image of images) {
    const start = process.hrtime.bigint();
    const report = await core.group(`Check ${image}`, () =>
      checkImage(image, { repair: input.repair, timeoutSeconds: input.timeout }),
    );
    const seconds = since(start);
    reports.push({ ...report, seconds });
    rows.push({ image, info: await safeInfo(image), status: report.status, seconds });
    const why = report.problems.length ? `: ${report.problems.join('; ')}` : '';
    if (report.status === 'corrupt')
      core.error(`${image} is corrupt${why}`, { file: image, title: 'corrupt overlay image' });
    else if (report.status === 'error')
      core.error(`${image} could not be checked${why}`, { file: image, title: 'overlay check failed' });
    else if (report.status === 'locked')
      core.warning(`${image} is in use by another process: not checked`, { file: image });
    else if (report.status === 'repaired') core.notice(`${image} was repaired${why}`, { file: image });
  }

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

  const count = (s: string) => reports.filter((r) => r.status === s).length;
  const dir = process.env.RUNNER_TEMP || resolve('.');
  await mkdir(dir, { recursive: true });
  const reportPath = join(dir, `check-overlay-${process.pid}-${Date.now()}.json`);
  const counts = {
    clean: count('clean'),
    repaired: count('repaired'),
    corrupt: count('corrupt'),
    locked: count('locked'),
    error: count('error'),
  };
  await writeFile(
    reportPath,
    `${JSON.stringify({ repair: input.repair, counts, images: reports, entries }, null, 2)}\n`,
  );
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
  const bad = [
    ...reports.filter(
      (r) =>
        r.status === 'corrupt' ||
        r.status === 'error' ||
        (input.requireApptainer && r.status !== 'locked' && !r.apptainerCompatible),
    ),
    ...entries
      .filter((e) => e.status !== 'clean' && !e.removed)
      .map((e) => ({ image: `cache entry ${e.key}` })),
  ];
  if (extra.failOnCorrupt && bad.length)
    throw new OverlayError(
      'E_INTEGRITY',
      `${bad.length} image(s) corrupt or not checkable: ${bad.map((r) => r.image).join(', ')}`,
      { hint: input.repair ? 'see the report' : 'repair: true fixes what e2fsck can fix' },
    );
}

await run(main);
