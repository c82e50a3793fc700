import { glob, mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import * as core from '@actions/core';
import { checkImages, OverlayError } from '@overlay-action/core';
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
  const { input, extra } = readInputs<{ images: string[]; repair: boolean }, { failOnCorrupt: boolean }>(
    checkOverlaySpec,
  );
  const images = await expand(input.images);
  if (images.length === 0)
    throw new OverlayError('E_NOT_FOUND', `paths: no file matched ${input.images.join(', ')}`);

  const rows: SummaryRow[] = [];
  const report = await checkImages(images, {
    repair: input.repair,
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

  const { counts } = report;
  const dir = process.env.RUNNER_TEMP || resolve('.');
  await mkdir(dir, { recursive: true });
  const reportPath = join(dir, `check-overlay-${process.pid}-${Date.now()}.json`);
  await writeFile(reportPath, `${JSON.stringify({ repair: input.repair, ...report }, null, 2)}\n`);
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
    `${counts.clean} clean, ${counts.repaired} repaired, ${counts.corrupt} corrupt, ${counts.locked} locked${counts.error ? `, ${counts.error} not checkable` : ''}`,
  );
  if (!extra.failOnCorrupt || report.exitCode === 0) return;
  const bad = report.images.filter((r) => r.status === 'corrupt' || r.status === 'error');
  if (bad.length)
    throw new OverlayError(
      'E_INTEGRITY',
      `${bad.length} image(s) corrupt or not checkable: ${bad.map((r) => r.image).join(', ')}`,
      {
        hint:
          counts.corrupt && !input.repair
            ? 'repair: true fixes what e2fsck can fix'
            : 'see the annotations and the report',
      },
    );
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
