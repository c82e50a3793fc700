// check and check --repair measured against e2fsprogs' own damaged-image corpus.
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CheckResult, checkImage } from '../../packages/core/src/image/check';
import { imageInfo } from '../../packages/core/src/image/info';
import { sha256File } from '../helpers/tools';
import { type CorpusCase, e2fsprogsCorpus } from './corpus';

/** Our bound on every tool run of a check, seconds: no image may take longer. */
const BOUND = 60;
const PARALLEL = 2;

let work: string;
let corpus: { version: string; cases: CorpusCase[] };

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'ov-corpus-'));
  corpus = await e2fsprogsCorpus();
}, 600_000);
afterAll(() => rm(work, { recursive: true, force: true }));

async function unpack(c: CorpusCase, suffix: string): Promise<string> {
  const img = join(work, `${c.name}.${suffix}.img`);
  await pipeline(createReadStream(c.image), createGunzip(), createWriteStream(img));
  return img;
}

async function eachInParallel<T, R>(items: T[], fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: PARALLEL }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!);
      }
    }),
  );
  return out;
}

/** e2fsprogs' exit status as our verdict: 0 clean, 1-7 damage found (fixed or not). */
const expectedStatus = (exit: number) => (exit === 0 ? 'clean' : exit < 8 ? 'corrupt' : 'error');
const pct = (n: number, d: number) => `${((100 * n) / d).toFixed(1)}%`;

describe("e2fsprogs' damaged-image corpus", () => {
  it('check agrees with e2fsprogs on >= 97%, never writes, every run bounded', async () => {
    expect(corpus.cases.length).toBeGreaterThan(100);
    const rows = await eachInParallel(corpus.cases, async (c) => {
      const img = await unpack(c, 'ro');
      const before = await sha256File(img);
      const r = await checkImage(img, { timeoutSeconds: BOUND });
      const after = await sha256File(img);
      await rm(img, { force: true });
      return { c, r, modified: before !== after };
    });
    const agree = rows.filter(({ c, r }) => r.status === expectedStatus(c.expected));
    const timedOut = rows.filter(({ r }) => r.error?.code === 'E_TIMEOUT');
    const modified = rows.filter((x) => x.modified);
    const methods = rows.reduce<Record<string, number>>((m, { r }) => {
      m[r.method ?? 'none'] = (m[r.method ?? 'none'] ?? 0) + 1;
      return m;
    }, {});
    console.log(
      [
        `e2fsprogs ${corpus.version} corpus: ${rows.length} images without a custom script`,
        `check agrees with e2fsprogs' expected first-run status on ${agree.length}/${rows.length} (${pct(agree.length, rows.length)})`,
        `methods: ${JSON.stringify(methods)}; over the ${BOUND}s bound: ${timedOut.length}; modified by check: ${modified.length}`,
        `slowest check: ${(Math.max(...rows.map(({ r }) => r.durationMs)) / 1000).toFixed(1)} s (informational; the bound is what is guaranteed)`,
        ...rows
          .filter((x) => !agree.includes(x))
          .map(
            ({ c, r }) =>
              `  disagree ${c.name}: expected ${expectedStatus(c.expected)} (exit ${c.expected}), got ${r.status} ${r.error?.code ?? ''} e2fsck=${r.e2fsckExit}`,
          ),
      ].join('\n'),
    );
    for (const { c, r } of rows.filter(({ c }) =>
      ['f_zero_super', 'f_badroot', 'f_journal'].includes(c.name),
    ))
      console.log(`${c.name}: ${r.status}\n    ${r.problems.slice(0, 4).join('\n    ')}`);
    expect(modified.map((x) => x.c.name)).toEqual([]);
    expect(agree.length / rows.length).toBeGreaterThanOrEqual(0.97);
    // every corrupt verdict says what a repair would do, in words, not e2fsck's dialogue
    // clean means no problems (what e2fsck did anyway, e.g. a journal replay, is a warning)
    for (const { r } of rows.filter(({ r }) => r.status === 'clean')) expect(r.problems).toEqual([]);
    expect(rows.find(({ c }) => c.name === 'f_journal')?.r.warnings.join('\n')).toMatch(/recovering journal/);
    for (const { r } of rows.filter(({ r }) => r.status === 'corrupt')) {
      expect(r.problems.length, r.image).toBeGreaterThan(0);
      for (const p of r.problems) expect(p).not.toMatch(/\? (yes|no)$/);
    }
  }, 1_800_000);

  it('info identifies every image, never "unknown format"; a damaged primary superblock is said so', async () => {
    const rows = await eachInParallel(corpus.cases, async (c) => {
      const img = await unpack(c, 'info');
      const r = await imageInfo(img).then(
        (i) => ({ ok: true as const, i }),
        (e) => ({ ok: false as const, code: (e as { code?: string }).code, message: (e as Error).message }),
      );
      await rm(img, { force: true });
      return { c, r };
    });
    const failed = rows.filter(({ r }) => !r.ok);
    const damaged = rows
      .filter(({ r }) => r.ok && r.i.superblock?.primary === 'damaged')
      .map(({ c }) => c.name);
    console.log(
      [
        `info: ${rows.length - failed.length}/${rows.length} described; primary superblock damaged (read from a backup): ${damaged.join(', ')}`,
        ...failed.map(({ c, r }) => `  info failed ${c.name}: ${r.ok ? '' : `${r.code} ${r.message}`}`),
      ].join('\n'),
    );
    // every failure is a damage verdict (a superblock nothing can read), never "unknown format"
    expect(failed.filter(({ r }) => !r.ok && r.code !== 'E_INTEGRITY').map(({ c }) => c.name)).toEqual([]);
    expect(failed.length).toBeLessThanOrEqual(1);
    expect(damaged).toContain('f_zero_super');
    // the clean images are clean, the damaged ones never say clean: true when their superblock is
    for (const { c, r } of rows)
      if (r.ok && r.i.superblock?.primary === 'damaged') expect(r.i.clean, c.name).toBe(false);
  }, 1_800_000);

  it('check --repair leaves >= 97% of the repairable images clean', async () => {
    // repairable: e2fsprogs fixes them in one run (expect.1 reports damage, expect.2 is clean)
    const repairable = corpus.cases.filter((c) => c.expected > 0 && c.expected < 8 && c.expectedSecond === 0);
    expect(repairable.length).toBeGreaterThan(100);
    const rows = await eachInParallel(repairable, async (c) => {
      const img = await unpack(c, 'rw');
      const r: CheckResult = await checkImage(img, { repair: true, timeoutSeconds: BOUND });
      const after = await execa('e2fsck', ['-fn', img], { reject: false, timeout: BOUND * 1000 });
      await rm(img, { force: true });
      return { c, r, fsck: after.exitCode };
    });
    const clean = rows.filter(({ r, fsck }) => r.status === 'repaired' && fsck === 0);
    console.log(
      [
        `check --repair: ${clean.length}/${rows.length} repairable images repaired and clean by e2fsck -fn (${pct(clean.length, rows.length)})`,
        ...rows
          .filter((x) => !clean.includes(x))
          .map(
            ({ c, r, fsck }) =>
              `  not repaired ${c.name}: ${r.status} ${r.error?.code ?? ''} ${r.error?.message ?? ''}; e2fsck -fn exit ${fsck}`,
          ),
      ].join('\n'),
    );
    expect(clean.length / rows.length).toBeGreaterThanOrEqual(0.97);
  }, 1_800_000);
});
