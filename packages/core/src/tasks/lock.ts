import { z } from 'zod';
import { OverlayError } from '../errors';
import { withLock } from '../lock/ofd';
import { runTool } from '../tools/run';
import { pathSchema, waitField } from './common';
import { defineTask } from './define';

export const lockTask = defineTask({
  name: 'lock',
  summary: 'Run a command while holding the image lock Apptainer honours (write lock, or --shared)',
  positional: ['image', 'command'],
  input: z.object({
    image: pathSchema.describe('The image to lock'),
    command: z.array(z.string()).min(1, 'give a command after --').describe('Command to run while locked'),
    shared: z.boolean().default(false).describe('Take a read (shared) lock instead of a write lock'),
    wait: waitField,
  }),
  async run(input, ctx) {
    return withLock(
      input.image,
      input.shared ? 'shared' : 'exclusive',
      async () => {
        const [cmd, ...args] = input.command;
        try {
          const r = await runTool(cmd!, args, {
            inherit: true,
            // with --json stdout carries only the result object: the command's output goes to stderr
            stdout: ctx.json ? 2 : undefined,
            timeoutSeconds: 0,
            okExitCodes: Array.from({ length: 255 }, (_, i) => i + 1),
          });
          return { exitCode: r.exitCode };
        } catch (e) {
          if (e instanceof OverlayError && e.code === 'E_TOOL_MISSING')
            throw new OverlayError('E_NOT_FOUND', `command not found: ${cmd}`);
          throw e;
        }
      },
      { waitSeconds: input.wait },
    );
  },
  render: () => '',
});
