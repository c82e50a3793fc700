import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { arch, platform } from 'node:os';
import { resolve } from 'node:path';
import { glob } from 'tinyglobby';
import { OverlayError } from '../errors';
import { CACHE_FORMAT_VERSION } from './pack';

export interface KeyInputs {
  /** User prefix, e.g. "conda-env". */
  prefix: string;
  /** Globs whose files' content goes into the key (environment.yml, a def file, the build script). */
  files: string[];
  cwd?: string;
  /** What is fixed when the filesystem is made (the inode ratio): a fallback never crosses it. */
  fixed?: Record<string, unknown>;
  /** The rest of what determines the image: size, owner, base reference, build command. */
  options: Record<string, unknown>;
}

export interface DerivedKey {
  key: string;
  restoreKeys: string[];
  files: string[];
}

const sha = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');

function stable(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value ?? null);
  if (Array.isArray(value)) return `[${value.map(stable).join(',')}]`;
  return `{${Object.keys(value)
    .sort()
    .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
    .map((k) => `${JSON.stringify(k)}:${stable((value as Record<string, unknown>)[k])}`)
    .join(',')}}`;
}

/**
 * `PREFIX-OS-ARCH-vN-FIXED-OPTIONS-FILES`: the hashes go from least to most likely to change, so
 * the restore-keys fall back to "same options, other files" and then to "same fixed settings"
 * (an image of another size or owner can be reconciled; one of another inode ratio cannot).
 * GitHub's limits: at most 512 characters, no commas.
 */
export async function deriveKey(inputs: KeyInputs): Promise<DerivedKey> {
  const prefix = inputs.prefix.trim().replace(/[,\s]+/g, '-') || 'overlay';
  if (prefix.length > 400)
    throw new OverlayError('E_INVALID_INPUT', 'cache key prefix is longer than 400 characters');
  const cwd = inputs.cwd ?? process.cwd();
  const files = inputs.files.length
    ? (await glob(inputs.files, { cwd, dot: true, onlyFiles: true })).sort()
    : [];
  if (inputs.files.length && files.length === 0) {
    throw new OverlayError('E_NOT_FOUND', `no file matches ${inputs.files.join(', ')}`);
  }
  const fileHash = createHash('sha256');
  for (const f of files) fileHash.update(`${f}\0${sha(await readFile(resolve(cwd, f)))}\n`);
  const head = `${prefix}-${platform()}-${arch()}-v${CACHE_FORMAT_VERSION}-${sha(stable(inputs.fixed ?? {})).slice(0, 8)}`;
  const optionsHash = sha(stable(inputs.options)).slice(0, 16);
  const key = `${head}-${optionsHash}-${fileHash.digest('hex').slice(0, 16)}`;
  return { key, restoreKeys: [`${head}-${optionsHash}-`, `${head}-`], files };
}

export function validateKey(key: string): string {
  if (!key || key.length > 512 || key.includes(',')) {
    throw new OverlayError('E_INVALID_INPUT', 'a cache key must be 1-512 characters without commas');
  }
  return key;
}
