import { describe, expect, it } from 'vitest';
import { MIN_IMAGE_BYTES, MiB, parseSize, sizeSchema } from '../../packages/core/src/size';

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
  ])('%s -> %d bytes', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it.each(['', 'abc', '1.5G', '-1', '4 X', '100B', 'G', '99999999999999999999T'])('rejects %j', (text) => {
    expect(parseSize(text)).toBeNull();
  });

  it('enforces the 64 MiB minimum and 4 KiB alignment in the schema', () => {
    expect(sizeSchema.safeParse('64').data).toBe(MIN_IMAGE_BYTES);
    expect(sizeSchema.safeParse('63').success).toBe(false);
    expect(sizeSchema.safeParse('65537K').success).toBe(false);
  });
});
