// action.yml ↔ task schema: every input named like its schema field (or its declared rename),
// with the schema's default; every output declared. Plus: the checker itself catches disagreements.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { actionYmlFiles, actionYmlProblems, docFiles, parseActionYml } from '../../packages/actions/src/meta';
import { ACTION_SPECS, actionInputs, ROOT_ACTION } from '../../packages/actions/src/specs';
import { repoRoot } from './harness';

const read = (rel: string) => readFileSync(join(repoRoot, rel), 'utf8');

describe('action.yml agrees with the task schemas', () => {
  for (const spec of ACTION_SPECS) {
    it(`actions/${spec.name}/action.yml`, () => {
      expect(actionYmlProblems(spec, read(`actions/${spec.name}/action.yml`))).toEqual([]);
    });
  }

  it('the root action.yml is setup-overlay, main and post from its bundle, post only on success', () => {
    const spec = ACTION_SPECS.find((s) => s.name === ROOT_ACTION)!;
    const text = read('action.yml');
    expect(actionYmlProblems(spec, text, { root: true })).toEqual([]);
    const runs = parseActionYml(text).runs as Record<string, string>;
    expect(runs).toMatchObject({
      using: 'node24',
      main: 'actions/setup-overlay/dist/index.mjs',
      post: 'actions/setup-overlay/dist/index.mjs',
      'post-if': 'success()',
    });
  });

  it('setup-overlay has the inputs and defaults of the issue', () => {
    const spec = ACTION_SPECS.find((s) => s.name === 'setup-overlay')!;
    const byName = Object.fromEntries(actionInputs(spec).map((i) => [i.name, i]));
    for (const name of [
      'path',
      'size',
      'profile',
      'sparse',
      'fakeroot',
      'uid',
      'gid',
      'create-dirs',
      'base',
      'build',
      'cache',
      'cache-key',
      'key-files',
      'restore-keys',
      'store',
      'check',
    ])
      expect(byName[name], name).toBeDefined();
    expect(byName.path!.required).toBe(true);
    expect(byName.cache!.default).toBe('true');
    expect(byName.check!.default).toBe('true');
  });

  it('check-overlay maps paths to the check task and adds fail-on-corrupt', () => {
    const spec = ACTION_SPECS.find((s) => s.name === 'check-overlay')!;
    const byName = Object.fromEntries(actionInputs(spec).map((i) => [i.name, i]));
    expect(byName.paths?.field).toBe('images');
    expect(byName.repair?.default).toBe('false');
    expect(byName['fail-on-corrupt']).toMatchObject({ extra: true, default: 'true' });
  });

  it('every committed action.yml is exactly what gen-actions writes', () => {
    for (const [rel, content] of Object.entries(actionYmlFiles())) expect(read(rel), rel).toBe(content);
  });
});

describe('the agreement check fails on a disagreement', () => {
  const spec = ACTION_SPECS.find((s) => s.name === 'setup-overlay')!;
  const good = read('actions/setup-overlay/action.yml');

  it('a changed default', () => {
    const bad = good.replace(/(\n {2}cache:\n(?: {4}.*\n)*? {4}default: )"true"/, '$1"false"');
    expect(bad).not.toBe(good);
    expect(actionYmlProblems(spec, bad)).toEqual(['input cache: default "false", schema default "true"']);
  });

  it('a renamed input (hand-written YAML style)', () => {
    const bad = good.replace('\n  cache-key:\n', '\n  cache_key:\n');
    const problems = actionYmlProblems(spec, bad);
    expect(problems).toContain('input cache-key (schema field cacheKey) is missing');
    expect(problems).toContain('input cache_key is not in the schema');
  });

  it('plain and single-quoted scalars are read like the runner reads them', () => {
    const bad = good.replace(/(\n {2}sparse:\n(?: {4}.*\n)*? {4}default: )"true"/, "$1'false'");
    expect(actionYmlProblems(spec, bad)).toEqual(['input sparse: default "false", schema default "true"']);
    const same = good.replace(/(\n {2}sparse:\n(?: {4}.*\n)*? {4}default: )"true"/, '$1true # comment');
    expect(actionYmlProblems(spec, same)).toEqual([]);
  });
});

describe('generated docs', () => {
  it('docs/reference.md and docs/errors.md are up to date (npm run docs)', () => {
    for (const [rel, content] of Object.entries(docFiles())) expect(read(rel), rel).toBe(content);
  });
});
