// The embedded overlay as an unprivileged user (the GitHub runner's situation): SIF files the user
// made with `apptainer overlay create --fakeroot`, every operation run as that user, each change
// followed by `apptainer exec --fakeroot --writable` reading and writing files.
import { chownSync, copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBaseImage } from '../helpers/base-image';
import { hasApptainer, isRoot } from '../helpers/tools';
import { ensureTestUser, makeUserDir, runAs, type TestUser } from '../helpers/users';
import { lastJson, overlayctlAs } from '../runtime/helpers';
import {
  apptainerWritable,
  containerSha,
  otherObjects,
  overlayObject,
  sifList,
  sifWithOverlay,
} from './helpers';

describe.skipIf(!hasApptainer() || !isRoot())('SIF embedded overlays as an unprivileged user', () => {
  let user: TestUser;
  let dir: string;
  let base: string;
  let baseContainer: string;
  const as = async (args: string[]) => {
    const r = await overlayctlAs(user, [...args, '--json'], dir);
    // biome-ignore lint/suspicious/noExplicitAny: the CLI's JSON output
    return { code: r.exitCode, out: lastJson(r.stdout) as Record<string, any>, stderr: r.stderr };
  };

  beforeAll(async () => {
    [user, base] = await Promise.all([ensureTestUser(), ensureBaseImage()]);
    dir = await makeUserDir(user, 'overlay-sif-');
    baseContainer = await containerSha(base);
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('info, check clean and damaged, repair, then --fakeroot --writable reads and writes', async () => {
    const sif = await sifWithOverlay(base, join(dir, 'u.sif'), 64, user);
    const w = await apptainerWritable(sif, 'echo mine > /opt/mine.txt', user);
    expect(w.exitCode, w.stderr).toBe(0);
    const info = await as(['info', sif]);
    expect(info.code, info.stderr).toBe(0);
    expect(info.out).toMatchObject({ format: 'ext3', clean: true, apptainerCompatible: true });
    expect(info.out.sif.overlayId).toBe((await overlayObject(sif))!.id);
    // Apptainer's unprivileged session wrote the partition's superblock totals at the SIF's own
    // offset 1024 (its offset shim), leaving them stale in the partition: clean, with a warning
    const o0 = (await overlayObject(sif))!;
    const stale = (await as(['check', sif])).out.images[0];
    expect(stale.status).toBe('clean');
    expect(stale.warnings.join(' ')).toMatch(/stale superblock free block\/inode totals/);
    const plain = join(dir, 'u-partition.img');
    writeFileSync(plain, readFileSync(sif).subarray(o0.start, o0.end));
    chownSync(plain, user.uid, user.gid);
    expect((await as(['check', plain])).out.images[0].status).toBe('corrupt'); // what e2fsck -fy says
    expect((await as(['check', '--repair', sif])).out.images[0].status).toBe('repaired');
    const fresh = (await as(['check', sif])).out.images[0];
    expect(fresh.status).toBe('clean');
    expect(fresh.warnings).toEqual([]);

    const objects = await otherObjects(sif);
    const o = (await overlayObject(sif))!;
    const dmg = await runAs(user, ['debugfs', '-w', '-f', '-', `${sif}?offset=${o.start}`], {
      input: 'set_bg 0 free_blocks_count 7\nsif /upper links_count 9\n',
    });
    expect(dmg.exitCode).toBe(0);
    expect((await as(['check', sif])).out.images[0].status).toBe('corrupt');
    const repaired = await as(['check', '--repair', sif]);
    expect(repaired.code, repaired.stderr).toBe(0);
    expect(repaired.out.images[0].status).toBe('repaired');
    expect(await otherObjects(sif)).toEqual(objects);
    expect(await containerSha(sif)).toBe(baseContainer);
    const r = await apptainerWritable(
      sif,
      'cat /opt/mine.txt && echo after > /opt/after && cat /opt/after',
      user,
    );
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toBe('mine\nafter');
  });

  it('build on the SIF itself as the user (apptainer exec --fakeroot --writable on a copy)', async () => {
    const sif = await sifWithOverlay(base, join(dir, 'b.sif'), 64, user);
    const objects = await otherObjects(sif);
    const b = await as(['build', sif, '--base', sif, '--run', 'echo built > /opt/built']);
    expect(b.code, b.stderr).toBe(0);
    expect(b.out.check.status).toBe('clean');
    expect(await otherObjects(sif)).toEqual(objects);
    const r = await apptainerWritable(sif, 'cat /opt/built', user);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toBe('built');
  });

  it('lock interop as the user: a running --fakeroot --writable session makes resize fail with E_LOCKED', async () => {
    const sif = await sifWithOverlay(base, join(dir, 'l.sif'), 64, user);
    const marker = join(dir, 'l.started');
    const running = runAs(user, [
      'apptainer',
      'exec',
      '--fakeroot',
      '--writable',
      sif,
      'sh',
      '-c',
      `touch ${marker}; sleep 20`,
    ]);
    try {
      for (let i = 0; i < 300 && !existsSync(marker); i++) await new Promise((r) => setTimeout(r, 100));
      const r = await as(['resize', sif, '--size', '128M']);
      expect(r.code).toBe(75);
      expect(r.out.error.code).toBe('E_LOCKED');
    } finally {
      await running; // the session ends by itself; nothing of it is killed by name
    }
    const held = overlayctlAs(user, ['lock', sif, '--', 'sh', '-c', `touch ${marker}.held; sleep 8`], dir);
    for (let i = 0; i < 300 && !existsSync(`${marker}.held`); i++)
      await new Promise((r) => setTimeout(r, 100));
    const refused = await apptainerWritable(sif, 'true', user);
    expect(refused.exitCode).not.toBe(0);
    expect(refused.stderr).toMatch(/in use/);
    expect((await held).exitCode).toBe(0);
  });

  it('grow and shrink as the user: data intact, ids kept', async () => {
    const sif = await sifWithOverlay(base, join(dir, 'r.sif'), 64, user);
    expect((await apptainerWritable(sif, 'echo keep > /opt/keep', user)).exitCode).toBe(0);
    const ids = (await sifList(sif)).map((l) => l.id);
    const grow = await as(['resize', sif, '--size', '192M']);
    expect(grow.code, grow.stderr).toBe(0);
    expect(grow.out.sizeBytes).toBe(192 * 2 ** 20);
    const shrink = await as(['resize', sif, '--size', '72M']);
    expect(shrink.code, shrink.stderr).toBe(0);
    expect((await sifList(sif)).map((l) => l.id)).toEqual(ids);
    expect(await containerSha(sif)).toBe(baseContainer);
    const r = await apptainerWritable(sif, 'cat /opt/keep && echo more > /opt/more && cat /opt/more', user);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toBe('keep\nmore');
  });

  it('create --fakeroot with a profile on the user’s SIF, extract and embed', async () => {
    const sif = join(dir, 'c.sif');
    copyFileSync(base, sif);
    chownSync(sif, user.uid, user.gid);
    const c = await as(['create', sif, '--size', '96M', '--profile', 'small', '--fakeroot']);
    expect(c.code, c.stderr).toBe(0);
    expect(c.out).toMatchObject({ inodeRatio: 4096, upper: { uid: 0, gid: 0 }, apptainerCompatible: true });
    const w = await apptainerWritable(sif, 'echo made > /opt/made && cat /opt/made', user);
    expect(w.exitCode, w.stderr).toBe(0);
    expect(w.stdout).toBe('made');

    const img = join(dir, 'c.img');
    const x = await as(['extract', sif, img]);
    expect(x.code, x.stderr).toBe(0);
    expect(x.out.sparse).toBe(true);
    const target = join(dir, 'e.sif');
    copyFileSync(base, target);
    chownSync(target, user.uid, user.gid);
    const e = await as(['embed', img, target]);
    expect(e.code, e.stderr).toBe(0);
    const r = await apptainerWritable(target, 'cat /opt/made && echo x > /opt/x', user);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toBe('made');
  });
});
