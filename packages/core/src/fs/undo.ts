import { createHash, randomBytes } from 'node:crypto';
import { constants, promises as fsp } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fromFsError } from '../errors';
import { fsyncPath, HOST, pidAlive } from './atomic';

/**
 * A block-level undo log for editing a file in place: the old content of every block an edit may
 * write is saved next to the file (fsynced) before the edit starts, and removed once the edited
 * file is fsynced. If the editor dies half way, the next operation finds the log of a dead
 * process and writes the old blocks back, so the file is the original again. A log cut short
 * (the process died while writing it) fails its checksum: the edit never started, it is dropped.
 *
 * Format: MAGIC, u32 header length, JSON header {blockSize, blocks}, the blocks' old content in
 * that order, then the sha256 of everything before it.
 */
const MAGIC = Buffer.from('OVUNDO1\n');
const MARK = '.ovundo-';

export function undoLogPath(target: string): string {
  return join(
    dirname(target),
    `.${basename(target)}${MARK}${process.pid}-${HOST}-${randomBytes(4).toString('hex')}`,
  );
}

/** Save the current content of `blocks` of `target` into a new, fsynced undo log; returns its path. */
export async function writeUndoLog(
  target: string,
  blockSize: number,
  blocks: number[],
  meta: Record<string, unknown> = {},
): Promise<string> {
  const sorted = [...new Set(blocks)].sort((a, b) => a - b);
  const header = Buffer.from(JSON.stringify({ blockSize, blocks: sorted, meta }));
  const len = Buffer.alloc(4);
  len.writeUInt32LE(header.length);
  const data = Buffer.alloc(sorted.length * blockSize);
  const fh = await fsp.open(target, constants.O_RDONLY);
  try {
    for (const [i, b] of sorted.entries()) await fh.read(data, i * blockSize, blockSize, b * blockSize); // past the end reads as zeros
  } finally {
    await fh.close();
  }
  const body = Buffer.concat([MAGIC, len, header, data]);
  const sum = createHash('sha256').update(body).digest();
  const log = undoLogPath(target);
  const out = await fsp.open(
    log,
    constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY | constants.O_NOFOLLOW,
    0o600,
  );
  try {
    await out.writeFile(Buffer.concat([body, sum]));
    await out.sync();
  } catch (e) {
    await out.close();
    await fsp.rm(log, { force: true });
    throw fromFsError(e, log); // a full disk is E_NO_SPACE, and nothing was edited
  }
  await out.close();
  await fsyncPath(dirname(target)).catch(() => {});
  return log;
}

export interface UndoLog {
  blockSize: number;
  blocks: number[];
  /** What the editor recorded about its edit (e.g. how to tell it finished). */
  meta: Record<string, unknown>;
  data: Buffer;
}

/** The blocks a complete log holds, or null when it is cut short or damaged. */
export async function readUndoLog(log: string): Promise<UndoLog | null> {
  const buf = await fsp.readFile(log).catch(() => null);
  if (!buf || buf.length < MAGIC.length + 4 + 32 || !buf.subarray(0, MAGIC.length).equals(MAGIC)) return null;
  const body = buf.subarray(0, buf.length - 32);
  if (
    !createHash('sha256')
      .update(body)
      .digest()
      .equals(buf.subarray(buf.length - 32))
  )
    return null;
  const hlen = body.readUInt32LE(MAGIC.length);
  const start = MAGIC.length + 4;
  const header = JSON.parse(body.subarray(start, start + hlen).toString()) as Omit<UndoLog, 'data'>;
  return { ...header, data: body.subarray(start + hlen) };
}

/** Write the old blocks back (idempotent) and fsync; false when the log was incomplete. */
export async function rollBack(target: string, log: string): Promise<boolean> {
  const undo = await readUndoLog(log);
  if (!undo) return false;
  const fh = await fsp.open(target, constants.O_WRONLY);
  try {
    for (const [i, b] of undo.blocks.entries())
      await fh.write(undo.data, i * undo.blockSize, undo.blockSize, b * undo.blockSize);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return true;
}

export async function removeUndoLog(log: string): Promise<void> {
  // the editor's command and output files, if it kept them there
  for (const ext of ['.cmds', '.cmds.out', '.cmds.err']) await fsp.rm(`${log}${ext}`, { force: true });
  await fsp.rm(log, { force: true });
}

/** Undo logs of `target` left by processes of this host that no longer exist. */
export async function staleUndoLogs(target: string): Promise<string[]> {
  const prefix = `.${basename(target)}${MARK}`;
  const names = await fsp.readdir(dirname(target)).catch(() => [] as string[]);
  return names
    .filter((n) => n.startsWith(prefix) && !n.includes('.cmds'))
    .filter((n) => {
      const [pid, host] = n.slice(prefix.length).split('-');
      return host === HOST && Number.isInteger(Number(pid)) && !pidAlive(Number(pid));
    })
    .map((n) => join(dirname(target), n));
}
