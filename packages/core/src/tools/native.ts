import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { OverlayError } from '../errors';

// Where the native koffi module comes from: next to a bundled action (koffi.node beside the
// .mjs), embedded in the single-file CLI bundle (written once to a cache dir), or the koffi
// package in a source checkout. The CLI bundle carries it base64-encoded in a comment
// on its last line (scripts/bundle.mjs), not in a string literal: V8 would otherwise build and keep
// a 1.5 MB string on every run, though only a cache miss ever reads it.
declare const __OVERLAY_KOFFI_ID__: string | undefined;

/** The marker that starts the bundle's last line; keep in step with scripts/bundle.mjs. */
export const KOFFI_PAYLOAD_MARKER = '// overlay-koffi-base64 ';

/** The module embedded at the end of this bundle; E_INTEGRITY when it is missing or altered. */
function embeddedPayload(id: string): Buffer {
  const self = fileURLToPath(import.meta.url);
  const text = readFileSync(self, 'latin1');
  const at = text.lastIndexOf(`\n${KOFFI_PAYLOAD_MARKER}${id} `);
  const data =
    at >= 0
      ? Buffer.from(text.slice(at + KOFFI_PAYLOAD_MARKER.length + id.length + 2).trim(), 'base64')
      : null;
  // the name is the hash of the content: a file edited after the build is refused, not loaded
  if (!data || sha16(data) !== id)
    throw new OverlayError(
      'E_INTEGRITY',
      `${self} is damaged: its embedded lock module is missing or altered`,
      {
        hint: 'install overlayctl.mjs again from a build (npm run build)',
      },
    );
  return data;
}

const sha16 = (data: Buffer) => createHash('sha256').update(data).digest('hex').slice(0, 16);

function embeddedKoffiPath(): string | null {
  if (typeof __OVERLAY_KOFFI_ID__ !== 'string') return null;
  const name = `koffi-${__OVERLAY_KOFFI_ID__}.node`;
  const dirs = [join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'overlay-action'), tmpdir()];
  let data: Buffer | undefined;
  for (const dir of dirs) {
    const file = join(dir, name);
    if (existsSync(file)) return file;
    data ??= embeddedPayload(__OVERLAY_KOFFI_ID__);
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const tmp = `${file}.${process.pid}.tmp`;
      writeFileSync(tmp, data, { mode: 0o755, flag: 'wx' });
      renameSync(tmp, file);
      return file;
    } catch {}
  }
  return null;
}

// biome-ignore lint/suspicious/noExplicitAny: koffi's native module is untyped
export function loadKoffi(): any {
  const require = createRequire(import.meta.url);
  const beside = join(dirname(fileURLToPath(import.meta.url)), 'koffi.node');
  if (existsSync(beside)) return require(beside);
  const embedded = embeddedKoffiPath();
  if (embedded) return require(embedded);
  return require('koffi');
}

// biome-ignore lint/suspicious/noExplicitAny: koffi's native module is untyped
let libc: any;
/** libc through koffi, for the few syscalls Node lacks (fcntl OFD locks, lseek SEEK_DATA/SEEK_HOLE). */
// biome-ignore lint/suspicious/noExplicitAny: koffi's native module is untyped
export function nativeLibc(): { koffi: any; lib: any } {
  const koffi = loadKoffi();
  libc ??= koffi.load('libc.so.6');
  return { koffi, lib: libc };
}

// biome-ignore lint/suspicious/noExplicitAny: koffi function handle
let lgetxattrFn: any;
/** The value of one extended attribute of `path` (not following symlinks), or null when absent/unreadable. */
export function readXattr(path: string, name: string): Buffer | null {
  lgetxattrFn ??= nativeLibc().lib.func(
    'long lgetxattr(const char *path, const char *name, void *value, size_t size)',
  );
  const buf = Buffer.alloc(256);
  const n = Number(lgetxattrFn(path, name, buf, buf.length));
  return n >= 0 ? buf.subarray(0, n) : null;
}
