import { z } from 'zod';

export const MiB = 1024 * 1024;
/** Apptainer refuses overlays smaller than this. */
export const MIN_IMAGE_BYTES = 64 * MiB;

const UNITS: Record<string, number> = { K: 1024, M: MiB, G: 1024 * MiB, T: 1024 * 1024 * MiB };
/** ext3 without the 64bit feature addresses 2^32 blocks of 4 KiB: 16 TiB less one block. */
export const MAX_IMAGE_BYTES = 2 ** 44 - 4096;

/**
 * Parse `256` (MiB), `512M`, `4G`, `1.5G` with K/M/G/T and optional `iB`/`B`, any case.
 * Returns bytes (fractional when a decimal does not come to whole bytes), or null when the text
 * is not a size.
 */
export function parseSize(text: string): number | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt])?(i?b)?\s*$/i.exec(text);
  if (!m) return null;
  const n = Number(m[1]);
  if (m[3] && !m[2]) return null; // "100B" alone is ambiguous: refuse
  const bytes = n * (m[2] ? UNITS[m[2].toUpperCase()]! : MiB);
  return Number.isFinite(bytes) && bytes <= Number.MAX_SAFE_INTEGER ? bytes : null;
}

/** A zod field for image sizes: the user's text in, bytes out, within what ext3 and Apptainer take. */
export const sizeSchema = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const fail = (message: string) => {
    ctx.addIssue({ code: 'custom', message });
    return z.NEVER;
  };
  const text = String(v);
  const bytes = parseSize(text);
  if (bytes === null) return fail(`"${v}" is not a size: use MiB (256) or a unit (512M, 4G, 1.5G)`);
  // a decimal must come to whole MiB (1.5G = 1536 MiB): block counts are whole, and so is what we show
  if (text.includes('.') && bytes % MiB !== 0)
    return fail(`${v} is ${(bytes / MiB).toFixed(2)} MiB: give a size that is a whole number of MiB`);
  if (bytes < MIN_IMAGE_BYTES) return fail(`${v} is below the 64 MiB minimum Apptainer accepts`);
  if (bytes > MAX_IMAGE_BYTES)
    return fail(`${v} is above what an ext3 image can hold (16 TiB less 4 KiB, e.g. 16383G)`);
  if (bytes % 4096 !== 0) return fail(`${v} is not a whole number of 4 KiB blocks`);
  return bytes;
});

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}
