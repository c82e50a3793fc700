// Run a committed action bundle the way the GitHub runner does: `node <runs.main>` with an
// INPUT_<NAME> variable for every declared input (the given value, else the action.yml default;
// dashes kept, upper-cased), file commands in GITHUB_OUTPUT / GITHUB_STATE / GITHUB_ENV /
// GITHUB_STEP_SUMMARY, RUNNER_TEMP and GITHUB_WORKSPACE (the working directory); then, for actions
// with a post step, `node <runs.post>` with the saved state as STATE_<name>.
import {
  chownSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { chmod, chown, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { parseActionYml, type YamlValue } from '../../packages/actions/src/meta';
import { createImage, currentOwner, MiB } from '../../packages/core/src/index';

export const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

/** Node 24 (runs.using: node24): the pinned one in node_modules, else the one running the tests. */
export const NODE = existsSync(join(repoRoot, 'node_modules/.bin/node'))
  ? join(repoRoot, 'node_modules/.bin/node')
  : process.execPath;

export interface Annotation {
  level: 'error' | 'warning' | 'notice';
  message: string;
  props: Record<string, string>;
}

export interface StepResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  outputs: Record<string, string>;
  state: Record<string, string>;
  env: Record<string, string>;
  summary: string;
  annotations: Annotation[];
  /** Names of the `::group::` sections the step printed. */
  groups: string[];
}

/** Parse a file-command file: `name<<DELIM\nvalue\nDELIM` blocks (and legacy `name=value` lines). */
export function parseFileCommands(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (!line) continue;
    const heredoc = /^([^=<]+)<<(.+)$/.exec(line);
    if (heredoc) {
      const [, name, delim] = heredoc;
      const value: string[] = [];
      for (i++; i < lines.length && lines[i] !== delim; i++) value.push(lines[i]!);
      out[name!] = value.join('\n');
    } else {
      const eq = line.indexOf('=');
      if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
    }
  }
  return out;
}

function unescapeData(s: string): string {
  return s.replace(/%0D/g, '\r').replace(/%0A/g, '\n').replace(/%25/g, '%');
}

function unescapeProp(s: string): string {
  return unescapeData(s).replace(/%3A/g, ':').replace(/%2C/g, ',');
}

export function parseAnnotations(stdout: string): Annotation[] {
  const out: Annotation[] = [];
  for (const line of stdout.split('\n')) {
    const m = /^::(error|warning|notice)(?: ([^:]*))?::(.*)$/.exec(line);
    if (!m) continue;
    const props: Record<string, string> = {};
    for (const kv of (m[2] ?? '').split(',').filter(Boolean)) {
      const eq = kv.indexOf('=');
      props[kv.slice(0, eq)] = unescapeProp(kv.slice(eq + 1));
    }
    out.push({ level: m[1] as Annotation['level'], message: unescapeData(m[3]!), props });
  }
  return out;
}

export interface ActionMeta {
  dir: string;
  inputs: Record<string, { default?: string; required?: string }>;
  main: string;
  post?: string;
}

export function loadAction(name: string): ActionMeta {
  const dir = join(repoRoot, 'actions', name);
  const yml = parseActionYml(readFileSync(join(dir, 'action.yml'), 'utf8'));
  const runs = yml.runs as Record<string, string>;
  const inputs: ActionMeta['inputs'] = {};
  for (const [k, v] of Object.entries((yml.inputs ?? {}) as Record<string, YamlValue>))
    inputs[k] = v as { default?: string; required?: string };
  return { dir, inputs, main: join(dir, runs.main!), post: runs.post ? join(dir, runs.post) : undefined };
}

/** A fresh job: a workspace and a runner temp directory under one root. */
export interface Job {
  root: string;
  workspace: string;
  temp: string;
  /** Run the steps as this user (the hosted runner's situation: not root). */
  user?: JobUser;
}

export interface JobUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

/** A fresh job; with `user`, everything belongs to that user and the steps run as them. */
export async function newJob(prefix = 'ov-action-', user?: JobUser): Promise<Job> {
  const root = mkdtempSync(join(tmpdir(), prefix));
  const workspace = join(root, 'workspace');
  const temp = join(root, 'runner-temp');
  await mkdir(workspace);
  await mkdir(temp);
  if (user) {
    await chmod(root, 0o755);
    for (const d of [root, workspace, temp]) await chown(d, user.uid, user.gid);
  }
  return { root, workspace, temp, user };
}

let step = 0;

async function runStep(
  file: string,
  job: Job,
  inputEnv: Record<string, string>,
  stateEnv: Record<string, string>,
  extraEnv: Record<string, string>,
): Promise<StepResult> {
  const n = ++step;
  const files = {
    GITHUB_OUTPUT: join(job.temp, `output-${n}`),
    GITHUB_STATE: join(job.temp, `state-${n}`),
    GITHUB_ENV: join(job.temp, `env-${n}`),
    GITHUB_PATH: join(job.temp, `path-${n}`),
    GITHUB_STEP_SUMMARY: join(job.temp, `summary-${n}`),
  };
  for (const f of Object.values(files)) {
    writeFileSync(f, '');
    if (job.user) chownSync(f, job.user.uid, job.user.gid);
  }
  const env: Record<string, string> = {
    PATH: job.user
      ? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
      : (process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin'),
    HOME: job.user ? job.user.home : (process.env.HOME ?? '/root'),
    ...(job.user ? { USER: job.user.name, LOGNAME: job.user.name, LANG: 'C.UTF-8' } : {}),
    GITHUB_ACTIONS: 'true',
    CI: 'true',
    RUNNER_OS: 'Linux',
    RUNNER_ARCH: 'X64',
    RUNNER_TEMP: job.temp,
    GITHUB_WORKSPACE: job.workspace,
    GITHUB_REPOSITORY: 'org/overlay-action-test',
    GITHUB_REF: 'refs/heads/main',
    GITHUB_SHA: '0'.repeat(40),
    GITHUB_RUN_ID: String(process.pid),
    GITHUB_JOB: 'test',
    ...files,
    ...inputEnv,
    ...stateEnv,
    ...extraEnv,
  };
  // as another user: runuser + env -i, so nothing of root's environment leaks in
  const [cmd, ...args] = job.user
    ? [
        'runuser',
        '-u',
        job.user.name,
        '--',
        'env',
        '-i',
        ...Object.entries(env).map(([k, v]) => `${k}=${v}`),
        NODE,
        file,
      ]
    : [NODE, file];
  const result = await execa(cmd!, args, {
    cwd: job.workspace,
    env: job.user ? { PATH: env.PATH! } : env,
    extendEnv: false,
    reject: false,
    timeout: 900_000,
  });
  const read = (f: string) => readFileSync(f, 'utf8');
  const stdout = String(result.stdout);
  return {
    exitCode: result.exitCode ?? -1,
    stdout,
    stderr: String(result.stderr),
    outputs: parseFileCommands(read(files.GITHUB_OUTPUT)),
    state: parseFileCommands(read(files.GITHUB_STATE)),
    env: parseFileCommands(read(files.GITHUB_ENV)),
    summary: read(files.GITHUB_STEP_SUMMARY),
    annotations: parseAnnotations(stdout),
    groups: [...stdout.matchAll(/^::group::(.*)$/gm)].map((m) => m[1]!),
  };
}

export interface RunOptions {
  /** Extra environment (the cache service's ACTIONS_* variables). */
  env?: Record<string, string>;
  /** Skip the post step even when the action has one. */
  noPost?: boolean;
  /** The job's other steps, between main and post. */
  between?: (job: Job) => Promise<void>;
  /** Replace (merge over) the state main left, before post reads it. */
  state?: Record<string, string>;
}

export interface ActionRun {
  main: StepResult;
  post?: StepResult;
}

/** `with:` inputs → INPUT_* the way the runner sets them: every declared input, defaults filled in. */
export function inputEnv(meta: ActionMeta, inputs: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [name, decl] of Object.entries(meta.inputs)) {
    const value = inputs[name] ?? decl.default;
    if (value !== undefined) env[`INPUT_${name.replace(/ /g, '_').toUpperCase()}`] = value;
  }
  for (const [name, value] of Object.entries(inputs)) {
    if (!(name in meta.inputs)) env[`INPUT_${name.replace(/ /g, '_').toUpperCase()}`] = value;
  }
  return env;
}

/** Run main, then (when main succeeded: post-if success()) post with main's state as STATE_*. */
export async function runAction(
  name: string,
  job: Job,
  inputs: Record<string, string>,
  opts: RunOptions = {},
): Promise<ActionRun> {
  const meta = loadAction(name);
  const env = inputEnv(meta, inputs);
  const main = await runStep(meta.main, job, env, {}, opts.env ?? {});
  if (!meta.post || opts.noPost || main.exitCode !== 0) return { main };
  await opts.between?.(job);
  const state = { ...main.state, ...opts.state };
  const stateEnv = Object.fromEntries(Object.entries(state).map(([k, v]) => [`STATE_${k}`, v]));
  const post = await runStep(meta.post, job, env, stateEnv, opts.env ?? {});
  return { main, post };
}

/** Every file under `dir` with its size and mtime: "nothing was touched" compares two of these. */
export function snapshot(dir: string): string {
  const lines: string[] = [];
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const st = statSync(p);
      lines.push(`${relative(dir, p)} ${st.isDirectory() ? 'dir' : `${st.size} ${st.mtimeMs}`}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return lines.join('\n');
}

/** A one-line failure: exactly one ::error:: line and a non-zero exit. */
export function failureLines(r: StepResult): string[] {
  return r.stdout.split('\n').filter((l) => l.startsWith('::error'));
}

/** A 64 MiB overlay owned by the test process, in the job's workspace (`env.img`). */
export async function workspaceImage(job: Job, createDirs: string[] = []): Promise<string> {
  const path = join(job.workspace, 'env.img');
  await createImage({
    path,
    sizeBytes: 64 * MiB,
    inodeRatio: 16384,
    reservedPercent: 0,
    sparse: true,
    owner: currentOwner(),
    createDirs,
    force: false,
  });
  return path;
}
