/**
 * Every failure the core reports is an OverlayError with a stable code. The table below is the
 * single source for the docs (docs/errors.md is generated from it) and for the CLI's exit codes.
 */
export const ERROR_CODES = {
  E_INVALID_INPUT: 'An input failed validation (size, path, option combination). Nothing was touched.',
  E_NOT_FOUND: 'A file the operation needs does not exist.',
  E_EXISTS: 'The output already exists; pass --force to replace it.',
  E_UNKNOWN_FORMAT: 'The file is neither an ext2/3/4 image nor a SquashFS image.',
  E_NOT_EXT3: 'An Apptainer ext3 overlay is needed, but the file is SquashFS, ext4 or ext2 without journal.',
  E_LOCKED: 'The image is in use (by Apptainer or overlayctl); retry later or pass --wait.',
  E_SHRINK_TOO_SMALL: 'The requested size is smaller than what the filesystem needs.',
  E_INTEGRITY: 'e2fsck found errors (or a digest did not match) that were not repaired.',
  E_TOOL_MISSING: 'An external program is not installed; the message names the package.',
  E_TOOL_FAILED: 'An external program failed; the message carries the end of its stderr.',
  E_TIMEOUT: 'An external program exceeded its time bound; it was killed and nothing was replaced.',
  E_RUNTIME_MISSING: 'Neither apptainer nor singularity is installed.',
  E_RUNTIME_FAILED: 'Apptainer could not start the container (host setup problem); see the hint.',
  E_BUILD_FAILED: 'The build command exited non-zero; the image was left as it was.',
  E_CACHE: 'A cache store could not be read or written.',
  E_NO_SPACE: 'The disk is full; nothing was replaced.',
  E_INTERNAL: 'An unexpected internal error; please report it with OVERLAYCTL_DEBUG=1 output.',
  E_UNSAFE_PATH: 'A path is unsafe (symlink planted in a shared directory, world-writable store, escape).',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

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
  if (code === 'ENOSPC' || code === 'EDQUOT')
    return new OverlayError('E_NO_SPACE', `${path}: no space left on device`, { cause: e });
  return e;
}
