// The values the Snakemake wrappers, CWL tools and Nextflow files take from the exit-status table
// (packages/core/src/errors.ts) are written by scripts/gen-workflows.mjs, never copied by hand:
// the committed files are fresh, and a change in the table changes them.
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES, EXIT_STATUS } from '../../packages/core/src/errors';
import { ROOT, run } from './helpers';

// biome-ignore lint/suspicious/noExplicitAny: a plain .mjs script without types
const gen: any = await import(pathToFileURL(join(ROOT, 'scripts/gen-workflows.mjs')).href);
const WRAPPERS = join(ROOT, 'packages/snakemake/wrappers/overlay');

describe('scripts/gen-workflows.mjs', () => {
  it('the committed wrappers, CWL tools and Nextflow files are fresh (--check)', async () => {
    const r = await run([process.execPath, 'scripts/gen-workflows.mjs', '--check'], ROOT, {
      PATH: process.env.PATH ?? '',
    });
    expect(r.exitCode, r.all).toBe(0);
  });

  it('takes retryable statuses and codes from the table', async () => {
    const vals = gen.values({ ERROR_CODES, EXIT_STATUS });
    expect(vals.retryable.text).toBe(String(EXIT_STATUS.retryable));
    expect(vals['retryable-codes'].text).toBe('("E_LOCKED", "E_TIMEOUT", "E_REGISTRY")');
    // another table, other values: nothing is hard-wired
    const other = gen.values({
      ERROR_CODES: {
        ...ERROR_CODES,
        E_LOCKED: { exit: 99, meaning: '' },
        E_TIMEOUT: { exit: 2, meaning: '' },
      },
      EXIT_STATUS: { ...EXIT_STATUS, retryable: 99 },
    });
    const line = 'temporaryFailCodes: [75] # gen-workflows: retryable';
    expect(gen.renderMarked(line, other)).toBe('temporaryFailCodes: [99] # gen-workflows: retryable');
    expect(gen.renderMarked('CODES = ("E_X")  # gen-workflows: retryable-codes', other)).toBe(
      'CODES = ("E_LOCKED")  # gen-workflows: retryable-codes',
    );
    expect(() => gen.renderMarked('x = [1, 2] # gen-workflows: retryable', other)).toThrow(
      /exactly one value/,
    );
    expect(() => gen.renderMarked('x = 1 # gen-workflows: nope', other)).toThrow(/unknown marker/);
    expect(() => gen.values({ ERROR_CODES, EXIT_STATUS: { ...EXIT_STATUS, retryable: 76 } })).toThrow(
      /E_LOCKED/,
    );
  });

  it('every CWL tool maps the retryable status to temporaryFailCodes through the generator', async () => {
    const tools = (await readdir(join(ROOT, 'packages/cwl'))).filter((f) => f.endsWith('.cwl'));
    for (const name of tools) {
      const text = await readFile(join(ROOT, 'packages/cwl', name), 'utf8');
      if (!/^class: CommandLineTool$/m.test(text)) continue;
      expect(text, name).toContain(
        `temporaryFailCodes: [${EXIT_STATUS.retryable}] # gen-workflows: retryable`,
      );
    }
  });

  it('every wrapper has the snakemake-wrappers layout and the same common lines', async () => {
    const common = await readFile(join(ROOT, 'packages/snakemake/wrapper-common.py'), 'utf8');
    for (const op of ['setup', 'check', 'resize', 'commit']) {
      for (const f of ['wrapper.py', 'meta.yaml', 'environment.yaml', 'test/Snakefile'])
        expect((await stat(join(WRAPPERS, op, f))).isFile(), `${op}/${f}`).toBe(true);
      const wrapper = await readFile(join(WRAPPERS, op, 'wrapper.py'), 'utf8');
      expect(gen.withCommon(wrapper, common)).toBe(wrapper);
      expect(wrapper).toContain(`RETRYABLE = ${EXIT_STATUS.retryable}  # gen-workflows: retryable`);
    }
  });
});
