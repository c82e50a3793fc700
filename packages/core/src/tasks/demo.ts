import { z } from 'zod';
import { type DemoResult, runDemo } from '../runtime/demo';
import { formatBytes } from '../size';
import { pathSchema } from './common';
import { defineTask } from './define';

const sec = (ms: number) => (ms / 1000).toFixed(1);

function render(d: DemoResult): string {
  const i = d.image;
  return [
    `overlayctl demo: artefacts in ${d.dir}`,
    `  base     base.sif ${formatBytes(d.base.sizeBytes)}, Debian bookworm minbase (${d.base.built ? `built in ${sec(d.base.durationMs)} s` : 'reused'})`,
    `  overlay  env.img ${formatBytes(i.sizeBytes)} sparse ext3, small profile: ${formatBytes(i.allocatedBytes)} on disk, ` +
      `${formatBytes(i.usedBytes ?? 0)} used (inode tables and journal included)`,
    `  install  ${d.packagesInstalled} Debian packages (${d.packages.join(' ')}) by apt in the container, ${sec(d.buildMs)} s`,
    `  files    ${i.inodesUsed} files and directories in the overlay (${i.inodesUsedPercent}% of its inodes)`,
    `  check    ${d.check.status} (${sec(d.check.durationMs)} s)`,
    `  run      ${d.run.command.slice(0, 5).join(' ')} python3 -c … (${sec(d.run.durationMs)} s):`,
    ...d.run.output
      .trim()
      .split('\n')
      .map((l) => `           ${l}`),
    `  total    ${sec(d.durationMs)} s`,
  ].join('\n');
}

export const demoTask = defineTask({
  name: 'demo',
  summary:
    'The whole point in one command: base image, overlay, install a Python env through Apptainer, check, run read-only',
  input: z.object({
    dir: pathSchema.default('.demo').describe('Directory for the artefacts (base.sif, env.img, apt cache)'),
  }),
  run: (input, ctx) => runDemo({ dir: input.dir, info: ctx.info, progress: ctx.progress }),
  render,
});
