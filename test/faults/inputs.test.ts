import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isOverlayError, parseTaskInput, TASKS, taskFields } from '../../packages/core/src/index';

const CLI = join(import.meta.dirname, '../../packages/cli/dist/overlayctl.mjs');
// Commands that only touch files named on their command line (no arbitrary programs, no stores).
const FILE_COMMANDS = ['create', 'info', 'check', 'resize', 'chown', 'normalize', 'commit', 'squash'];

const text = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.constantFrom(
    '',
    '0',
    '-1',
    '64',
    '4G',
    '1e9',
    'true',
    'no',
    '../x',
    '/',
    'img',
    ' ',
    'ünï',
    'a b',
    '--',
  ),
);

describe('any input to any task schema', () => {
  it('either parses or fails with E_INVALID_INPUT naming a field (never another error)', () => {
    for (const task of TASKS) {
      const fields = taskFields(task);
      const raw = fc.dictionary(
        fc.constantFrom(...fields.map((f) => f.name), 'bogus'),
        fc.oneof(text, fc.boolean(), fc.array(text, { maxLength: 3 }), fc.integer()),
      );
      fc.assert(
        fc.property(raw, (input) => {
          try {
            parseTaskInput(task, input);
          } catch (e) {
            expect(isOverlayError(e, 'E_INVALID_INPUT')).toBe(true);
            expect((e as Error).message.length).toBeGreaterThan(0);
          }
        }),
        { numRuns: 200 },
      );
    }
  });
});

describe('any argv to the CLI', () => {
  let dir: string;
  const snapshot = () =>
    readdirSync(dir)
      .sort()
      .map(
        (n) =>
          `${n}:${createHash('sha256')
            .update(readFileSync(join(dir, n)))
            .digest('hex')}`,
      )
      .join('\n');

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ov-inputs-'));
    await execa(CLI, ['create', join(dir, 'img'), '--size', '64']);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('prints one JSON object, no stack trace, and touches nothing when it fails', async () => {
    const commands = FILE_COMMANDS.filter((c) => TASKS.some((t) => t.name === c));
    const flagsOf = (name: string) =>
      taskFields(TASKS.find((t) => t.name === name)!).map((f) => `--${f.kebab}`);
    const argv = fc.constantFrom(...commands).chain((cmd) =>
      fc
        .array(fc.oneof(fc.constantFrom(...flagsOf(cmd), 'img', '--force', '--nope'), text), {
          maxLength: 6,
        })
        .map((rest) => [cmd, '--json', ...rest.filter((a) => !a.includes('\0'))]),
    );
    await fc.assert(
      fc.asyncProperty(argv, async (args) => {
        const before = snapshot();
        const r = await execa(CLI, args, { cwd: dir, reject: false, env: { OVERLAY_TOOL_TIMEOUT: '60' } });
        expect(r.stderr).not.toMatch(/^\s+at .+:\d+:\d+\)?$/m);
        const lines = r.stdout.trim().split('\n');
        expect(lines).toHaveLength(1);
        const out = JSON.parse(lines[0]!);
        if (r.exitCode !== 0 && !out.error) {
          expect(typeof out.exitCode).toBe('number'); // a report (e.g. check) that sets its own status
        } else if (r.exitCode !== 0) {
          expect(out.error.code).toMatch(/^E_[A-Z_0-9]+$/);
          expect(snapshot()).toBe(before);
        }
      }),
      { numRuns: 40 },
    );
  });
});
