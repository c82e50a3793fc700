import { describe, expect, it } from 'vitest';
import { runTool } from '../../packages/core/src/tools/run';

describe('time bounds', () => {
  it('a tool past its bound is killed and reported as E_TIMEOUT', async () => {
    const started = Date.now();
    await expect(runTool('sleep', ['30'], { timeoutSeconds: 1 })).rejects.toMatchObject({
      code: 'E_TIMEOUT',
    });
    expect(Date.now() - started).toBeLessThan(20_000); // killed, not waited for (a hang detector)
  });

  it('OVERLAY_TOOL_TIMEOUT bounds every tool', async () => {
    process.env.OVERLAY_TOOL_TIMEOUT = '1';
    try {
      await expect(runTool('sleep', ['30'])).rejects.toMatchObject({ code: 'E_TIMEOUT' });
    } finally {
      delete process.env.OVERLAY_TOOL_TIMEOUT;
    }
  });
});

describe('streaming through a tool (runTool `use`)', () => {
  it('a consumer that fails stops the tool at once, even with output nobody read', async () => {
    const started = Date.now();
    await expect(
      runTool('cat', ['/dev/zero'], {
        use: async (child) => {
          // read a little, then fail without closing the stream (as a parser failing mid-way does)
          await child.stdout![Symbol.asyncIterator]().next();
          throw new Error('consumer gave up');
        },
      }),
    ).rejects.toMatchObject({ code: 'E_TOOL_FAILED', message: /consumer gave up/ });
    expect(Date.now() - started).toBeLessThan(20_000); // a hang detector, not a speed claim
  });

  it('a tool that fails on its own is the error reported, not the consumer starving', async () => {
    await expect(
      runTool('zstd', ['-d', '-c', '/etc/hostname'], {
        use: async (child) => {
          for await (const _chunk of child.stdout!);
          throw new Error('truncated');
        },
      }),
    ).rejects.toMatchObject({ code: 'E_TOOL_FAILED', message: /zstd failed/ });
  });

  it('a consumer reads everything a tool writes', async () => {
    let bytes = 0;
    await runTool('head', ['-c', '50000000', '/dev/zero'], {
      use: async (child) => {
        for await (const chunk of child.stdout!) bytes += (chunk as Buffer).length;
      },
    });
    expect(bytes).toBe(50_000_000);
  });
});
