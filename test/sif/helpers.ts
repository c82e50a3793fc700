// Helpers for the SIF tests: SIF files made by Apptainer itself, positions read from
// `apptainer sif list` (not from our parser), Apptainer runs with --writable.
import { createHash } from 'node:crypto';
import { chownSync, copyFileSync, readFileSync } from 'node:fs';
import { execa } from 'execa';
import { SYSTEM_PATH } from '../helpers/tools';
import { runAs, type TestUser } from '../helpers/users';

export interface ListedObject {
  id: number;
  group: string;
  start: number;
  end: number;
  type: string;
}

/** `apptainer sif list` rows: Apptainer's own view of the objects. */
export async function sifList(path: string): Promise<ListedObject[]> {
  const r = await execa('apptainer', ['sif', 'list', path]);
  return r.stdout
    .split('\n')
    .map((l) => /^(\d+)\s*\|(\S+)\s*\|(\S+)\s*\|(\d+)-(\d+)\s*\|(.*)$/.exec(l.trim()))
    .filter((m) => m !== null)
    .map((m) => ({
      id: Number(m[1]),
      group: m[2]!,
      start: Number(m[4]),
      end: Number(m[5]),
      type: m[6]!.trim(),
    }));
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** sha256 of every object except the overlay partition, by id, plus the SIF's id (from `sif header`). */
export async function otherObjects(path: string): Promise<Record<string, string>> {
  const data = readFileSync(path);
  const out: Record<string, string> = {};
  for (const o of await sifList(path)) {
    if (o.type.includes('Overlay')) continue;
    out[`${o.id} ${o.type}`] = sha(data.subarray(o.start, o.end));
  }
  const header = await execa('apptainer', ['sif', 'header', path]);
  out.header = /ID:\s*(\S+)/.exec(header.stdout)?.[1] ?? 'none';
  return out;
}

/** sha256 of the container's root filesystem partition (Squashfs, primary system). */
export async function containerSha(path: string): Promise<string> {
  const root = (await sifList(path)).find((o) => /Squashfs\/\*System/.test(o.type));
  if (!root) throw new Error(`${path}: no root filesystem partition listed`);
  return sha(readFileSync(path).subarray(root.start, root.end));
}

export async function overlayObject(path: string): Promise<ListedObject | undefined> {
  return (await sifList(path)).find((o) => o.type.includes('Ext3/Overlay'));
}

export const fileSha = (path: string) => sha(readFileSync(path));

/** A copy of the base SIF with an overlay partition added by `apptainer overlay create`. */
export async function sifWithOverlay(
  base: string,
  path: string,
  sizeMiB = 64,
  user?: TestUser,
): Promise<string> {
  copyFileSync(base, path);
  if (user) {
    chownSync(path, user.uid, user.gid);
    const r = await runAs(user, [
      'apptainer',
      'overlay',
      'create',
      '--fakeroot',
      '--size',
      String(sizeMiB),
      path,
    ]);
    if (r.exitCode !== 0) throw new Error(`apptainer overlay create as ${user.name}: ${r.stderr}`);
  } else {
    await execa('apptainer', ['overlay', 'create', '--size', String(sizeMiB), path]);
  }
  return path;
}

/** `apptainer exec --writable SIF sh -c SCRIPT` as root, or `--fakeroot --writable` as the user. */
export async function apptainerWritable(sif: string, script: string, user?: TestUser) {
  const argv = ['apptainer', 'exec', ...(user ? ['--fakeroot'] : []), '--writable', sif, 'sh', '-c', script];
  const r = user
    ? await runAs(user, argv, { env: { PATH: SYSTEM_PATH } })
    : await execa(argv[0]!, argv.slice(1), { reject: false });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout).trim(), stderr: String(r.stderr) };
}
