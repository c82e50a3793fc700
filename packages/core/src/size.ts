import { z } from 'zod';

export const MiB = 1024 * 1024;
/** Apptainer refuses overlays smaller than this. */
export const MIN_IMAGE_BYTES = 64 * MiB;

const UNITS: Record<string, number> = { K: 1024, M: MiB, G: 1024 * MiB, T: 1024 * 1024 * MiB };

/**
 * Parse `256` (MiB), `512M`, `4G`, `1.5`-free integers with K/M/G/T and optional `iB`/`B`, any case.
 * Returns bytes, or null when the text is not a size.
 */
export function parseSize(text: string): number | null {
  const m = /^\s*(\d+)\s*([kmgt])?(i?b)?\s*$/i.exec(text);
  if (!m) return null;
  const n = Number(m[1]);
  if (m[3] && !m[2]) return null; // "100B" alone is ambiguous: refuse
  const bytes = n * (m[2] ? UNITS[m[2].toUpperCase()]! : MiB);
  return Number.isSafeInteger(bytes) ? bytes : null;
}

/** A zod field for image sizes: the user's text in, bytes out, with Apptainer's minimum. */
export const sizeSchema = z.union([z.string(), z.number().int()]).transform((v, ctx) => {
  const bytes = parseSize(String(v));
  if (bytes === null) {
    ctx.addIssue({ code: 'custom', message: `"${v}" is not a size: use MiB (256) or a unit (512M, 4G)` });
    return z.NEVER;
  }
  if (bytes < MIN_IMAGE_BYTES) {
    ctx.addIssue({ code: 'custom', message: `${v} is below the 64 MiB minimum Apptainer accepts` });
    return z.NEVER;
  }
  if (bytes % 4096 !== 0) {
    ctx.addIssue({ code: 'custom', message: `${v} is not a whole number of 4 KiB blocks` });
    return z.NEVER;
  }
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
