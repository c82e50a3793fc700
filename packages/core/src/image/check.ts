import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { isOverlayError, OverlayError } from '../errors';
import { removeStaleTemps, replaceAtomically } from '../fs/atomic';
import { scratchDir } from '../fs/scratch';
import { acquireLock, type Lock } from '../lock/ofd';
import { runTool, toolTimeoutSeconds } from '../tools/run';
import { copyImageFile } from './copy';
import { statInImage } from './debugfs';
import {
  apptainerExt3Problems,
  damagedSuperblockMessage,
  type FormatInfo,
  hasErrorFlag,
  type ImageFormat,
  isSifFile,
  needsRecovery,
  probeImage,
  requireExt3,
} from './format';
import { backupSuperblockArgs, type SuperblockLocation } from './superblock';
import { findTruncation, type Truncation, truncationMessage } from './truncation';

/**
 * The filesystem verdict: clean, repaired, corrupt (damage found, repaired or not), locked (in
 * use, not examined) or error (could not be examined at all: missing, unreadable, not an ext
 * filesystem, a tool failed or exceeded its time bound). Damage is never `error`.
 */
export type CheckStatus = 'clean' | 'repaired' | 'corrupt' | 'locked' | 'error';

export interface CheckResult {
  image: string;
  status: CheckStatus;
  format: ImageFormat | null;
  /** What a repair does (or did), one line per finding, e.g. "Root inode is not a directory (repair: clear)". */
  problems: string[];
  /** Exit status of e2fsck -fy on the copy (0 clean, 1/2 fixed, 4 left uncorrected, 8+ failed). */
  e2fsckExit: number | null;
  /** How the check was made: on a metadata-only copy (e2image -r) or a full sparse copy. */
  method: 'metadata-copy' | 'full-copy' | null;
  /** ext only: a damaged primary superblock, and the backup superblock that identifies the filesystem. */
  superblock: { primary: 'ok' | 'damaged'; backup: SuperblockLocation | null } | null;
  /** The file is shorter than its filesystem says (both sizes). */
  truncated: Truncation | null;
  /** Whether Apptainer can use it as a writable overlay: a verdict of its own, apart from `status`. */
  apptainerCompatible: boolean | null;
  apptainerProblems: string[];
  /** Non-fatal findings, e.g. non-portable whiteout markers. */
  warnings: string[];
  error?: { code: string; message: string };
  durationMs: number;
}

export interface CheckOptions {
  repair?: boolean;
  /** The caller already holds a lock on the image. */
  lockHeld?: boolean;
  /** Bound on each e2fsck/e2image/copy run, seconds (default: e2fsck's, OVERLAY_TOOL_TIMEOUT). */
  timeoutSeconds?: number;
  /** Phase lines for a long check (copy, e2fsck, repair). */
  onProgress?: (line: string) => void;
}

// e2fsck -y (-n) prints each problem, then the question it answered: "…  Clear? yes" (no),
// sometimes on a line of its own after the description.
const QUESTION = /^(.*)\? (?:yes|no)$/;
const DONE = /^(.*?)\s*(FIXED|CLEARED|IGNORED|RELOCATED|SALVAGED)\.$/;
const NOTE =
  /recovering journal|^Clearing orphaned inode|^Truncating orphaned inode|journal has been deleted/i;
const MAX_PROBLEMS = 20;
/** e2fsck failing for reasons of the host, not of the filesystem. */
const HOST_FAILURE =
  /No space left on device|Cannot allocate memory|Permission denied|Read-only file system/i;

/**
 * Turn `e2fsck -fy` output into what a repair does, one line each ("X (repair: clear)"), instead
 * of e2fsck's dialogue ("X.  Clear? yes"). `copy` (the name e2fsck printed) becomes `path`.
 */
export function describeRepairs(output: string, copy: string, path: string): string[] {
  const out: string[] = [];
  let pending: string[] = [];
  const clean = (t: string) =>
    t
      .split(copy)
      .join(path)
      .replace(/\s+/g, ' ')
      .replace(/[.:]\s*$/, '')
      .trim();
  // what e2fsck says without asking (e.g. journal superblock fields it rewrites) is a finding too
  const flush = () => {
    if (pending.length) out.push(clean(pending.join(' ')));
    pending = [];
  };
  for (const raw of `${output}\n`.split('\n')) {
    const line = raw.trim();
    if (!line) flush();
    if (!line || /^Pass \d|^e2fsck \d|FILE SYSTEM WAS MODIFIED|files \(.*non-contiguous\)/.test(line))
      continue;
    const q = QUESTION.exec(line);
    const d = q ? null : DONE.exec(line);
    if (q) {
      // "Description.  Question" on one line, or the question alone after its description
      const cut = q[1]!.lastIndexOf('.  ');
      const text = cut >= 0 ? q[1]!.slice(0, cut) : pending.join(' ');
      const action = (cut >= 0 ? q[1]!.slice(cut + 3) : q[1]!).trim();
      out.push(`${clean(text) || 'e2fsck'} (repair: ${action.charAt(0).toLowerCase()}${action.slice(1)})`);
      pending = [];
    } else if (d) {
      out.push(`${clean(d[1]! || pending.join(' '))} (repair: ${d[2]!.toLowerCase()})`);
      pending = [];
    } else if (NOTE.test(line)) {
      out.push(clean(line));
      pending = [];
    } else pending.push(line);
  }
  const unique = [...new Set(out)];
  return unique.length > MAX_PROBLEMS
    ? [...unique.slice(0, MAX_PROBLEMS), `… and ${unique.length - MAX_PROBLEMS} more`]
    : unique;
}

/**
 * `e2fsck -fy` on a throwaway copy, never on the image: `e2fsck -fn` is not an accurate read-only
 * check (it disagrees with a real repair on journal replay, orphan lists and flags it ignores with
 * -n, and can spin forever). The copy holds only metadata (e2image -r, sparse); a journal that
 * needs recovery (replay writes data blocks) or an image e2image cannot read gets a full sparse
 * copy instead. A damaged primary superblock is read through its backup (-b/-B).
 */
async function fsckOnCopy(
  image: string,
  probe: FormatInfo,
  timeoutSeconds: number,
  progress: (line: string) => void,
): Promise<{ exit: number; output: string; copy: string; method: NonNullable<CheckResult['method']> }> {
  const dir = await scratchDir('overlay-check');
  const copy = join(dir, 'copy.img');
  const sb = backupSuperblockArgs(probe.superblock?.backup);
  try {
    let method: CheckResult['method'] = 'metadata-copy';
    try {
      if (needsRecovery(probe.ext!)) throw new Error('journal replay needs the data blocks');
      progress(`${image}: metadata copy (e2image -r)`);
      await runTool('e2image', ['-r', ...sb, image, copy], { timeoutSeconds });
    } catch (e) {
      if (isOverlayError(e, 'E_TIMEOUT') || isOverlayError(e, 'E_NO_SPACE')) throw e;
      method = 'full-copy';
      await rm(copy, { force: true });
      progress(`${image}: full sparse copy (the metadata could not be read alone)`);
      await runTool('cp', ['--sparse=always', '--', image, copy], { timeoutSeconds });
    }
    progress(`${image}: e2fsck -fy on the copy`);
    const r = await runTool('e2fsck', ['-fy', ...sb, copy], {
      okExitCodes: [1, 2, 4, 8, 12, 16, 32, 128],
      timeoutSeconds,
    });
    return { exit: r.exitCode, output: `${r.stdout}\n${r.stderr}`, copy, method };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Repair a full copy of the image and rename it into place only when it then passes `e2fsck -fn`.
 * Some damage takes e2fsck more than one run (e2fsprogs' own tests show it), so up to three.
 */
async function repairInPlace(
  path: string,
  probe: FormatInfo,
  timeoutSeconds: number,
  progress: (line: string) => void,
): Promise<void> {
  await replaceAtomically(path, async (tmp) => {
    progress(`${path}: repair: copying the image`);
    await copyImageFile(path, tmp);
    let sb = backupSuperblockArgs(probe.superblock?.backup);
    let last = -1;
    for (let run = 0; run < 3; run++) {
      progress(`${path}: repair: e2fsck -fy on the copy${run ? ` (run ${run + 1})` : ''}`);
      const fix = await runTool('e2fsck', ['-fy', ...sb, tmp], { okExitCodes: [1, 2, 4, 8], timeoutSeconds });
      if (fix.exitCode >= 8)
        throw new OverlayError('E_INTEGRITY', `e2fsck could not repair ${path} (exit ${fix.exitCode})`);
      sb = []; // the first run wrote the primary superblock back
      last = (await runTool('e2fsck', ['-fn', tmp], { okExitCodes: [1, 2, 4, 8], timeoutSeconds })).exitCode;
      if (last === 0) return;
    }
    throw new OverlayError('E_INTEGRITY', `e2fsck could not repair ${path} (still not clean: exit ${last})`);
  });
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

/** Apptainer's view (features, journal, upper/), read only once the filesystem is known sound. */
async function apptainerVerdict(path: string, probe: FormatInfo): Promise<string[]> {
  const problems = apptainerExt3Problems(probe.ext!);
  const upper = await statInImage(path, '/upper').catch(() => null);
  if (!upper) problems.push('no upper/ directory at the root');
  return problems;
}

/** A CheckResult with nothing found yet but what `r` says (for every producer of one). */
export function checkResult(
  image: string,
  started: number,
  r: Partial<CheckResult> & { status: CheckStatus },
): CheckResult {
  return {
    image,
    format: null,
    problems: [],
    e2fsckExit: null,
    method: null,
    superblock: null,
    truncated: null,
    apptainerCompatible: null,
    apptainerProblems: [],
    warnings: [],
    ...r,
    durationMs: Date.now() - started,
  };
}

/**
 * Check one ext2/3/4 image; with `repair`, fix it crash-safely (repair a full sparse copy, rename
 * it into place only when it then checks clean). Read-only without `repair`: the image is only
 * read (by e2image or cp), every tool run is time-bounded. Never waits on a lock: an image in use
 * is `locked`. Never throws: every outcome is a status, so a nightly batch reports every image.
 */
export async function checkImage(path: string, opts: CheckOptions = {}): Promise<CheckResult> {
  // the overlay partition inside a SIF: checked (and repaired) through the SIF module
  if (await isSifFile(path)) return (await import('../sif/overlay')).checkSifOverlay(path, opts);
  const started = Date.now();
  const timeoutSeconds = opts.timeoutSeconds ?? toolTimeoutSeconds('e2fsck');
  let probe: FormatInfo | undefined;
  const result = (r: Partial<CheckResult> & { status: CheckStatus }): CheckResult =>
    checkResult(path, started, {
      format: probe?.format ?? null,
      superblock: probe?.superblock ?? null,
      truncated: probe ? findTruncation(probe) : null,
      ...r,
    });
  let lock: Lock | undefined;
  try {
    await removeStaleTemps(path); // what a killed operation left behind
    probe = await probeImage(path);
    const truncated = findTruncation(probe);
    if (truncated) {
      // what is missing is gone: no repair brings it back, and e2fsck on it would only guess
      const message = truncationMessage(path, truncated);
      return result({
        status: 'corrupt',
        problems: [message],
        apptainerCompatible: false,
        apptainerProblems: ['the file is truncated'],
        error: opts.repair ? { code: 'E_TRUNCATED', message: `${message}; not repairable` } : undefined,
      });
    }
    if (probe.format === 'squashfs')
      throw new OverlayError(
        'E_NOT_EXT3',
        `${path} is a SquashFS layer (read-only); check examines ext2/3/4`,
      );
    try {
      if (!opts.lockHeld) lock = await acquireLock(path, opts.repair ? 'exclusive' : 'shared');
    } catch (e) {
      if (isOverlayError(e, 'E_LOCKED'))
        return result({ status: 'locked', error: { code: e.code, message: e.message } });
      throw e;
    }
    const damaged = probe.superblock?.primary === 'damaged';
    const first = await fsckOnCopy(path, probe, timeoutSeconds, opts.onProgress ?? (() => {}));
    const tail = first.output.trim().split('\n').slice(-3).join(' ').split(first.copy).join(path);
    // e2fsck gave up (exit 8, or 12 = 8|4) on a readable copy of an identified filesystem: that
    // is damage it cannot get past (garbage group descriptors, say), unless the host failed it;
    // 16 (usage), 32 (cancelled), 128 (library) are never the filesystem's doing
    const gaveUp = first.exit === 8 || first.exit === 12;
    if (first.exit >= 8 && (!gaveUp || HOST_FAILURE.test(first.output)))
      throw new OverlayError(
        'E_TOOL_FAILED',
        `e2fsck could not examine the image (exit ${first.exit}): ${tail}`,
      );
    const problems = describeRepairs(first.output, first.copy, path);
    // damage e2fsck could not (or may not) repair: the verdict, with why when a repair was asked
    const unrepaired = (error?: CheckResult['error']) =>
      result({
        status: 'corrupt',
        problems,
        e2fsckExit: first.exit,
        method: first.method,
        apptainerCompatible: false,
        apptainerProblems: ['the filesystem is damaged'],
        error,
      });
    if (damaged) problems.unshift(`${damagedSuperblockMessage(probe)} (repair: restore it from the backup)`);
    if (first.exit === 4) problems.push('e2fsck could not correct everything on the first run');
    if (first.exit >= 8) {
      problems.push(`e2fsck cannot repair this filesystem (it stopped with exit ${first.exit}: ${tail})`);
      return unrepaired(
        opts.repair
          ? {
              code: 'E_INTEGRITY',
              message: `e2fsck cannot repair ${path}; restore it from a cache or a backup`,
            }
          : undefined,
      );
    }
    const corrupt = damaged || first.exit !== 0;
    if (!corrupt || !opts.repair) {
      const apptainerProblems = corrupt ? ['the filesystem is damaged'] : await apptainerVerdict(path, probe);
      // clean, e2fsck may still have had things to say (a journal to replay after a crash, as
      // any mount would): those are warnings, not problems
      return result({
        status: corrupt ? 'corrupt' : 'clean',
        problems: corrupt ? problems : [],
        e2fsckExit: first.exit,
        method: first.method,
        apptainerCompatible: apptainerProblems.length === 0,
        apptainerProblems,
        warnings: corrupt ? [] : [...problems, ...(await portabilityWarnings(path))],
      });
    }
    try {
      await repairInPlace(path, probe, timeoutSeconds, opts.onProgress ?? (() => {}));
    } catch (e) {
      if (!isOverlayError(e, 'E_INTEGRITY')) throw e;
      return unrepaired({ code: e.code, message: e.message });
    }
    const found = probe.superblock ?? null;
    probe = await probeImage(path);
    const apptainerProblems = await apptainerVerdict(path, probe);
    return result({
      status: 'repaired',
      superblock: found,
      problems,
      e2fsckExit: first.exit,
      method: first.method,
      apptainerCompatible: apptainerProblems.length === 0,
      apptainerProblems,
    });
  } catch (e) {
    const err = isOverlayError(e) ? e : new OverlayError('E_TOOL_FAILED', (e as Error).message);
    const status: CheckStatus = err.code === 'E_INTEGRITY' ? 'corrupt' : 'error';
    const message =
      err.code === 'E_TIMEOUT'
        ? `${err.message}; the check did not finish (the image was not modified)`
        : err.message;
    return result({ status, error: { code: err.code, message } });
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
    refuse(
      `is not clean (e2fsck exit ${r.exitCode})`,
      describeRepairs(`${r.stdout}\n${r.stderr}`, path, path),
    );
}

/** One image's outcome, as the actions name it. */
export type CheckReport = CheckResult;
