// The embedded overlay as root, on SIF files made by Apptainer (`apptainer overlay create` on the
// test base image): info, check (clean, damaged inside the partition), repair, create with a
// profile, embed, extract, grow and shrink, refusals, exec; each change followed by `apptainer
// exec --writable` reading and writing files, and the container partition's sha256 unchanged.
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lockedSifOverlay, wrapLayerInSif } from '../../packages/core/src/sif/index';
import { ensureBaseImage } from '../helpers/base-image';
import { lastJson, makeLayer, overlayctl } from '../runtime/helpers';
import {
  apptainerWritable,
  containerSha,
  fileSha,
  otherObjects,
  overlayObject,
  sifList,
  sifWithOverlay,
} from './helpers';

let dir: string;
let base: string;
let baseContainer: string;
// biome-ignore lint/suspicious/noExplicitAny: the CLI's JSON output
type Json = any;

async function ctl(args: string[]) {
  const r = await overlayctl([...args, '--json']);
  return { code: r.exitCode, out: lastJson(r.stdout) as Record<string, Json>, stderr: r.stderr };
}

/** Damage the overlay's metadata in place (through e2fsprogs' ?offset=, so only partition bytes change). */
async function damageOverlay(sif: string): Promise<void> {
  const o = (await overlayObject(sif))!;
  await execa('debugfs', ['-w', '-f', '-', `${sif}?offset=${o.start}`], {
    input: 'set_bg 0 free_blocks_count 7\nsif /upper links_count 9\n',
  });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ov-sif-'));
  base = await ensureBaseImage();
  baseContainer = await containerSha(base);
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('the three forms', () => {
  it('a directory overlay (docs/overlay-forms.md): Apptainer fills upper/ and work/', async () => {
    const ovdir = join(dir, 'ovdir');
    mkdirSync(ovdir);
    await execa('apptainer', ['exec', '--overlay', ovdir, base, 'sh', '-c', 'echo x > /opt/d']);
    expect(readFileSync(join(ovdir, 'upper/opt/d'), 'utf8')).toBe('x\n');
    expect(existsSync(join(ovdir, 'work'))).toBe(true);
  });
});

describe('info', () => {
  it('lists the objects and gives the embedded overlay the facts of a standalone image', async () => {
    const sif = await sifWithOverlay(base, join(dir, 'info.sif'), 64);
    const r = await ctl(['info', sif]);
    expect(r.code).toBe(0);
    const listed = await sifList(sif);
    expect(r.out.sif.objects.map((o: Json) => [o.id, o.offset, o.offset + o.size])).toEqual(
      listed.map((l) => [l.id, l.start, l.end]),
    );
    const overlay = (await overlayObject(sif))!;
    expect(r.out.sif.overlayId).toBe(overlay.id);
    expect(r.out.sif.signed).toBe(false);
    expect(r.out).toMatchObject({
      format: 'ext3',
      sizeBytes: 64 * 2 ** 20,
      clean: true,
      apptainerCompatible: true,
      upper: { uid: 0, gid: 0 },
    });
    // the same facts as the partition copied out as a plain image
    const img = join(dir, 'info.img');
    writeFileSync(img, readFileSync(sif).subarray(overlay.start, overlay.end));
    const plain = await ctl(['info', img]);
    for (const k of ['usedBytes', 'freeBytes', 'inodesTotal', 'inodesUsed', 'inodeRatio', 'uuid', 'upper'])
      expect(r.out[k], k).toEqual(plain.out[k]);
  });

  it('finds an overlay added the documented manual way (apptainer sif add --partfs 2 --parttype 4)', async () => {
    const img = join(dir, 'manual.img');
    expect((await ctl(['create', img, '--size', '64M'])).code).toBe(0);
    const sif = join(dir, 'manual.sif');
    copyFileSync(base, sif);
    await execa('apptainer', [
      'sif',
      'add',
      '--datatype',
      '4',
      '--partfs',
      '2',
      '--parttype',
      '4',
      '--partarch',
      '2',
      '--groupid',
      '1',
      sif,
      img,
    ]);
    const r = await ctl(['info', sif]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.out).toMatchObject({ format: 'ext3', apptainerCompatible: true });
    expect((await ctl(['check', sif])).out.images[0].status).toBe('clean');
    const w = await apptainerWritable(sif, 'echo m > /opt/m && cat /opt/m');
    expect(w.stdout).toBe('m');
  });

  it('a SIF without an overlay: info lists it, other commands say so clearly', async () => {
    const info = await ctl(['info', base]);
    expect(info.code).toBe(0);
    expect(info.out).toMatchObject({ format: 'sif', apptainerCompatible: false, sif: { overlayId: null } });
    expect(info.out.sif.objects.some((o: Json) => o.partType === 'primarySystem')).toBe(true);
    const check = await ctl(['check', base]);
    expect(check.code).toBe(1);
    expect(check.out.images[0].error.code).toBe('E_NOT_EXT3');
    expect(check.out.images[0].error.message).toMatch(/without a writable overlay partition/);
    const resize = await ctl(['resize', base, '--size', '128']);
    expect(resize.code).toBe(2);
    expect(resize.out.error.code).toBe('E_NOT_EXT3');
    expect(resize.out.error.hint).toMatch(/overlayctl create/);
    const text = await overlayctl(['chown', base, '--uid', '1000', '--gid', '1000']);
    expect(text.stderr).toMatch(/SIF container file/);
    expect(text.stderr).not.toMatch(/E_UNKNOWN_FORMAT/);
    expect(await containerSha(base)).toBe(baseContainer);
  });
});

describe('big overlays', () => {
  it('info and check read only the metadata: they work with a TMPDIR far smaller than the data', async () => {
    const sif = await sifWithOverlay(base, join(dir, 'big.sif'), 256);
    const w = await apptainerWritable(sif, 'head -c 120000000 /dev/urandom > /opt/big && echo ok');
    expect(w.stdout).toBe('ok');
    const small = join(dir, 'small-tmp');
    mkdirSync(small);
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'tmpfs', small]);
    try {
      const env = { TMPDIR: small };
      const info = await overlayctl(['info', sif, '--json'], { env });
      expect(info.exitCode, info.stderr).toBe(0);
      expect(lastJson(info.stdout).usedBytes).toBeGreaterThan(120_000_000);
      const check = await overlayctl(['check', sif, '--json'], { env });
      expect(check.exitCode, check.stderr).toBe(0);
      expect((lastJson(check.stdout).images as Json[])[0].status).toBe('clean');
    } finally {
      await execa('umount', [small]);
    }
  });
});

describe('concurrent writers', () => {
  it('two resizes at once: each succeeds or says E_LOCKED, and the SIF ends valid with the data', async () => {
    const sif = await sifWithOverlay(base, join(dir, 'race.sif'), 64);
    expect((await apptainerWritable(sif, 'echo race > /opt/race')).exitCode).toBe(0);
    const ids = (await sifList(sif)).map((o) => o.id);
    const results = await Promise.all([
      ctl(['resize', sif, '--size', '160M']),
      ctl(['resize', sif, '--size', '96M']),
    ]);
    for (const r of results)
      expect(r.code === 0 || r.out.error?.code === 'E_LOCKED', JSON.stringify(r.out)).toBe(true);
    expect(results.some((r) => r.code === 0)).toBe(true);
    expect((await sifList(sif)).map((o) => o.id)).toEqual(ids);
    expect([160, 96].map((m) => m * 2 ** 20)).toContain((await ctl(['info', sif])).out.sizeBytes);
    expect((await ctl(['check', sif])).out.images[0].status).toBe('clean');
    expect((await apptainerWritable(sif, 'cat /opt/race')).stdout).toBe('race');
  });

  it('two creates on one SIF at once: one succeeds, the other says E_LOCKED/E_EXISTS', async () => {
    const sif = join(dir, 'race-create.sif');
    copyFileSync(base, sif);
    const results = await Promise.all([
      ctl(['create', sif, '--size', '64M']),
      ctl(['create', sif, '--size', '80M', '--profile', 'small']),
    ]);
    // the loser says so: never a reported success whose overlay the other writer threw away
    expect(results.filter((r) => r.code === 0)).toHaveLength(1);
    for (const r of results) if (r.code !== 0) expect(['E_LOCKED', 'E_EXISTS']).toContain(r.out.error.code);
    expect((await sifList(sif)).filter((o) => o.type.includes('Overlay'))).toHaveLength(1);
    expect((await apptainerWritable(sif, 'echo one > /opt/one && cat /opt/one')).stdout).toBe('one');
  });
});

describe('full disk', () => {
  it('resize that runs out of space: E_NO_SPACE, the SIF byte-identical, no temp file left', async () => {
    const small = join(dir, 'small-disk');
    mkdirSync(small);
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=160m', 'tmpfs', small]);
    try {
      const sif = await sifWithOverlay(base, join(small, 'full.sif'), 64); // allocated: stays allocated
      const before = fileSha(sif);
      const r = await ctl(['resize', sif, '--size', '256M']);
      expect(r.code).toBe(74);
      expect(r.out.error.code).toBe('E_NO_SPACE');
      expect(fileSha(sif)).toBe(before);
      expect(readdirSync(small)).toEqual(['full.sif']);
      expect((await apptainerWritable(sif, 'echo fine')).stdout).toBe('fine');
    } finally {
      await execa('umount', [small]);
    }
  });
});

describe('damaged SIF files', () => {
  it('a SIF truncated inside its overlay: E_INTEGRITY from info, check and resize, file untouched', async () => {
    const sif = await sifWithOverlay(base, join(dir, 'cut.sif'), 64);
    const o = (await overlayObject(sif))!;
    await execa('truncate', ['-s', String(o.start + 2 ** 20), sif]);
    const before = fileSha(sif);
    const info = await ctl(['info', sif]);
    expect(info.code).toBe(65);
    expect(info.out.error.code).toBe('E_INTEGRITY');
    expect(info.out.error.message).toMatch(/truncated/);
    const check = await ctl(['check', sif]);
    expect(check.code).toBe(1);
    expect(check.out.images[0]).toMatchObject({ status: 'corrupt', error: { code: 'E_INTEGRITY' } });
    const resize = await ctl(['resize', sif, '--size', '128M']);
    expect(resize.out.error.code).toBe('E_INTEGRITY');
    expect(fileSha(sif)).toBe(before);
  });

  it('a hostile descriptor count is refused before anything is allocated', async () => {
    const sif = join(dir, 'hostile.sif');
    copyFileSync(base, sif);
    const fh = await (await import('node:fs/promises')).open(sif, 'r+');
    const b = Buffer.alloc(16);
    b.writeBigInt64LE(10n ** 9n, 0); // descriptorsTotal
    b.writeBigInt64LE(10n ** 9n * 585n, 8);
    await fh.write(b, 0, 16, 88);
    await fh.close();
    const info = await ctl(['info', sif]);
    expect(info.code).toBe(65);
    expect(info.out.error.message).toMatch(/descriptor table/);
  });
});

describe('check and repair', () => {
  it('clean, then damaged inside the partition: corrupt, repaired, Apptainer runs it', async () => {
    const sif = await sifWithOverlay(base, join(dir, 'check.sif'), 64);
    const w = await apptainerWritable(sif, 'echo kept > /opt/kept.txt');
    expect(w.exitCode, w.stderr).toBe(0);
    const objects = await otherObjects(sif);
    const clean = await ctl(['check', sif]);
    expect(clean.code).toBe(0);
    expect(clean.out.images[0].status).toBe('clean');

    await damageOverlay(sif);
    expect(await otherObjects(sif)).toEqual(objects); // the damage is inside the partition only
    const damaged = fileSha(sif);
    const corrupt = await ctl(['check', sif]);
    expect(corrupt.code).toBe(1);
    expect(corrupt.out.images[0].status).toBe('corrupt');
    expect(corrupt.out.images[0].problems.join(' ')).toMatch(/ref count|Free blocks/);
    expect(fileSha(sif)).toBe(damaged); // a check never writes

    const repaired = await ctl(['check', '--repair', sif]);
    expect(repaired.code).toBe(0);
    expect(repaired.out.images[0].status).toBe('repaired');
    expect(await otherObjects(sif)).toEqual(objects);
    expect(await containerSha(sif)).toBe(baseContainer);
    expect((await ctl(['check', sif])).out.images[0].status).toBe('clean');
    const r = await apptainerWritable(
      sif,
      'cat /opt/kept.txt && echo more > /opt/more.txt && cat /opt/more.txt',
    );
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toBe('kept\nmore');
  });
});

describe('create, embed, extract', () => {
  it('create on an existing SIF adds an overlay partition with our profile', async () => {
    const sif = join(dir, 'create.sif');
    copyFileSync(base, sif);
    const r = await ctl(['create', sif, '--size', '128M', '--profile', 'large']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.out).toMatchObject({ format: 'ext3', inodeRatio: 1048576, apptainerCompatible: true });
    const overlay = (await overlayObject(sif))!;
    expect(overlay.type).toBe('FS (Ext3/Overlay/amd64)');
    expect(overlay.group).toBe('1');
    expect(overlay.end - overlay.start).toBe(128 * 2 ** 20);
    expect(await containerSha(sif)).toBe(baseContainer);
    const w = await apptainerWritable(sif, 'echo x > /opt/x && cat /opt/x /etc/lowerdir/a');
    expect(w.exitCode, w.stderr).toBe(0);
    expect(w.stdout).toBe('x\nlower a');
    // Apptainer refuses a second overlay; so do we, leaving the SIF as it is
    const before = fileSha(sif);
    const again = await ctl(['create', sif, '--size', '64M']);
    expect(again.code).toBe(2);
    expect(again.out.error.code).toBe('E_EXISTS');
    expect(fileSha(sif)).toBe(before);
  });

  it('embed an image into a SIF, extract it back (sparse, same bytes)', async () => {
    const img = join(dir, 'standalone.img');
    expect((await ctl(['create', img, '--size', '96M'])).code).toBe(0);
    const put = await execa('apptainer', [
      'exec',
      '--overlay',
      img,
      base,
      'sh',
      '-c',
      'echo embedded > /opt/e.txt',
    ]);
    expect(put.exitCode).toBe(0);
    const imgSum = fileSha(img);
    const sif = join(dir, 'embed.sif');
    copyFileSync(base, sif);
    const e = await ctl(['embed', img, sif]);
    expect(e.code, e.stderr).toBe(0);
    expect(e.out.sif.overlayId).not.toBeNull();
    expect(fileSha(img)).toBe(imgSum); // the source image is left as it was
    expect(await containerSha(sif)).toBe(baseContainer);
    const w = await apptainerWritable(sif, 'cat /opt/e.txt && echo second > /opt/s.txt');
    expect(w.exitCode, w.stderr).toBe(0);
    expect(w.stdout).toBe('embedded');

    const out = join(dir, 'extracted.img');
    const x = await ctl(['extract', sif, out]);
    expect(x.code, x.stderr).toBe(0);
    expect(x.out.sparse).toBe(true);
    expect(x.out.allocatedBytes).toBeLessThan(x.out.sizeBytes);
    const o = (await overlayObject(sif))!;
    const partition = readFileSync(sif).subarray(o.start, o.end);
    expect(fileSha(out)).toBe(createHash('sha256').update(partition).digest('hex'));
    const read = await execa('apptainer', [
      'exec',
      '--overlay',
      `${out}:ro`,
      base,
      'cat',
      '/opt/e.txt',
      '/opt/s.txt',
    ]);
    expect(read.stdout).toBe('embedded\nsecond');
    expect((await ctl(['extract', sif, out])).out.error.code).toBe('E_EXISTS');
  });

  it('refuses a signed or encrypted SIF, as Apptainer does', async () => {
    const signed = join(dir, 'signed.sif');
    copyFileSync(base, signed);
    const sig = join(dir, 'sig.asc');
    writeFileSync(sig, '-----BEGIN PGP SIGNATURE-----\nnot a real one\n-----END PGP SIGNATURE-----\n');
    await execa('apptainer', [
      'sif',
      'add',
      '--datatype',
      '5',
      '--signhash',
      '1',
      '--signentity',
      '0123456789ABCDEF0123456789ABCDEF01234567',
      '--link',
      '3',
      signed,
      sig,
    ]);
    const before = fileSha(signed);
    const c = await ctl(['create', signed, '--size', '64M']);
    expect(c.code).toBe(2);
    expect(c.out.error.code).toBe('E_INVALID_INPUT');
    expect(c.out.error.message).toMatch(/signed/);
    expect(fileSha(signed)).toBe(before);
    const ours = await execa('apptainer', ['overlay', 'create', '--size', '64', signed], { reject: false });
    expect(ours.exitCode).not.toBe(0); // Apptainer refuses it too

    // with an overlay partition and then signed: resize and repair refused, a check still reads it
    const signedOverlay = await sifWithOverlay(base, join(dir, 'signed-overlay.sif'), 64);
    await execa('apptainer', [
      'sif',
      'add',
      '--datatype',
      '5',
      '--signhash',
      '1',
      '--signentity',
      '0123456789ABCDEF0123456789ABCDEF01234567',
      '--link',
      '3',
      signedOverlay,
      sig,
    ]);
    const signedSum = fileSha(signedOverlay);
    const rs = await ctl(['resize', signedOverlay, '--size', '128M']);
    expect(rs.code).toBe(2);
    expect(rs.out.error.message).toMatch(/signed/);
    const rp = await ctl(['check', '--repair', signedOverlay]);
    expect(rp.out.images[0].error.code).toBe('E_INVALID_INPUT');
    expect((await ctl(['check', signedOverlay])).out.images[0].status).toBe('clean');
    expect(fileSha(signedOverlay)).toBe(signedSum);

    const encrypted = join(dir, 'encrypted.sif');
    await execa('apptainer', ['sif', 'new', encrypted]);
    await execa('apptainer', [
      'sif',
      'add',
      '--datatype',
      '4',
      '--partfs',
      '5',
      '--parttype',
      '2',
      '--partarch',
      '2',
      '--groupid',
      '1',
      encrypted,
      sig,
    ]);
    const img = join(dir, 'for-enc.img');
    expect((await ctl(['create', img, '--size', '64M'])).code).toBe(0);
    const e = await ctl(['embed', img, encrypted]);
    expect(e.code).toBe(2);
    expect(e.out.error.message).toMatch(/encrypted/);
  });
});

describe('resize', () => {
  it('grows and shrinks the embedded overlay: data intact, ids and other objects kept', async () => {
    const sif = await sifWithOverlay(base, join(dir, 'resize.sif'), 64);
    // an object after the overlay, which must move with the resize and keep its bytes
    const extra = join(dir, 'after.json');
    writeFileSync(extra, '{"after":"overlay"}');
    await execa('apptainer', ['sif', 'add', '--datatype', '6', '--groupid', '1', sif, extra]);
    const w = await apptainerWritable(sif, 'head -c 3000000 /dev/urandom > /opt/blob && md5sum /opt/blob');
    expect(w.exitCode, w.stderr).toBe(0);
    const blobSum = w.stdout;
    const ids = (await sifList(sif)).map((o) => [o.id, o.type]);
    const objects = await otherObjects(sif);

    const grow = await ctl(['resize', sif, '--size', '256M']);
    expect(grow.code, grow.stderr).toBe(0);
    expect(grow.out).toMatchObject({
      changed: true,
      previousSizeBytes: 64 * 2 ** 20,
      sizeBytes: 256 * 2 ** 20,
    });
    expect((await sifList(sif)).map((o) => [o.id, o.type])).toEqual(ids);
    expect(await otherObjects(sif)).toEqual(objects);
    expect((await execa('apptainer', ['sif', 'dump', '5', sif])).stdout).toBe('{"after":"overlay"}');
    const afterGrow = await apptainerWritable(
      sif,
      'md5sum /opt/blob && head -c 100000000 /dev/zero > /opt/big',
    );
    expect(afterGrow.exitCode, afterGrow.stderr).toBe(0); // 100 MB fit only after the grow
    expect(afterGrow.stdout).toBe(blobSum);

    // below what the data needs: refused, the SIF untouched
    const before = fileSha(sif);
    const tooSmall = await ctl(['resize', sif, '--size', '80M']);
    expect(tooSmall.code).toBe(2);
    expect(tooSmall.out.error.code).toBe('E_SHRINK_TOO_SMALL');
    expect(fileSha(sif)).toBe(before);
    expect((await apptainerWritable(sif, 'rm /opt/big')).exitCode).toBe(0);

    const shrink = await ctl(['resize', sif, '--size', '80M']);
    expect(shrink.code, shrink.stderr).toBe(0);
    expect(shrink.out.sizeBytes).toBe(80 * 2 ** 20);
    expect((await sifList(sif)).map((o) => [o.id, o.type])).toEqual(ids);
    expect(await otherObjects(sif)).toEqual(objects);
    expect((await ctl(['check', sif])).out.images[0].status).toBe('clean');
    const afterShrink = await apptainerWritable(sif, 'md5sum /opt/blob && echo s > /opt/s && cat /opt/s');
    expect(afterShrink.exitCode, afterShrink.stderr).toBe(0);
    expect(afterShrink.stdout).toBe(`${blobSum}\ns`);
  });
});

describe('exec and locks', () => {
  it('overlayctl exec runs a SIF with its own overlay writable (--base the same SIF) or over another base', async () => {
    const sif = await sifWithOverlay(base, join(dir, 'exec.sif'), 64);
    const own = await overlayctl([
      'exec',
      sif,
      '--base',
      sif,
      '--json',
      '--',
      'sh',
      '-c',
      'echo own > /opt/own',
    ]);
    expect(own.exitCode, own.stderr).toBe(0);
    expect(lastJson(own.stdout).argv).toContain('--writable');
    const other = await overlayctl(['exec', sif, '--base', base, '--', 'cat', '/opt/own']);
    expect(other.exitCode, other.stderr).toBe(0);
    expect(other.stdout.trim()).toBe('own');
    const r = await apptainerWritable(sif, 'cat /opt/own');
    expect(r.stdout).toBe('own');
    const ro = await overlayctl([
      'exec',
      sif,
      '--base',
      sif,
      '--ro',
      '--json',
      '--',
      'sh',
      '-c',
      'cat /opt/own; touch /opt/no',
    ]);
    // with --json the command's own output goes to stderr: stdout is the one result object
    expect(ro.stderr).toMatch(/^own/m);
    expect(lastJson(ro.stdout).argv).not.toContain('--writable');
    expect(lastJson(ro.stdout).exitCode).not.toBe(0); // read-only: the write fails
  });

  it('a layer wrapped in SIF (the registry form) is accepted by exec --layer', async () => {
    const layer = await makeLayer(join(dir, 'exec-layer.sqfs'), { '/opt/fromlayer.txt': 'layer\n' });
    const wrapped = join(dir, 'exec-layer.sif');
    await wrapLayerInSif(layer, wrapped);
    const img = join(dir, 'exec-layer.img');
    expect((await ctl(['create', img, '--size', '64M'])).code).toBe(0);
    const r = await overlayctl([
      'exec',
      img,
      '--base',
      base,
      '--layer',
      wrapped,
      '--',
      'cat',
      '/opt/fromlayer.txt',
    ]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe('layer');
    const notLayer = await overlayctl(['exec', img, '--base', base, '--layer', base, '--', 'true']);
    expect(notLayer.exitCode).toBe(125);
    expect(notLayer.stderr).toMatch(/cannot be a layer/);
  });

  it('overlayctl build on the SIF itself or on another base, crash-safe like an image', async () => {
    const sif = await sifWithOverlay(base, join(dir, 'build.sif'), 64);
    const objects = await otherObjects(sif);
    const own = await ctl(['build', sif, '--base', sif, '--run', 'echo one > /opt/one']);
    expect(own.code, own.stderr).toBe(0);
    const other = await ctl(['build', sif, '--base', base, '--run', 'cat /opt/one > /opt/two']);
    expect(other.code, other.stderr).toBe(0);
    const failed = fileSha(sif);
    const bad = await ctl(['build', sif, '--base', sif, '--run', 'echo three > /opt/three; exit 3']);
    expect(bad.out.error.code).toBe('E_BUILD_FAILED');
    expect(fileSha(sif)).toBe(failed); // a failed build leaves the SIF as it was
    expect(await otherObjects(sif)).toEqual(objects);
    const r = await apptainerWritable(sif, 'cat /opt/two; ls /opt/three 2>&1 || true');
    expect(r.stdout).toMatch(/^one\n.*No such file/);
  });

  it('apptainer --writable running makes our writers fail fast with E_LOCKED, and our lock makes it refuse', async () => {
    const sif = await sifWithOverlay(base, join(dir, 'lock.sif'), 64);
    const marker = join(dir, 'lock.started');
    const running = execa('apptainer', ['exec', '--writable', sif, 'sh', '-c', `touch ${marker}; sleep 30`], {
      reject: false,
    });
    try {
      for (let i = 0; i < 300 && !existsSync(marker); i++) await new Promise((r) => setTimeout(r, 100));
      const before = fileSha(sif);
      const resize = await ctl(['resize', sif, '--size', '128M']);
      expect(resize.code).toBe(75);
      expect(resize.out.error.code).toBe('E_LOCKED');
      const repair = await ctl(['check', '--repair', sif]);
      expect(repair.out.images[0].status).toBe('locked');
      const exec = await overlayctl(['exec', sif, '--base', sif, '--', 'true']);
      expect(exec.stderr).toMatch(/E_LOCKED/);
      expect(fileSha(sif)).toBe(before);
    } finally {
      running.kill('SIGKILL');
      await running;
    }
    // now the other way: while overlayctl holds the lock, Apptainer refuses to open the overlay
    const held = overlayctl(['lock', sif, '--', 'sh', '-c', `touch ${marker}.held; sleep 8`]);
    for (let i = 0; i < 300 && !existsSync(`${marker}.held`); i++)
      await new Promise((r) => setTimeout(r, 100));
    const refused = await apptainerWritable(sif, 'true');
    expect(refused.exitCode).not.toBe(0);
    expect(refused.stderr).toMatch(/in use/);
    expect((await held).exitCode).toBe(0);
    expect((await apptainerWritable(sif, 'true')).exitCode).toBe(0);
    // the range lock our writers take (on the partition only) is the one Apptainer honours
    const { lock } = await lockedSifOverlay(sif, 'exclusive');
    try {
      const r = await apptainerWritable(sif, 'true');
      expect(r.exitCode).not.toBe(0);
      expect(r.stderr).toMatch(/in use/);
    } finally {
      lock.release();
    }
    expect((await apptainerWritable(sif, 'true')).exitCode).toBe(0);
  });
});
