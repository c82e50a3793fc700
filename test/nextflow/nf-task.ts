// Runs one block of a module the way a Nextflow task does: inputs staged as symlinks (under their
// own names) into a fresh work directory, the interpolated script in `.command.sh` run by bash with
// nf-core's shell options, stdout/stderr kept in `.command.out`/`.command.err`, then the declared
// outputs collected by their globs (hidden files and staged inputs excluded, as Nextflow does).
import { readdir, symlink, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { execa } from 'execa';
import {
  evaluate,
  globToRegExp,
  NfError,
  type NfProcess,
  renderBlock,
  type Scope,
  type Value,
} from './nf-extract';

export interface CommandResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs argv in cwd with exactly env (no inherited environment). */
export type Runner = (argv: string[], cwd: string, env: Record<string, string>) => Promise<CommandResult>;

export const runLocally: Runner = async (argv, cwd, env) => {
  const r = await execa(argv[0]!, argv.slice(1), { cwd, env, extendEnv: false, reject: false });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
};

/** nf-core's process.shell: `bash` with -C (no clobber), -e, -u, -o pipefail. */
export const TASK_SHELL = ['bash', '-C', '-e', '-u', '-o', 'pipefail'];

export interface TaskSpec {
  proc: NfProcess;
  block?: 'script' | 'stub';
  /** A value for every declared input; path inputs take absolute host paths (a list for several). */
  inputs: Record<string, Value>;
  /** task.ext (args, prefix, …). */
  ext?: Record<string, Value>;
  /** An empty directory the task may write (owned by whoever runs it). */
  workDir: string;
  env: Record<string, string>;
  run?: Runner;
}

export interface TaskResult extends CommandResult {
  script: string;
  workDir: string;
  /** Files (absolute paths) matched by each output, by emit name. */
  outputs: Record<string, string[]>;
  /** Declared, not optional, and matched nothing. */
  missing: string[];
  /** The `val` and `eval` outputs, by emit name, as Nextflow would emit them. */
  values: Record<string, Value[]>;
  /** What each topic channel received: one tuple (val/eval items) per declaration. */
  topics: Record<string, Value[][]>;
}

async function stage(workDir: string, value: Value, input: string): Promise<Value> {
  const files = Array.isArray(value) ? value : [value];
  const names: string[] = [];
  for (const f of files) {
    if (typeof f !== 'string' || !f.startsWith('/'))
      throw new NfError(`path input ${input} needs absolute file paths, got ${JSON.stringify(f)}`);
    const name = basename(f);
    if (names.includes(name)) throw new NfError(`path input ${input}: two files named ${name}`);
    await symlink(f, join(workDir, name));
    names.push(name);
  }
  return Array.isArray(value) ? names : names[0]!;
}

export async function runTask(spec: TaskSpec): Promise<TaskResult> {
  const { proc, workDir } = spec;
  const blockName = spec.block ?? 'script';
  const block = blockName === 'stub' ? proc.stub : proc.script;
  if (!block) throw new NfError(`${proc.name} has no ${blockName}: block`);

  const declared = proc.inputs.flatMap((d) => d.items);
  const given = Object.keys(spec.inputs);
  const unknown = given.filter((n) => !declared.some((d) => d.name === n));
  if (unknown.length) throw new NfError(`${proc.name} declares no input named ${unknown.join(', ')}`);

  const scope: Scope = {};
  const staged: string[] = [];
  for (const item of declared) {
    if (!Object.hasOwn(spec.inputs, item.name)) throw new NfError(`no value for input ${item.name}`);
    const v = spec.inputs[item.name]!;
    if (item.kind === 'path') {
      const names = await stage(workDir, v, item.name);
      scope[item.name] = names;
      staged.push(...(Array.isArray(names) ? (names as string[]) : [names as string]));
    } else scope[item.name] = v;
  }
  scope.task = { process: proc.name, ext: spec.ext ?? {}, cpus: 1, attempt: 1, index: 1, workDir };

  const { script } = renderBlock(block, scope);
  await writeFile(join(workDir, '.command.sh'), script, { mode: 0o644 });
  const run = spec.run ?? runLocally;
  const r = await run([...TASK_SHELL, '.command.sh'], workDir, spec.env);
  await writeFile(join(workDir, '.command.out'), r.stdout);
  await writeFile(join(workDir, '.command.err'), r.stderr);

  const entries = (await readdir(workDir)).filter((n) => !n.startsWith('.') && !staged.includes(n));
  const outputs: Record<string, string[]> = {};
  const values: Record<string, Value[]> = {};
  const topics: Record<string, Value[][]> = {};
  const missing: string[] = [];
  for (const [i, decl] of proc.outputs.entries()) {
    const emit = decl.emit ?? `out${i}`;
    const tuple: Value[] = [];
    for (const item of decl.items) {
      if (item.kind === 'val') {
        const v = evaluate(item.name ?? item.expr!, scope);
        values[emit] = [...(values[emit] ?? []), v];
        tuple.push(v);
        continue;
      }
      if (item.kind === 'eval') {
        // Nextflow runs an eval output's command in the task's shell and directory after the
        // script, and fails the task when it fails; the value is its stdout without the last newline
        const command = String(evaluate(`${item.quote}${item.pattern}${item.quote}`, scope));
        const e = await run(['bash', '-c', command], workDir, spec.env);
        if (e.exitCode !== 0) missing.push(`${emit}: eval(${command}) exited ${e.exitCode}: ${e.stderr}`);
        const v = e.stdout.replace(/\n$/, '');
        values[emit] = [...(values[emit] ?? []), v];
        tuple.push(v);
        continue;
      }
      // output patterns see the task's inputs, not the script's defs (as in Nextflow)
      const glob = String(evaluate(`${item.quote}${item.pattern}${item.quote}`, scope));
      const re = globToRegExp(glob);
      const matched = entries.filter((n) => re.test(n)).map((n) => join(workDir, n));
      if (!matched.length && !decl.optional) missing.push(`${emit}: ${glob}`);
      outputs[emit] = [...(outputs[emit] ?? []), ...matched];
    }
    if (decl.topic) topics[decl.topic] = [...(topics[decl.topic] ?? []), tuple];
  }
  return { ...r, script, workDir, outputs, missing, values, topics };
}

/** A one-line account of a task for assertion messages. */
export function describeTask(r: TaskResult): string {
  return [
    `exit ${r.exitCode} in ${r.workDir}`,
    `--- stdout\n${r.stdout.slice(-2000)}`,
    `--- stderr\n${r.stderr.slice(-4000)}`,
  ].join('\n');
}

/**
 * The `versions` topic as nf-core pipelines collect it: one [process, tool, version] tuple per
 * declaration, as { tool: version } for the one process that emitted them.
 */
export function topicVersions(r: TaskResult): { process: string; tools: Record<string, string> } {
  const tuples = r.topics.versions ?? [];
  if (!tuples.length) throw new Error('no tuple reached the versions topic');
  const tools: Record<string, string> = {};
  const processes = new Set<string>();
  for (const t of tuples) {
    if (t.length !== 3 || !t.every((x) => typeof x === 'string'))
      throw new Error(`a versions tuple is [process, tool, version] strings: ${JSON.stringify(t)}`);
    const [proc, tool, version] = t as string[];
    processes.add(proc!);
    tools[tool!] = version!;
  }
  if (processes.size !== 1) throw new Error(`versions from several processes: ${[...processes].join(', ')}`);
  return { process: [...processes][0]!, tools };
}
