import type { z } from 'zod';
import { OverlayError } from '../errors';
import { withLockWait } from '../lock/ofd';

/**
 * A task is one user-facing operation: a zod input schema (the single source of truth for the CLI
 * flags, the action inputs, the docs and validation), a run(), and a JSON-able output.
 * Field names are camelCase; the CLI flag and the action input are the kebab-case form.
 */
export interface TaskContext {
  /** Informational line (stderr in the CLI, core.info in actions). */
  info(message: string): void;
  /** Something the user should act on; the operation still succeeded. */
  warn(message: string): void;
  /** Progress of a long operation (a tool's output line, a phase name). */
  progress(message: string): void;
  /**
   * The front end prints the result as one JSON object on stdout (`--json`): a task that runs a
   * command (exec, lock) sends that command's stdout to stderr, so stdout holds only the object.
   */
  json?: boolean;
}

export const silentContext: TaskContext = { info() {}, warn() {}, progress() {} };

export interface TaskDef<S extends z.ZodObject = z.ZodObject, O = unknown> {
  name: string;
  summary: string;
  input: S;
  /** Fields taken from positional CLI arguments, in order; an array field takes the rest. */
  positional?: string[];
  /** CLI-only shorthands: `--allocated` => { sparse: false }. */
  cliAliases?: Record<string, { description: string; sets: Record<string, unknown> }>;
  /** Extra cross-field checks after the schema (messages name the fields). */
  run(input: z.output<S>, ctx: TaskContext): Promise<O>;
  /** Human-readable rendering for the CLI without --json. */
  render?(output: O): string;
}

/** A task with a `wait` field (tasks/common waitField) runs with that lock wait in effect. */
export function defineTask<S extends z.ZodObject, O>(def: TaskDef<S, O>): TaskDef<S, O> {
  if (!('wait' in def.input.shape)) return def;
  return {
    ...def,
    run: (input, ctx) => {
      const wait = (input as { wait?: number }).wait;
      return wait === undefined ? def.run(input, ctx) : withLockWait(wait, () => def.run(input, ctx));
    },
  };
}

export type FieldKind = 'string' | 'number' | 'boolean' | 'array' | 'enum';

export interface FieldInfo {
  name: string;
  kebab: string;
  kind: FieldKind;
  required: boolean;
  defaultValue: unknown;
  description: string;
  choices?: string[];
}

export function kebab(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

// biome-ignore lint/suspicious/noExplicitAny: zod internals are untyped here on purpose
type AnyDef = any;

function describeField(name: string, schema: z.ZodType): FieldInfo {
  let s: AnyDef = schema;
  let required = true;
  let defaultValue: unknown;
  let description = schema.description ?? '';
  for (;;) {
    const def = s._zod.def;
    if (!description && s.description) description = s.description;
    if (def.type === 'optional') {
      required = false;
      s = def.innerType;
    } else if (def.type === 'default') {
      required = false;
      defaultValue = typeof def.defaultValue === 'function' ? def.defaultValue() : def.defaultValue;
      s = def.innerType;
    } else if (def.type === 'pipe') {
      s = def.in;
    } else break;
  }
  const def = s._zod.def;
  let kind: FieldKind = 'string';
  let choices: string[] | undefined;
  if (def.type === 'boolean') kind = 'boolean';
  else if (def.type === 'number' || def.type === 'int') kind = 'number';
  else if (def.type === 'array') kind = 'array';
  else if (def.type === 'enum') {
    kind = 'enum';
    choices = Object.values(def.entries as Record<string, string>);
  }
  return { name, kebab: kebab(name), kind, required, defaultValue, description, choices };
}

export function taskFields(task: TaskDef): FieldInfo[] {
  return Object.entries(task.input.shape).map(([name, s]) => describeField(name, s as z.ZodType));
}

/**
 * Turn raw front-end strings into schema input: booleans from true/false/yes/no/1/0, numbers from
 * decimal text, arrays from repeated flags or one-per-line text. '' means "not given".
 * Unparseable text is passed on unchanged so the schema reports it against the field.
 */
export function coerceRawInput(task: TaskDef, raw: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const fields = new Map(taskFields(task).map((f) => [f.name, f]));
  for (const [name, value] of Object.entries(raw)) {
    const field = fields.get(name);
    if (value === undefined || value === '' || !field) {
      if (!field && value !== undefined) out[name] = value; // unknown keys: the schema rejects them
      continue;
    }
    if (field.kind === 'boolean' && typeof value === 'string') {
      const v = value.trim().toLowerCase();
      out[name] = ['true', 'yes', '1', 'on'].includes(v)
        ? true
        : ['false', 'no', '0', 'off'].includes(v)
          ? false
          : value;
    } else if (field.kind === 'number' && typeof value === 'string') {
      out[name] = /^\s*-?\d+(\.\d+)?\s*$/.test(value) ? Number(value) : value;
    } else if (field.kind === 'array' && typeof value === 'string') {
      out[name] = value
        .split('\n')
        .map((l) => l.trim())
        .filter(Boolean);
    } else out[name] = value;
  }
  return out;
}

/** Validate with the task's schema; failures become one E_INVALID_INPUT naming the input. */
export function parseTaskInput<S extends z.ZodObject>(
  task: TaskDef<S, unknown>,
  raw: Record<string, unknown>,
  nameStyle: (field: string) => string = (f) => `--${kebab(f)}`,
): z.output<S> {
  const input = coerceRawInput(task as unknown as TaskDef, raw);
  const result = task.input.strict().safeParse(input);
  if (result.success) return result.data as z.output<S>;
  const issue = result.error.issues[0]!;
  const name = issue.path.length ? String(issue.path[0]) : undefined;
  const info =
    name === undefined ? undefined : taskFields(task as unknown as TaskDef).find((f) => f.name === name);
  let message = `${name === undefined ? '' : `${nameStyle(name)}: `}${issue.message}`;
  if (issue.code === 'unrecognized_keys')
    message = `unknown input ${issue.keys.map((k) => nameStyle(k)).join(', ')}`;
  // a required field that was not given: name it and say what it wants (not "expected string")
  else if (info && issue.path.length === 1 && input[info.name] === undefined)
    message = `${nameStyle(info.name)} is required: ${info.description || info.kind}`;
  throw new OverlayError('E_INVALID_INPUT', message, {
    details: { issues: result.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message })) },
  });
}
