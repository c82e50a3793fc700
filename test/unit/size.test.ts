import { describe, expect, it } from 'vitest';
import { MAX_IMAGE_BYTES, MIN_IMAGE_BYTES, MiB, parseSize, sizeSchema } from '../../packages/core/src/size';

describe('parseSize', () => {
  it.each([
    ['256', 256 * MiB],
    ['512M', 512 * MiB],
    ['512m', 512 * MiB],
    ['4G', 4096 * MiB],
    ['4GiB', 4096 * MiB],
    ['4gb', 4096 * MiB],
    ['1T', 1024 * 1024 * MiB],
    ['65536K', 64 * MiB],
    ['1.5G', 1536 * MiB],
    ['0.5T', 512 * 1024 * MiB],
  ])('%s -> %d bytes', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it.each(['', 'abc', '1..5G', '-1', '1.G', '4 X', '100B', 'G', '99999999999999999999T'])(
    'rejects %j',
    (text) => {
      expect(parseSize(text)).toBeNull();
    },
  );

  it('enforces the 64 MiB minimum and 4 KiB alignment in the schema', () => {
    expect(sizeSchema.safeParse('64').data).toBe(MIN_IMAGE_BYTES);
    expect(sizeSchema.safeParse('63').success).toBe(false);
    expect(sizeSchema.safeParse('65537K').success).toBe(false);
  });

  it('takes decimals that come to whole MiB and names what it refuses', () => {
    expect(sizeSchema.safeParse('1.5G').data).toBe(1536 * MiB);
    expect(sizeSchema.safeParse('2.25G').data).toBe(2304 * MiB);
    const frac = sizeSchema.safeParse('1.3G');
    expect(frac.success).toBe(false);
    expect(frac.error?.issues[0]?.message).toMatch(/1331\.20 MiB.*whole number of MiB/);
  });

  it('refuses sizes beyond what ext3 holds, with the limit in the message', () => {
    const r = sizeSchema.safeParse('100T');
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]?.message).toMatch(/ext3.*16 TiB/);
    expect(sizeSchema.safeParse('16T').success).toBe(false);
    expect(sizeSchema.safeParse('16383G').data).toBe(16383 * 1024 * MiB);
    expect(16383 * 1024 * MiB).toBeLessThanOrEqual(MAX_IMAGE_BYTES);
  });
});
