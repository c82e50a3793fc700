import { once } from 'node:events';
import type { Readable, Writable } from 'node:stream';
import { runTool } from '../tools/run';

/**
 * zstd for the cache archive: the zstd program on every core (`-T0`, level 3, checksummed frames),
 * fed and drained through pipes by pack/unpack. (Node 24's in-process zlib zstd was measured as
 * an alternative: no faster here — the pipes are not the bottleneck, hashing and page-cache writes
 * are — and single-threaded, where GitHub's 4-core runners gain from -T0.)
 */
const LEVEL = 3;

export async function zstdVersion(): Promise<string> {
  return (await runTool('zstd', ['--version']).catch(() => ({ stdout: '?' }))).stdout.trim();
}

/** Write with backpressure; fails (never hangs) if the compressor goes away while we wait. */
export async function send(stream: Writable, chunk: Buffer): Promise<void> {
  if (stream.destroyed) throw new Error('the compressor exited early');
  if (stream.write(chunk)) return;
  const ac = new AbortController();
  try {
    await Promise.race([
      once(stream, 'drain', { signal: ac.signal }),
      once(stream, 'close', { signal: ac.signal }).then(() => {
        throw new Error('the compressor exited early');
      }),
    ]);
  } finally {
    ac.abort();
  }
}

/** Compress what `produce` writes (with `send`) into `file`. */
export async function compressTo(file: string, produce: (sink: Writable) => Promise<void>): Promise<void> {
  await runTool('zstd', ['-T0', `-${LEVEL}`, '-q', '-f', '-o', file], {
    stdin: 'pipe',
    timeoutSeconds: 3600,
    use: async (child) => {
      await produce(child.stdin!);
      child.stdin!.end();
    },
  });
}

/** Decompress `file` as a stream for `consume`; the stream is closed whatever happens. */
export async function decompressFrom<T>(file: string, consume: (source: Readable) => Promise<T>): Promise<T> {
  let result: T | undefined;
  await runTool('zstd', ['-d', '-q', '-c', '--', file], {
    timeoutSeconds: 3600,
    use: async (child) => {
      result = await consume(child.stdout!);
    },
  });
  return result as T;
}
