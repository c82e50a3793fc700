/**
 * Every failure the core reports is an OverlayError with a stable code. This table is the single
 * source for the docs (docs/errors.md), the CLI's exit statuses and the workflow front ends
 * (Snakemake, CWL and Nextflow retry on EXIT_STATUS.retryable). The statuses follow sysexits(3)
 * where one fits, so they stay clear of the 0/1 most commands use:
 *   2 fix the input · 65 damaged data · 69 host setup · 70 internal · 74 I/O · 75 try again later
 *   · 77 permission denied (registry credentials).
 */
export const ERROR_CODES = {
  E_INVALID_INPUT: {
    exit: 2,
    meaning: 'An input failed validation (size, path, option combination). Nothing was touched.',
  },
  E_NOT_FOUND: { exit: 2, meaning: 'A file the operation needs does not exist.' },
  E_EXISTS: { exit: 2, meaning: 'The output already exists; pass --force to replace it.' },
  E_UNKNOWN_FORMAT: { exit: 2, meaning: 'The file is neither an ext2/3/4 image nor a SquashFS image.' },
  E_NOT_EXT3: {
    exit: 2,
    meaning: 'An Apptainer ext3 overlay is needed, but the file is SquashFS, ext4 or ext2 without journal.',
  },
  E_NOT_SQUASHFS: {
    exit: 2,
    meaning: 'A SquashFS layer is needed, but the file is an ext2/3/4 image (commit it into a layer first).',
  },
  E_LOCKED: {
    exit: 75,
    meaning: 'The image is in use (by Apptainer or overlayctl); retry later or pass --wait.',
  },
  E_SHRINK_TOO_SMALL: { exit: 2, meaning: 'The requested size is smaller than what the filesystem needs.' },
  E_INTEGRITY: {
    exit: 65,
    meaning: 'e2fsck found errors (or a digest did not match) that were not repaired.',
  },
  E_TRUNCATED: {
    exit: 65,
    meaning: 'The image file is shorter than its filesystem says (interrupted copy); both sizes are given.',
  },
  E_TOOL_MISSING: {
    exit: 69,
    meaning: 'An external program is not installed; the message names the package.',
  },
  E_TOOL_FAILED: {
    exit: 74,
    meaning: 'An external program failed; the message carries the end of its stderr.',
  },
  E_TIMEOUT: {
    exit: 75,
    meaning: 'An external program exceeded its time bound; it was killed and nothing was replaced.',
  },
  E_RUNTIME_MISSING: { exit: 69, meaning: 'Neither apptainer nor singularity is installed.' },
  E_RUNTIME_FAILED: {
    exit: 69,
    meaning: 'Apptainer could not start the container (host setup problem); see the hint.',
  },
  E_BUILD_FAILED: { exit: 1, meaning: 'The build command exited non-zero; the image was left as it was.' },
  E_CACHE: { exit: 74, meaning: 'A cache store could not be read or written.' },
  E_NO_SPACE: { exit: 74, meaning: 'The disk is full; nothing was replaced.' },
  E_INTERNAL: {
    exit: 70,
    meaning: 'An unexpected internal error; please report it with OVERLAYCTL_DEBUG=1 output.',
  },
  E_REGISTRY: {
    exit: 75,
    meaning: 'An OCI registry failed (5xx, dropped connection, refused request) after bounded retries.',
  },
  E_AUTH: { exit: 77, meaning: 'An OCI registry refused the credentials (or none were found for it).' },
  E_WRONG_ARTIFACT: {
    exit: 2,
    meaning: 'The registry artifact is not the kind expected (image, layer, cache entry).',
  },
  E_PERMISSION: {
    exit: 77,
    meaning: 'This user may not read or write a file or directory the operation needs; the message names it.',
  },
  E_UNSAFE_PATH: {
    exit: 2,
    meaning: 'A path is unsafe (symlink planted in a shared directory, world-writable store, escape).',
  },
} as const satisfies Record<string, { exit: number; meaning: string }>;

/** Exit statuses that are not an error code's: the contract every front end reads. */
export const EXIT_STATUS = {
  ok: 0,
  /** check: at least one image is not clean (corrupt) — the report says which and why. */
  findings: 1,
  /** Temporary: the image is locked or a tool timed out; retrying later may succeed. */
  retryable: 75,
  /** exec/lock: overlayctl itself failed (the code is on stderr / in the JSON); any other status is the command's. */
  execOwnFailure: 125,
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

/** The CLI's exit status for a failure with this code (exec/lock use EXIT_STATUS.execOwnFailure). */
export function exitStatusFor(code: ErrorCode): number {
  return ERROR_CODES[code].exit;
}

export class OverlayError extends Error {
  readonly code: ErrorCode;
  readonly hint?: string;
  readonly details?: Record<string, unknown>;

  constructor(
    code: ErrorCode,
    message: string,
    opts: { hint?: string; cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'OverlayError';
    this.code = code;
    this.hint = opts.hint;
    this.details = opts.details;
  }

  toJSON(): { code: ErrorCode; message: string; hint?: string; details?: Record<string, unknown> } {
    return { code: this.code, message: this.message, hint: this.hint, details: this.details };
  }
}

export function isOverlayError(e: unknown, code?: ErrorCode): e is OverlayError {
  return e instanceof OverlayError && (code === undefined || e.code === code);
}

/** Map Node fs errors to stable codes; everything else passes through. */
export function fromFsError(e: unknown, path: string): unknown {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT') return new OverlayError('E_NOT_FOUND', `${path}: no such file`, { cause: e });
  if (code === 'EEXIST') return new OverlayError('E_EXISTS', `${path}: already exists`, { cause: e });
  if (code === 'EFBIG')
    return new OverlayError(
      'E_INVALID_INPUT',
      `${path}: the size is larger than the host allows for one file (its filesystem, or ulimit -f)`,
      {
        hint: 'choose a smaller size, or put the image on a filesystem that takes files this large',
        cause: e,
      },
    );
  if (code === 'EACCES' || code === 'EPERM')
    return new OverlayError('E_PERMISSION', `${path}: permission denied for this user`, {
      hint: 'run as the owner of the file (or its directory), or change its permissions',
      cause: e,
    });
  if (code === 'ENOSPC' || code === 'EDQUOT')
    return new OverlayError('E_NO_SPACE', `${path}: no space left on device`, { cause: e });
  return e;
}
