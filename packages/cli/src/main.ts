import {
  coerceRawInput,
  EXIT_STATUS,
  exitStatusFor,
  fromFsError,
  isOverlayError,
  kebab,
  OverlayError,
  parseTaskInput,
  TASKS,
  type TaskContext,
  type TaskDef,
  taskFields,
} from '@overlay-action/core';
import { Command, CommanderError, Option } from 'commander';

declare const OVERLAYCTL_VERSION: string | undefined;
const version = typeof OVERLAYCTL_VERSION === 'string' ? OVERLAYCTL_VERSION : '0.0.0-dev';

interface Outcome {
  json: boolean;
}

/** Anything that is not an OverlayError: a file-system error a user can cause keeps its own code. */
function asOverlayError(e: unknown): OverlayError {
  if (isOverlayError(e)) return e;
  const errno = e as NodeJS.ErrnoException | undefined;
  if (errno?.code && typeof errno.path === 'string') {
    const mapped = fromFsError(e, errno.path);
    if (isOverlayError(mapped)) return mapped;
  }
  return new OverlayError('E_INTERNAL', e instanceof Error ? e.message : String(e), { cause: e });
}

function printError(e: unknown, outcome: Outcome): void {
  const err = asOverlayError(e);
  if (process.env.OVERLAYCTL_DEBUG && e instanceof Error) process.stderr.write(`${e.stack}\n`);
  if (outcome.json) {
    const { code, message, hint, details } = err.toJSON();
    process.stdout.write(`${JSON.stringify({ error: { code, message, hint, details } })}\n`);
  }
  // also with --json: workflow engines keep stdout as a report file and show stderr in their logs
  const oneLine = `${err.code}: ${err.message}${err.hint ? ` (hint: ${err.hint})` : ''}`.replace(
    /\s*\n\s*/g,
    ' | ',
  );
  process.stderr.write(`${oneLine}\n`);
}

function contextFor(json: boolean): TaskContext {
  const write = (prefix: string) => (m: string) => process.stderr.write(`${prefix}${m}\n`);
  const quiet = process.env.OVERLAYCTL_QUIET === '1';
  return {
    info: quiet ? () => {} : write(''),
    warn: write('warning: '),
    progress: quiet || (json && !process.stderr.isTTY) ? () => {} : write('  … '),
    json,
  };
}

function addTaskCommand(program: Command, task: TaskDef, outcome: Outcome): void {
  const words = task.name.split(' ');
  let parent = program;
  for (const word of words.slice(0, -1)) {
    parent =
      parent.commands.find((c) => c.name() === word) ?? parent.command(word).description(`${word} commands`);
  }
  const cmd = parent.command(words.at(-1)!).description(task.summary);
  const fields = taskFields(task);
  const positional = task.positional ?? [];
  for (const name of positional) {
    const f = fields.find((x) => x.name === name)!;
    const label = f.kind === 'array' ? `${name}...` : name;
    cmd.argument(f.required ? `<${label}>` : `[${label}]`, f.description);
  }
  for (const f of fields) {
    if (positional.includes(f.name)) continue;
    if (f.kind === 'boolean') {
      cmd.addOption(new Option(`--${f.kebab}`, f.description));
      cmd.addOption(new Option(`--no-${f.kebab}`, `Negate --${f.kebab}`).hideHelp(f.defaultValue !== true));
    } else if (f.kind === 'array') {
      cmd.addOption(
        new Option(`--${f.kebab} <value>`, `${f.description}`).argParser((v: string, prev: string[] = []) => [
          ...prev,
          v,
        ]),
      );
    } else {
      const opt = new Option(`--${f.kebab} <value>`, f.description);
      if (f.choices) opt.choices(f.choices);
      if (f.defaultValue !== undefined) opt.default(f.defaultValue);
      cmd.addOption(opt);
    }
  }
  for (const [alias, spec] of Object.entries(task.cliAliases ?? {}))
    cmd.option(`--${alias}`, spec.description);
  cmd.option('--json', 'Print exactly one JSON object on stdout');
  cmd.action(async (...args: unknown[]) => {
    const opts = (args[positional.length] ?? {}) as Record<string, unknown>;
    outcome.json = Boolean(opts.json);
    const raw: Record<string, unknown> = {};
    positional.forEach((name, i) => {
      raw[name] = args[i];
    });
    for (const f of fields) {
      if (positional.includes(f.name)) continue;
      const v = opts[f.name];
      // commander fills declared defaults; pass only what the user gave so zod applies defaults once
      if (v !== undefined && cmd.getOptionValueSource(f.name) !== 'default') raw[f.name] = v;
    }
    for (const [alias, spec] of Object.entries(task.cliAliases ?? {})) {
      // commander reads a `--no-x` flag as x=false
      const given = alias.startsWith('no-')
        ? opts[alias.slice(3).replace(/-(\w)/g, (_, c) => c.toUpperCase())] === false
        : opts[alias];
      if (given) Object.assign(raw, spec.sets);
    }
    const input = parseTaskInput(task, coerceRawInput(task, raw));
    const output = (await task.run(input, contextFor(outcome.json))) as Record<string, unknown> | undefined;
    if (outcome.json) process.stdout.write(`${JSON.stringify(output ?? {})}\n`);
    else if (task.render) {
      const text = task.render(output);
      if (text) process.stdout.write(`${text}\n`);
    } else process.stdout.write(`${JSON.stringify(output ?? {}, null, 2)}\n`);
    if (output && typeof output.exitCode === 'number') process.exitCode = output.exitCode;
  });
}

/**
 * The tasks to define for this argv: only the invoked one when the leading words name a task
 * (defining all of them costs every run, exec included); all of them for help, --version and
 * anything unknown, so commander's listings and errors stay the same.
 */
function tasksFor(argv: string[]): readonly TaskDef[] {
  const firstOption = argv.findIndex((a) => a.startsWith('-'));
  const words = firstOption < 0 ? argv : argv.slice(0, firstOption);
  const hit = TASKS.filter((t) => t.name.split(' ').every((w, i) => words[i] === w));
  return hit.length === 1 ? hit : TASKS;
}

export async function main(argv: string[]): Promise<void> {
  const outcome: Outcome = {
    json: argv.includes('--json') && !argv.slice(0, argv.indexOf('--json')).includes('--'),
  };
  const program = new Command('overlayctl')
    .description('Apptainer overlay images: create, build, resize, check, commit to SquashFS, cache.')
    .version(version)
    .showHelpAfterError(false)
    .exitOverride()
    .configureOutput({ writeErr: () => {} });
  for (const task of tasksFor(argv)) addTaskCommand(program, task, outcome);
  program.commands.forEach(function override(c: Command) {
    c.exitOverride().configureOutput({ writeErr: () => {} });
    c.commands.forEach(override);
  });
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      if (['commander.helpDisplayed', 'commander.version', 'commander.help'].includes(e.code)) return;
      printError(new OverlayError('E_INVALID_INPUT', e.message.replace(/^error: /, '')), outcome);
      process.exitCode = exitStatusFor('E_INVALID_INPUT');
      return;
    }
    printError(e, outcome);
    process.exitCode = exitCodeFor(e, argv);
  }
}

/**
 * Exit statuses come from the one table in core (ERROR_CODES / EXIT_STATUS). exec and lock pass
 * their command's status through, so their own failures use one status of their own (125).
 */
function exitCodeFor(e: unknown, argv: string[]): number {
  const command = argv.find((a) => !a.startsWith('-'));
  if (command === 'exec' || command === 'lock') return EXIT_STATUS.execOwnFailure;
  return exitStatusFor(asOverlayError(e).code);
}

export { kebab };
