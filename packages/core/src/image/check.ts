import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isOverlayError, OverlayError } from '../errors';
import { removeStaleTemps, replaceAtomically } from '../fs/atomic';
import { acquireLock, type Lock } from '../lock/ofd';
import { runTool } from '../tools/run';
import { copyImageFile } from './copy';
import { hasErrorFlag, isSifFile, needsRecovery, requireExt3 } from './format';

export type CheckStatus = 'clean' | 'repaired' | 'corrupt' | 'locked' | 'error';

export interface CheckResult {
  path: string;
  status: CheckStatus;
  /** What e2fsck reported (a few lines), empty when clean. */
  problems: string[];
  /** Exit status of e2fsck on the copy (0 clean, 1/2 fixed, 4 left uncorrected, 8+ failed). */
  e2fsckExit: number | null;
  /** How the check was made: on a metadata-only copy (e2image -r) or a full sparse copy. */
  method: 'metadata-copy' | 'full-copy' | null;
  /** Non-fatal findings, e.g. non-portable whiteout markers. */
  warnings: string[];
  error?: { code: string; message: string };
  seconds: number;
}

const PROBLEM_LINE =
  /(error|illegal|invalid|wrong|differences|unattached|deleted|bad|corrupt|fix|clear|count|inode \d+)/i;

function summarize(output: string): string[] {
  return output
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && PROBLEM_LINE.test(l) && !/^Pass \d/.test(l))
    .slice(0, 12);
}

/**
 * `e2fsck -fy` on a throwaway copy, never on the image: `e2fsck -fn` is not an accurate read-only
 * check (journal replay, orphan lists, flags it ignores with -n). The copy holds only metadata
 * (e2image -r, sparse); when e2image cannot read the image (a destroyed primary superblock) the
 * fallback is a full sparse copy.
 */
async function fsckOnCopy(
  image: string,
): Promise<{ exit: number; output: string; method: CheckResult['method'] }> {
  const dir = await mkdtemp(join(tmpdir(), 'overlay-check-'));
  const copy = join(dir, 'copy.img');
  try {
    let method: CheckResult['method'] = 'metadata-copy';
    try {
      await runTool('e2image', ['-r', image, copy], { timeoutSeconds: 600 });
    } catch (e) {
      if (isOverlayError(e, 'E_TIMEOUT') || isOverlayError(e, 'E_NO_SPACE')) throw e;
      method = 'full-copy';
      await rm(copy, { force: true });
      await runTool('cp', ['--sparse=always', image, copy], { timeoutSeconds: 1800 });
    }
    const r = await runTool('e2fsck', ['-fy', copy], { okExitCodes: [1, 2, 4, 8, 12], timeoutSeconds: 1800 });
    return { exit: r.exitCode, output: `${r.stdout}\n${r.stderr}`, method };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function statusFromExit(exit: number): CheckStatus {
  if (exit === 0) return 'clean';
  if (exit === 1 || exit === 2 || exit === 4) return 'corrupt';
  return 'error';
}

/** Images written with --fakeroot by plain Apptainer carry `.wh.*` markers that `:ro` readers ignore. */
async function portabilityWarnings(path: string): Promise<string[]> {
  const { findNonPortableMarkers } = await import('../layer/normalize');
  const m = await findNonPortableMarkers(path).catch(() => ({ count: 0, examples: [] as string[] }));
  return m.count
    ? [
        `${m.count} non-portable deletion markers (e.g. ${m.examples.slice(0, 3).join(', ')}): read-only readers will see deleted files; run overlayctl normalize`,
      ]
    : [];
}

/**
 * Check one image; with `repair`, fix it crash-safely (repair a full sparse copy, rename it into
 * place only when it then checks clean). Never waits on a lock: an image in use is `locked`.
 * Never throws: every outcome is a status, so a nightly batch always reports every image.
 */
export async function checkImage(
  path: string,
  opts: { repair?: boolean /** the caller already holds a lock on the image */; lockHeld?: boolean } = {},
): Promise<CheckResult> {
  // the overlay partition inside a SIF: checked (and repaired) through the SIF module
  if (await isSifFile(path)) return (await import('../sif/overlay')).checkSifOverlay(path, opts);
  const started = Date.now();
  const result = (r: Partial<CheckResult> & { status: CheckStatus }): CheckResult => ({
    path,
    problems: [],
    e2fsckExit: null,
    method: null,
    warnings: [],
    ...r,
    seconds: Math.round((Date.now() - started) / 100) / 10,
  });
  let lock: Lock | undefined;
  try {
    await removeStaleTemps(path); // what a killed operation left behind
    await requireExt3(path);
    try {
      if (!opts.lockHeld) lock = await acquireLock(path, opts.repair ? 'exclusive' : 'shared');
    } catch (e) {
      if (isOverlayError(e, 'E_LOCKED'))
        return result({ status: 'locked', error: { code: e.code, message: e.message } });
      throw e;
    }
    const first = await fsckOnCopy(path);
    const status = statusFromExit(first.exit);
    const problems = summarize(first.output);
    const warnings = status === 'clean' ? await portabilityWarnings(path) : [];
    if (status !== 'corrupt' || !opts.repair) {
      return result({
        warnings,
        status,
        problems,
        e2fsckExit: first.exit,
        method: first.method,
        error:
          status === 'error'
            ? { code: 'E_INTEGRITY', message: `e2fsck could not check the image (exit ${first.exit})` }
            : undefined,
      });
    }
    await replaceAtomically(path, async (tmp) => {
      await copyImageFile(path, tmp);
      await runTool('e2fsck', ['-fy', tmp], { okExitCodes: [1, 2, 4], timeoutSeconds: 1800 });
      const again = await runTool('e2fsck', ['-fn', tmp], {
        okExitCodes: [1, 2, 4, 8],
        timeoutSeconds: 1800,
      });
      if (again.exitCode !== 0) {
        throw new OverlayError('E_INTEGRITY', `e2fsck could not repair ${path} (exit ${again.exitCode})`);
      }
    });
    return result({ status: 'repaired', problems, e2fsckExit: first.exit, method: first.method });
  } catch (e) {
    const err = isOverlayError(e) ? e : new OverlayError('E_TOOL_FAILED', (e as Error).message);
    const status: CheckStatus = err.code === 'E_INTEGRITY' ? 'corrupt' : 'error';
    return result({ status, error: { code: err.code, message: err.message } });
  } finally {
    lock?.release();
  }
}

/**
 * The gate before a read-only mount (`ro,noload`: no journal replay, no orphan processing), where
 * the kernel or fuse2fs sees the image exactly as it is on disk. So the check is e2fsck -fn of
 * the image as it is, which is that same view, in place and without the metadata copy a repair
 * check needs. A journal holding unapplied writes is refused: noload would silently drop them.
 * The caller holds a lock on the image.
 */
export async function requireCleanForReadOnlyMount(path: string): Promise<void> {
  const { ext } = await requireExt3(path);
  const refuse = (why: string, problems: string[] = []) => {
    throw new OverlayError('E_INTEGRITY', `${path} ${why}; run check --repair first`, {
      details: { problems },
    });
  };
  if (needsRecovery(ext!)) refuse('has a journal that needs recovery (a writer crashed)');
  if (hasErrorFlag(ext!)) refuse('is marked as having errors');
  const r = await runTool('e2fsck', ['-fn', path], { okExitCodes: [1, 2, 4, 8, 12], timeoutSeconds: 1800 });
  if (r.exitCode !== 0)
    refuse(`is not clean (e2fsck exit ${r.exitCode})`, summarize(`${r.stdout}\n${r.stderr}`));
}

/** One image's outcome, as the actions name it. */
export type CheckReport = CheckResult;
