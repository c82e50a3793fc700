import { z } from 'zod';
import { currentOwner, type Owner } from '../image/create';

/** A file path from the user: non-empty, no NUL, no newline (tools and logs can't carry them). */
export const pathSchema = z
  .string()
  .min(1, 'a path is required')
  .refine((p) => !/[\0\n\r]/.test(p), 'paths may not contain NUL or newline characters');

export const idSchema = z
  .number()
  .int()
  .min(0)
  .max(2 ** 32 - 2);

/** Owner selection shared by create, build, chown: caller (default), root (--fakeroot), or uid/gid. */
export const ownerFields = {
  fakeroot: z.boolean().default(false).describe('Make upper/ owned by root (for apptainer --fakeroot)'),
  uid: idSchema.optional().describe('Owner uid of upper/ (with --gid)'),
  gid: idSchema.optional().describe('Owner gid of upper/ (with --uid)'),
};

export function checkOwner(v: { fakeroot: boolean; uid?: number; gid?: number }, ctx: z.RefinementCtx): void {
  if (v.fakeroot && (v.uid !== undefined || v.gid !== undefined)) {
    ctx.addIssue({ code: 'custom', path: ['fakeroot'], message: 'use either fakeroot or uid/gid, not both' });
  }
  if ((v.uid === undefined) !== (v.gid === undefined)) {
    ctx.addIssue({
      code: 'custom',
      path: [v.uid === undefined ? 'uid' : 'gid'],
      message: 'uid and gid go together',
    });
  }
}

export function ownerFrom(v: { fakeroot: boolean; uid?: number; gid?: number }): Owner {
  if (v.fakeroot) return { uid: 0, gid: 0 };
  if (v.uid !== undefined && v.gid !== undefined) return { uid: v.uid, gid: v.gid };
  return currentOwner();
}

/**
 * `--wait SECONDS` of every task that locks an image: defineTask runs the task inside
 * withLockWait, so every lock the task takes (or waits for) honours it, as `lock --wait` does.
 */
export const waitField = z
  .number()
  .min(0)
  .max(86400)
  .optional()
  .describe('Seconds to wait while the image is in use (default: fail at once with E_LOCKED)');

/** The bound on each e2fsck (and copy) run of check and cache verify. */
export const fsckTimeoutField = z
  .number()
  .int()
  .min(1)
  .max(86400)
  .optional()
  .describe(
    'Bound on each e2fsck run, seconds (default 1800 or $OVERLAY_TOOL_TIMEOUT); an image over it is `error`',
  );

/** A directory path inside the container for --create-dir: absolute, no `..`, no quotes. */
export const containerDirSchema = z
  .string()
  .refine((p) => p.startsWith('/') && p.length > 1, 'must be an absolute path such as /opt/env')
  .refine((p) => !p.split('/').some((s) => s === '..' || s === '.'), 'may not contain . or .. components')
  .refine((p) => !/["\0\n\r\\]/.test(p), 'may not contain quotes, backslashes or control characters');
