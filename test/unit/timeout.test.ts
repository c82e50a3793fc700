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
