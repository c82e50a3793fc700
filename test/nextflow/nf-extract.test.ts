// biome-ignore-all lint/suspicious/noTemplateCurlyInString: Groovy GStrings, not JS templates
// The reader the module tests rely on: Groovy's interpolation, escapes and errors where Groovy
// (or Nextflow) would fail, so a module that passes here is not wrong in a way Groovy would catch.
import { describe, expect, it } from 'vitest';
import { evaluate, globToRegExp, interpolate, parseProcess, renderBlock, stripIndent } from './nf-extract';

const scope = {
  meta: { id: 'env', single: true },
  image: 'env.img',
  images: ['a.img', 'b.img'],
  task: { process: 'OVERLAY_X', ext: { args: '--size 4G' } },
};

describe('GString interpolation', () => {
  it('interpolates ${expr} and $dotted.path, and writes a list blank-separated', () => {
    expect(interpolate('x ${meta.id} $meta.id ${image} ${images}', scope)).toBe(
      'x env env env.img a.img b.img',
    );
    expect(interpolate('${task.ext.args}', scope)).toBe('--size 4G');
  });
  it('applies Groovy escapes: \\$ for the shell, \\\\n for a literal backslash-n', () => {
    expect(interpolate('\\$(overlayctl --version) \\$1', scope)).toBe('$(overlayctl --version) $1');
    expect(interpolate("printf '%s\\\\n'", scope)).toBe("printf '%s\\n'");
    expect(interpolate('a\\nb', scope)).toBe('a\nb');
    expect(interpolate('one \\\ntwo', scope)).toBe('one two');
  });
  it('rejects what Groovy rejects', () => {
    expect(() => interpolate('echo $(date)', scope)).toThrow(/starts no interpolation/);
    expect(() => interpolate('echo $?', scope)).toThrow(/starts no interpolation/);
    expect(() => interpolate('grep \\d', scope)).toThrow(/unsupported escape/);
    // "$image.img" is a property `img` of a String in Groovy, not a file name
    expect(() => interpolate('$image.img', scope)).toThrow(/No such property: img/);
    expect(() => interpolate('${prefix}', scope)).toThrow(/No such property: prefix/);
    expect(() => interpolate('${meta.x.y}', scope)).toThrow(/on null object/);
  });
  it('a missing map key is null (and prints as "null")', () => {
    expect(interpolate('${task.ext.prefix}', scope)).toBe('null');
  });
});

describe('expressions', () => {
  it('evaluates the Elvis operator with Groovy truth', () => {
    expect(evaluate('task.ext.prefix ?: "${meta.id}"', scope)).toBe('env');
    expect(evaluate("task.ext.args ?: ''", scope)).toBe('--size 4G');
    expect(evaluate("task.ext.missing ?: ''", scope)).toBe('');
    expect(evaluate("'' ?: null", scope)).toBe(null);
    expect(evaluate("'a ?: b'", scope)).toBe('a ?: b');
  });
  it('refuses anything outside the subset', () => {
    expect(() => evaluate('"a" + "b"', scope)).toThrow(/unsupported expression/);
    expect(() => evaluate('meta.id.toUpperCase()', scope)).toThrow(/unsupported expression/);
  });
});

describe('stripIndent and globs', () => {
  it('removes the common indentation, ignoring blank lines', () => {
    expect(stripIndent('\n    a\n      b\n\n    c\n    ')).toBe('\na\n  b\n\nc\n');
  });
  it('turns * and ? into one-name patterns', () => {
    expect(globToRegExp('*.check.json').test('env.check.json')).toBe(true);
    expect(globToRegExp('*.check.json').test('env.checkXjson')).toBe(false);
    expect(globToRegExp('versions.yml').test('versions.yml')).toBe(true);
    expect(() => globToRegExp('*.{a,b}')).toThrow(/supported subset/);
  });
});

describe('parseProcess', () => {
  const source = `process DEMO {
    tag "$meta.id"
    label 'process_single'

    input:
    tuple val(meta), path(image)
    val size

    output:
    tuple val(meta), path("*.img"), emit: image
    path "versions.yml"           , emit: versions, optional: true

    when:
    task.ext.when == null || task.ext.when

    script:
    def prefix = task.ext.prefix ?: "\${meta.id}"
    // a comment
    """
    echo "output: not a section" > "\${prefix}.img"
    cat <<-END
    x
    END
    """

    stub:
    """
    touch x.img
    """
}
`;
  it('reads directives, typed inputs, outputs with emit names, when, script and stub', () => {
    const p = parseProcess(source);
    expect(p.name).toBe('DEMO');
    expect(p.directives).toEqual([
      { name: 'tag', value: '"$meta.id"' },
      { name: 'label', value: "'process_single'" },
    ]);
    expect(p.inputs.map((i) => i.items)).toEqual([
      [
        { kind: 'val', name: 'meta' },
        { kind: 'path', name: 'image' },
      ],
      [{ kind: 'val', name: 'size' }],
    ]);
    expect(p.outputs.map((o) => [o.emit, o.optional, o.items])).toEqual([
      [
        'image',
        false,
        [
          { kind: 'val', name: 'meta' },
          { kind: 'path', pattern: '*.img', quote: '"' },
        ],
      ],
      ['versions', true, [{ kind: 'path', pattern: 'versions.yml', quote: '"' }]],
    ]);
    expect(p.when).toBe('task.ext.when == null || task.ext.when');
    expect(p.script.defs).toEqual([{ name: 'prefix', expr: 'task.ext.prefix ?: "${meta.id}"' }]);
    const { script } = renderBlock(p.script, {
      meta: { id: 's1' },
      image: 'a.img',
      size: '1G',
      task: { ext: {} },
    });
    expect(script).toBe('echo "output: not a section" > "s1.img"\ncat <<-END\nx\nEND\n');
    expect(p.stub?.template.trim()).toBe('touch x.img');
  });
  it("reads nf-core's topic-channel versions: val of a quoted string, eval of a command, topic:", () => {
    const p = parseProcess(
      source.replace(
        'path "versions.yml"           , emit: versions, optional: true',
        `tuple val("\${task.process}"), val('tool'), eval("tool --version | sed 's/, x//'"), emit: versions_tool, topic: versions`,
      ),
    );
    expect(p.outputs[1]).toMatchObject({
      emit: 'versions_tool',
      topic: 'versions',
      optional: false,
      items: [
        { kind: 'val', expr: '"${task.process}"' },
        { kind: 'val', expr: "'tool'" },
        { kind: 'eval', pattern: "tool --version | sed 's/, x//'", quote: '"' },
      ],
    });
    expect(evaluate(p.outputs[1]!.items[0]!.expr!, { task: { process: 'DEMO' } })).toBe('DEMO');
    expect(() => parseProcess(source.replace('val size', 'val size\n    eval x'))).toThrow(
      /unsupported input/,
    );
  });
  it('refuses statements the subset does not cover', () => {
    expect(() => parseProcess(source.replace('// a comment', 'if (x) { error "no" }'))).toThrow(
      /only def x = /,
    );
    expect(() => parseProcess(source.replace('val size', 'val(size), stageAs: "x"'))).toThrow(/unsupported/);
  });
});
