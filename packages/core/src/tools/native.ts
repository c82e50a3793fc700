import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

// Where the native koffi module comes from: next to a bundled action (koffi.node beside the
// .mjs), embedded in the single-file CLI bundle (written once to a cache dir), or the koffi
// package in a source checkout.
declare const __OVERLAY_KOFFI_B64__: string | undefined;

function embeddedKoffiPath(): string | null {
  if (typeof __OVERLAY_KOFFI_B64__ !== 'string') return null;
  const data = Buffer.from(__OVERLAY_KOFFI_B64__, 'base64');
  const name = `koffi-${createHash('sha256').update(data).digest('hex').slice(0, 16)}.node`;
  const dirs = [join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'overlay-action'), tmpdir()];
  for (const dir of dirs) {
    const file = join(dir, name);
    try {
      if (existsSync(file)) return file;
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
