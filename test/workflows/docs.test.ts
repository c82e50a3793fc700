// docs/workflows.md shows only what the tests run: every code block is marked
// `<!-- from: PATH -->` and its lines are consecutive lines of that file (a command may sit in
// the file's header comment), and that file is one the engine tests run.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT } from './helpers';

/** The files test/workflows/*.test.ts and test/nextflow run (the docs may quote only these). */
const RUN_BY_TESTS = [
  'packages/snakemake/examples/Snakefile',
  'packages/snakemake/wrappers/overlay/check/test/Snakefile',
  'packages/cwl/overlay-commit.cwl',
  'packages/cwl/examples/check-then-run.cwl',
  'packages/nextflow/examples/nextflow.config',
];

interface Block {
  from?: string;
  lines: string[];
  at: number;
}

function codeBlocks(md: string): Block[] {
  const blocks: Block[] = [];
  const lines = md.split('\n');
  for (let i = 0; i < lines.length; i++) {
    if (!/^```\w*$/.test(lines[i]!)) continue;
    const from = /^<!-- from: (\S+) -->$/.exec(lines[i - 1] ?? '')?.[1];
    const end = lines.indexOf('```', i + 1);
    blocks.push({ from, lines: lines.slice(i + 1, end), at: i + 1 });
    i = end;
  }
  return blocks;
}

/** A line as compared: no trailing blanks; a file line also loses a leading `#   ` comment marker. */
const norm = (l: string) => l.trimEnd();
const uncomment = (l: string) => norm(l).replace(/^#\s+(?=\S)/, '');

function isExcerpt(block: string[], file: string[]): boolean {
  const want = block.map(norm);
  for (const view of [file.map(norm), file.map(uncomment)]) {
    for (let i = 0; i + want.length <= view.length; i++) {
      if (want.every((l, j) => view[i + j] === l)) return true;
    }
  }
  return false;
}

describe('docs/workflows.md', () => {
  it('every code block is an excerpt of a file the engine tests run', async () => {
    const blocks = codeBlocks(await readFile(join(ROOT, 'docs/workflows.md'), 'utf8'));
    expect(blocks.length).toBeGreaterThanOrEqual(7);
    for (const b of blocks) {
      expect(b.from, `block at line ${b.at} has no <!-- from: PATH --> marker`).toBeDefined();
      expect(RUN_BY_TESTS, `block at line ${b.at}`).toContain(b.from);
      const file = (await readFile(join(ROOT, b.from!), 'utf8')).split('\n');
      expect(
        isExcerpt(b.lines, file),
        `block at line ${b.at} is not in ${b.from}:\n${b.lines.join('\n')}`,
      ).toBe(true);
    }
  });

  it('the excerpt check notices a changed line', () => {
    const file = ['# header', '#   snakemake -c2 --use-singularity', 'rule a:', '    input: "x"'];
    expect(isExcerpt(['snakemake -c2 --use-singularity'], file)).toBe(true);
    expect(isExcerpt(['rule a:', '    input: "x"'], file)).toBe(true);
    expect(isExcerpt(['rule a:', '    input: "y"'], file)).toBe(false);
    expect(isExcerpt(['rule a:', '# header'], file)).toBe(false);
  });
});
