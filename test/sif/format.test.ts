// The SIF module against SIF files made by Apptainer itself: parsing agrees with `apptainer sif
// list`, rewrites keep ids and every other object byte for byte, layers wrapped in SIF work as
// `--overlay x.sif:ro` and come back byte-identical.
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { layerFromSif, readSif, rewriteSif, wrapLayerInSif } from '../../packages/core/src/sif/index';
import { ensureBaseImage } from '../helpers/base-image';
import { makeLayer } from '../runtime/helpers';

let dir: string;
let base: string;

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
/** sha256 of the bytes [offset, offset+size) of a file. */
function rangeSha(path: string, offset: number, size: number): string {
  return sha(readFileSync(path).subarray(offset, offset + size));
}

/** `apptainer sif list` rows: id, group, link, start, end, type. */
async function sifList(path: string) {
  const r = await execa('apptainer', ['sif', 'list', path]);
  return r.stdout
    .split('\n')
    .map((l) => /^(\d+)\s*\|(\S+)\s*\|(\S+)\s*\|(\d+)-(\d+)\s*\|(.*)$/.exec(l.trim()))
    .filter((m) => m !== null)
    .map((m) => ({
      id: Number(m[1]),
      group: m[2],
      start: Number(m[4]),
      end: Number(m[5]),
      type: m[6]!.trim(),
    }));
}

async function withOverlay(name: string, sizeMiB = 64): Promise<string> {
  const sif = join(dir, name);
  copyFileSync(base, sif);
  await execa('apptainer', ['overlay', 'create', '--size', String(sizeMiB), sif]);
  return sif;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ov-sif-format-'));
  base = await ensureBaseImage();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('readSif', () => {
  it('agrees with apptainer sif list on a SIF with an overlay partition', async () => {
    const sif = await withOverlay('list.sif');
    const file = await readSif(sif);
    const listed = await sifList(sif);
    expect(file.descriptors.map((d) => [d.id, d.offset, d.offset + d.size])).toEqual(
      listed.map((l) => [l.id, l.start, l.end]),
    );
    const overlay = file.descriptors.find((d) => d.partition?.part === 'overlay')!;
    expect(overlay.partition).toMatchObject({ fs: 'ext3', part: 'overlay', archName: 'amd64' });
    expect(overlay.groupId).toBe(1);
    expect(file.descriptors.find((d) => d.partition?.part === 'primarySystem')?.partition?.fs).toBe(
      'squashfs',
    );
    expect(file.header.version).toBe('01');
  });

  it('refuses a truncated SIF and a non-SIF with coded errors', async () => {
    const sif = await withOverlay('trunc.sif');
    const cut = join(dir, 'cut.sif');
    writeFileSync(cut, readFileSync(sif).subarray(0, statSync(sif).size - 4096 * 10));
    await expect(readSif(cut)).rejects.toMatchObject({ code: 'E_INTEGRITY' });
    const notSif = join(dir, 'not.sif');
    writeFileSync(notSif, Buffer.alloc(8192));
    await expect(readSif(notSif)).rejects.toMatchObject({ code: 'E_UNKNOWN_FORMAT' });
  });
});

describe('rewriteSif', () => {
  it('replaces the overlay partition with a bigger one: same ids, header id, container bytes', async () => {
    const sif = await withOverlay('grow.sif');
    const before = await readSif(sif);
    const root = before.descriptors.find((d) => d.partition?.part === 'primarySystem')!;
    const overlay = before.descriptors.find((d) => d.partition?.part === 'overlay')!;
    const rootSum = rangeSha(sif, root.offset, root.size);
    const img = join(dir, 'bigger.img');
    const layout = join(dir, 'layout');
    mkdirSync(join(layout, 'upper'), { recursive: true });
    mkdirSync(join(layout, 'work'), { recursive: true });
    await execa('truncate', ['-s', '96M', img]);
    await execa('mkfs.ext3', ['-F', '-q', '-d', layout, img]);
    const { sif: after, id } = await rewriteSif(sif, { kind: 'replace', id: overlay.id, source: img });
    expect(id).toBe(overlay.id);
    expect(after.header.id).toBe(before.header.id);
    expect(after.descriptors.map((d) => d.id)).toEqual(before.descriptors.map((d) => d.id));
    const newOverlay = after.descriptors.find((d) => d.id === overlay.id)!;
    expect(newOverlay.size).toBe(96 * 2 ** 20);
    expect(newOverlay.offset).toBe(overlay.offset);
    expect(rangeSha(sif, root.offset, root.size)).toBe(rootSum);
    expect(rangeSha(sif, newOverlay.offset, newOverlay.size)).toBe(sha(readFileSync(img)));
    const listed = await sifList(sif);
    expect(listed.find((l) => l.id === overlay.id)).toMatchObject({ end: overlay.offset + 96 * 2 ** 20 });
    // Apptainer runs it, writing into the new overlay
    const r = await execa('apptainer', ['exec', '--writable', sif, 'sh', '-c', 'echo hi > /x && cat /x']);
    expect(r.stdout).toBe('hi');
  });

  it('moves objects after the changed one, keeping their bytes and alignment', async () => {
    const sif = await withOverlay('move.sif');
    const extra = join(dir, 'extra.json');
    writeFileSync(extra, JSON.stringify({ hello: 'world' }));
    await execa('apptainer', ['sif', 'add', '--datatype', '6', '--groupid', '1', sif, extra]);
    const before = await readSif(sif);
    const overlay = before.descriptors.find((d) => d.partition?.part === 'overlay')!;
    const json = before.descriptors.find((d) => d.type === 'genericJson' && d.offset > overlay.offset)!;
    const img = join(dir, 'small.img');
    await execa('truncate', ['-s', '40M', img]);
    await execa('mkfs.ext3', ['-F', '-q', img]);
    const { sif: after } = await rewriteSif(sif, { kind: 'replace', id: overlay.id, source: img });
    const moved = after.descriptors.find((d) => d.id === json.id)!;
    expect(moved.offset).toBeLessThan(json.offset);
    expect(
      readFileSync(sif)
        .subarray(moved.offset, moved.offset + moved.size)
        .toString(),
    ).toBe('{"hello":"world"}');
    expect((await sifList(sif)).map((l) => l.id)).toEqual(before.descriptors.map((d) => d.id));
    const dump = await execa('apptainer', ['sif', 'dump', String(json.id), sif]);
    expect(dump.stdout).toBe('{"hello":"world"}');
  });

  it('removes and adds a partition like apptainer sif del/add do (ids by slot)', async () => {
    const sif = await withOverlay('del.sif');
    const before = await readSif(sif);
    const overlay = before.descriptors.find((d) => d.partition?.part === 'overlay')!;
    const { sif: removed } = await rewriteSif(sif, { kind: 'remove', id: overlay.id });
    expect(removed.descriptors.map((d) => d.id)).not.toContain(overlay.id);
    expect(removed.fileSize).toBe(overlay.offset);
    expect((await sifList(sif)).length).toBe(before.descriptors.length - 1);
    const img = join(dir, 'add.img');
    await execa('truncate', ['-s', '64M', img]);
    await execa('mkfs.ext3', ['-F', '-q', img]);
    const { id } = await rewriteSif(sif, {
      kind: 'add',
      source: img,
      groupId: 1,
      partition: { fsType: 2, partType: 4, arch: '02' },
    });
    expect(id).toBe(overlay.id);
    const listed = await sifList(sif);
    expect(listed.at(-1)).toMatchObject({
      id: overlay.id,
      type: 'FS (Ext3/Overlay/amd64)',
      start: overlay.offset,
    });
  });
});

describe('SquashFS layers in SIF (registry form)', () => {
  it('wrapLayerInSif makes what apptainer sif add makes, usable as --overlay x.sif:ro', async () => {
    const layer = await makeLayer(join(dir, 'layer.sqfs'), { '/opt/layer/hello.txt': 'from the layer\n' });
    const out = join(dir, 'layer.sif');
    const r = await wrapLayerInSif(layer, out);
    expect(r.path).toBe(out);
    // the same fields as a SIF Apptainer builds with the documented flags
    const ref = join(dir, 'ref.sif');
    await execa('apptainer', ['sif', 'new', ref]);
    await execa('apptainer', [
      'sif',
      'add',
      '--datatype',
      '4',
      '--partfs',
      '1',
      '--parttype',
      '4',
      '--partarch',
      '2',
      '--groupid',
      '1',
      ref,
      layer,
    ]);
    const [ours, theirs] = [await readSif(out), await readSif(ref)];
    const pick = (d: (typeof ours.descriptors)[0]) => ({
      dataType: d.dataType,
      id: d.id,
      groupId: d.groupId,
      offset: d.offset,
      size: d.size,
      partition: d.partition,
    });
    expect(ours.descriptors.map(pick)).toEqual(theirs.descriptors.map(pick));
    expect(await sifList(out)).toEqual(await sifList(ref));
    const run = await execa('apptainer', [
      'exec',
      '--overlay',
      `${out}:ro`,
      base,
      'cat',
      '/opt/layer/hello.txt',
    ]);
    expect(run.stdout).toBe('from the layer');
    // deterministic: the same layer gives the same bytes (same registry digest)
    const again = join(dir, 'layer2.sif');
    await wrapLayerInSif(layer, again);
    expect(sha(readFileSync(again))).toBe(sha(readFileSync(out)));
  });

  it('layerFromSif gives the layer back byte-identical; refuses a container SIF', async () => {
    const layer = await makeLayer(join(dir, 'l2.sqfs'), { '/a/b.txt': 'b\n' });
    const wrapped = join(dir, 'l2.sif');
    await wrapLayerInSif(layer, wrapped);
    const back = join(dir, 'l2.back.sqfs');
    const r = await layerFromSif(wrapped, back);
    expect(r.sizeBytes).toBe(statSync(layer).size);
    expect(sha(readFileSync(back))).toBe(sha(readFileSync(layer)));
    await expect(layerFromSif(base, join(dir, 'x.sqfs'))).rejects.toMatchObject({ code: 'E_UNKNOWN_FORMAT' });
    await expect(wrapLayerInSif(base, join(dir, 'y.sif'))).rejects.toMatchObject({
      code: 'E_UNKNOWN_FORMAT',
    });
  });
});
