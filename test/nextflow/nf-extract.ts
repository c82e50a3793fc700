// A small reader for the subset of Nextflow DSL2 that packages/nextflow/modules use, so the tests
// can run a module's `script:` / `stub:` block the way a Nextflow task would, without Nextflow.
//
// Supported (and nothing else — the modules stay within it; anything outside throws):
//   process NAME { directives  input:  output:  when:  script:  stub: }   one process per file
//   directives     tag "GSTRING" · label 'NAME' · // comments
//   input lines    tuple val(x), path(y) · val x · path x          (comma-separated items)
//   output lines   tuple val(meta), path("GLOB"), emit: name · path "GLOB", emit: name [, optional: true]
//                  tuple val("${task.process}"), val('tool'), eval('CMD'), emit: name, topic: versions
//                  (nf-core's topic-channel versions: val of a quoted string, eval of a command)
//   script/stub    `def name = OPERAND [?: OPERAND]…` lines, // comments, then one """ GString """
//   expressions    a.b.c property paths · 'literal' · "GString" · null · the Elvis operator ?:
//   GStrings       ${expr} and $a.b.c interpolation; escapes \$ \\ \" \' \n \t \r \b \f and
//                  backslash-newline; a `$` that starts no interpolation is an error (as in Groovy)
// The script text is interpolated, then its common indentation is stripped (Groovy stripIndent),
// which is what Nextflow hands to bash.

export type Value = string | number | boolean | null | Value[] | { [key: string]: Value };
export type Scope = Record<string, Value>;

export interface InputItem {
  kind: 'val' | 'path';
  name: string;
}
export interface InputDecl {
  text: string;
  items: InputItem[];
}

export interface OutputItem {
  kind: 'val' | 'path' | 'eval';
  /** val(NAME): the variable; otherwise undefined */
  name?: string;
  /** val('…') / val("…"): the quoted expression as written */
  expr?: string;
  /** path("GLOB"): the pattern as written (a GString when double-quoted); eval('CMD'): the command */
  pattern?: string;
  quote?: '"' | "'";
}
export interface OutputDecl {
  text: string;
  items: OutputItem[];
  emit?: string;
  /** topic: NAME — the items also go to the topic channel NAME (nf-core: `versions`) */
  topic?: string;
  optional: boolean;
}

export interface Def {
  name: string;
  expr: string;
}
export interface ScriptBlock {
  defs: Def[];
  /** The body of the triple-quoted GString, escapes and interpolations not yet applied. */
  template: string;
}

export interface NfProcess {
  name: string;
  directives: { name: string; value: string }[];
  inputs: InputDecl[];
  outputs: OutputDecl[];
  when?: string;
  script: ScriptBlock;
  stub?: ScriptBlock;
}

export class NfError extends Error {}

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;
const SECTION = /^[ \t]*(input|output|when|script|shell|exec|stub):[ \t]*$/gm;

/** [start, end) offsets of every """…""" string (end includes the closing quotes). */
function tripleQuotedSpans(text: string): [number, number][] {
  const spans: [number, number][] = [];
  let i = 0;
  while (i < text.length) {
    const open = text.indexOf('"""', i);
    if (open < 0) break;
    let j = open + 3;
    for (;;) {
      if (j >= text.length) throw new NfError(`unterminated """ string at offset ${open}`);
      if (text[j] === '\\') j += 2;
      else if (text.startsWith('"""', j)) break;
      else j++;
    }
    spans.push([open, j + 3]);
    i = j + 3;
  }
  return spans;
}

function codeLines(text: string): string[] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('//'));
}

/** Splits at commas outside parentheses and quotes. */
function splitTopLevel(text: string, sep = ','): string[] {
  const parts: string[] = [];
  let depth = 0;
  let quote: string | null = null;
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quote) {
      if (c === '\\') {
        cur += c + (text[i + 1] ?? '');
        i++;
        continue;
      }
      if (c === quote) quote = null;
    } else if (c === '"' || c === "'") quote = c;
    else if (c === '(') depth++;
    else if (c === ')') depth--;
    else if (depth === 0 && text.startsWith(sep, i)) {
      parts.push(cur.trim());
      cur = '';
      i += sep.length - 1;
      continue;
    }
    cur += c;
  }
  if (quote || depth !== 0) throw new NfError(`unbalanced quotes or parentheses in: ${text}`);
  parts.push(cur.trim());
  return parts;
}

/** A quoted literal `'…'` or `"…"` as a whole: its quote and raw body, else null. */
function quoted(text: string): { quote: '"' | "'"; body: string } | null {
  const m = /^(["'])([\s\S]*)\1$/.exec(text.trim());
  if (!m) return null;
  const quote = m[1] as '"' | "'";
  const body = m[2]!;
  // `"a" + "b"` is not one literal: its body holds an unescaped quote
  for (let i = 0; i < body.length; i++) {
    if (body[i] === '\\') i++;
    else if (body[i] === quote) return null;
  }
  return { quote, body };
}

function parseItem(text: string): { kind: string; arg: string } {
  const m = /^(val|path|tuple|env|stdout|file|eval)\b\s*(?:\(([\s\S]*)\)|\s+(.+))?$/.exec(text.trim());
  if (!m) throw new NfError(`unsupported declaration item: ${text}`);
  return { kind: m[1]!, arg: (m[2] ?? m[3] ?? '').trim() };
}

function parseInput(line: string): InputDecl {
  const parts = splitTopLevel(line.replace(/^tuple\s+/, ''));
  const items = parts.map((p): InputItem => {
    const { kind, arg } = parseItem(p);
    if ((kind !== 'val' && kind !== 'path') || !IDENT.test(arg))
      throw new NfError(`unsupported input item (only val(x) / path(x)): ${p}`);
    return { kind, name: arg };
  });
  return { text: line, items };
}

function parseOutput(line: string): OutputDecl {
  const decl: OutputDecl = { text: line, items: [], optional: false };
  for (const part of splitTopLevel(line.replace(/^tuple\s+/, ''))) {
    const opt = /^(emit|optional|topic):\s*(.+)$/.exec(part);
    if (opt) {
      if (opt[1] === 'emit') decl.emit = opt[2]!;
      else if (opt[1] === 'topic') decl.topic = opt[2]!;
      else if (opt[1] === 'optional') decl.optional = opt[2] === 'true';
      continue;
    }
    const { kind, arg } = parseItem(part);
    if (kind === 'val' && IDENT.test(arg)) decl.items.push({ kind, name: arg });
    else if (kind === 'val' && quoted(arg)) decl.items.push({ kind, expr: arg });
    else if ((kind === 'path' || kind === 'eval') && quoted(arg)) {
      const q = quoted(arg)!;
      decl.items.push({ kind, pattern: q.body, quote: q.quote });
    } else
      throw new NfError(
        `unsupported output item (only val(x) / val('…') / path("glob") / eval('cmd')): ${part}`,
      );
  }
  return decl;
}

function parseScriptSection(text: string, spans: [number, number][], offset: number): ScriptBlock {
  const inside = spans.filter(([s]) => s >= offset && s < offset + text.length);
  if (inside.length !== 1) throw new NfError(`a script/stub section needs exactly one """ string`);
  const [s, e] = inside[0]!;
  const before = text.slice(0, s - offset);
  const after = text.slice(e - offset);
  if (codeLines(after).length) throw new NfError(`unexpected code after the """ string: ${after.trim()}`);
  const defs = codeLines(before).map((line) => {
    const m = /^def\s+([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.+)$/.exec(line);
    if (!m) throw new NfError(`unsupported statement in script section (only def x = …): ${line}`);
    return { name: m[1]!, expr: m[2]! };
  });
  return { defs, template: text.slice(s - offset + 3, e - offset - 3) };
}

export function parseProcess(source: string): NfProcess {
  const head = /^process\s+([A-Z][A-Z0-9_]*)\s*\{/m.exec(source);
  if (!head) throw new NfError('no `process NAME {` found');
  const bodyStart = head.index + head[0].length;
  const bodyEnd = source.lastIndexOf('}');
  if (bodyEnd < bodyStart) throw new NfError('process body is not closed');
  const body = source.slice(bodyStart, bodyEnd);
  if (/^\s*process\s/m.test(source.slice(bodyEnd))) throw new NfError('one process per file');

  const spans = tripleQuotedSpans(body);
  const inString = (pos: number) => spans.some(([s, e]) => pos >= s && pos < e);
  const labels = [...body.matchAll(SECTION)].filter((m) => !inString(m.index));
  const sections = new Map<string, { text: string; offset: number }>();
  labels.forEach((m, i) => {
    const start = m.index + m[0].length;
    const end = labels[i + 1]?.index ?? body.length;
    if (sections.has(m[1]!)) throw new NfError(`section ${m[1]}: appears twice`);
    sections.set(m[1]!, { text: body.slice(start, end), offset: start });
  });
  for (const name of ['shell', 'exec'])
    if (sections.has(name)) throw new NfError(`section ${name}: is not supported`);

  const directives = codeLines(body.slice(0, labels[0]?.index ?? body.length)).map((line) => {
    const m = /^([a-zA-Z]+)\s+(.+)$/.exec(line);
    if (!m) throw new NfError(`unsupported directive: ${line}`);
    return { name: m[1]!, value: m[2]! };
  });
  const script = sections.get('script');
  if (!script) throw new NfError('no script: section');
  const stub = sections.get('stub');
  const when = sections.get('when');
  return {
    name: head[1]!,
    directives,
    inputs: codeLines(sections.get('input')?.text ?? '').map(parseInput),
    outputs: codeLines(sections.get('output')?.text ?? '').map(parseOutput),
    when: when ? codeLines(when.text).join(' ') : undefined,
    script: parseScriptSection(script.text, spans, script.offset),
    stub: stub ? parseScriptSection(stub.text, spans, stub.offset) : undefined,
  };
}

// ---- expressions and GStrings ----

/** Groovy truth: null, false, 0, '' and empty collections are false. */
export function groovyTruth(v: Value): boolean {
  if (v === null || v === false || v === 0 || v === '') return false;
  if (Array.isArray(v)) return v.length > 0;
  if (typeof v === 'object') return Object.keys(v).length > 0;
  return true;
}

/** How Groovy/Nextflow write a value into a string; a list of staged files is blank-separated. */
export function groovyString(v: Value): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return v.map(groovyString).join(' ');
  if (typeof v === 'object') throw new NfError('interpolating a map is outside the supported subset');
  return String(v);
}

function resolvePath(path: string, scope: Scope): Value {
  const [root, ...props] = path.split('.');
  if (!Object.hasOwn(scope, root!)) throw new NfError(`No such property: ${root} (not an input or def)`);
  let cur: Value = scope[root!]!;
  let seen = root!;
  for (const prop of props) {
    if (cur === null) throw new NfError(`Cannot get property '${prop}' on null object (${seen})`);
    if (typeof cur !== 'object' || Array.isArray(cur))
      throw new NfError(`No such property: ${prop} for ${typeof cur} ${seen}`);
    cur = Object.hasOwn(cur, prop) ? cur[prop]! : null; // a missing map key is null in Groovy
    seen += `.${prop}`;
  }
  return cur;
}

function evalOperand(text: string, scope: Scope): Value {
  const t = text.trim();
  const q = quoted(t);
  if (q) return q.quote === '"' ? interpolate(q.body, scope) : unescapeSingleQuoted(q.body);
  if (t === 'null') return null;
  if (/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/.test(t)) return resolvePath(t, scope);
  throw new NfError(`unsupported expression: ${t}`);
}

/** `a ?: b ?: 'c'`: the first Groovy-true operand, else the last. */
export function evaluate(expr: string, scope: Scope): Value {
  const operands = splitTopLevel(expr, '?:');
  let v: Value = null;
  for (const op of operands) {
    v = evalOperand(op, scope);
    if (groovyTruth(v)) return v;
  }
  return v;
}

const ESCAPES: Record<string, string> = {
  n: '\n',
  t: '\t',
  r: '\r',
  b: '\b',
  f: '\f',
  '\\': '\\',
  '"': '"',
  "'": "'",
  $: '$',
  '\n': '', // backslash-newline: line continuation
};

function escapeAt(text: string, i: number): string {
  const c = text[i + 1];
  if (c === undefined || !Object.hasOwn(ESCAPES, c))
    throw new NfError(`unsupported escape \\${c ?? ''} (Groovy rejects it) near: ${text.slice(i, i + 20)}`);
  return ESCAPES[c]!;
}

function unescapeSingleQuoted(body: string): string {
  let out = '';
  for (let i = 0; i < body.length; i++) {
    if (body[i] === '\\') {
      out += escapeAt(body, i);
      i++;
    } else out += body[i];
  }
  return out;
}

/** Applies a GString body's escapes and interpolations. */
export function interpolate(body: string, scope: Scope): string {
  let out = '';
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    if (c === '\\') {
      out += escapeAt(body, i);
      i++;
    } else if (c === '$') {
      if (body[i + 1] === '{') {
        const close = body.indexOf('}', i + 2);
        const expr = body.slice(i + 2, close);
        if (close < 0 || expr.includes('{'))
          throw new NfError(`unsupported \${…} near: ${body.slice(i, i + 30)}`);
        out += groovyString(evaluate(expr, scope));
        i = close;
      } else {
        const m = /^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*/.exec(body.slice(i + 1));
        if (!m)
          throw new NfError(
            `a $ that starts no interpolation (write \\$ for the shell) near: ${body.slice(i, i + 30)}`,
          );
        out += groovyString(resolvePath(m[0], scope));
        i += m[0].length;
      }
    } else out += c;
  }
  return out;
}

/** Groovy's String.stripIndent(): remove the smallest indentation of the non-blank lines. */
export function stripIndent(text: string): string {
  const lines = text.split('\n');
  const indents = lines.filter((l) => l.trim() !== '').map((l) => /^[ \t]*/.exec(l)![0].length);
  const n = indents.length ? Math.min(...indents) : 0;
  return lines.map((l) => (l.trim() === '' ? '' : l.slice(n))).join('\n');
}

/** The text a task runs: defs evaluated in order, then the GString interpolated and de-indented. */
export function renderBlock(block: ScriptBlock, scope: Scope): { script: string; scope: Scope } {
  const local: Scope = { ...scope };
  for (const def of block.defs) local[def.name] = evaluate(def.expr, local);
  return { script: stripIndent(interpolate(block.template, local)).replace(/^\n/, ''), scope: local };
}

/** A Nextflow output glob (`*`, `?`) as a RegExp over one file name. */
export function globToRegExp(glob: string): RegExp {
  if (/[[\]{}/]/.test(glob)) throw new NfError(`glob outside the supported subset (* and ? only): ${glob}`);
  const re = glob
    .replace(/[.+^$()|\\]/g, '\\$&')
    .replace(/\*/g, '[^/]*')
    .replace(/\?/g, '[^/]');
  return new RegExp(`^${re}$`);
}
