import { fsyncPath } from '../fs/atomic';
import { readUndoLog, removeUndoLog, rollBack, staleUndoLogs, writeUndoLog } from '../fs/undo';
import { runTool } from '../tools/run';
import { runDebugfs } from './debugfs';

/**
 * In-place edits of an unmounted image with debugfs, for edits that only remove extended
 * attributes (what a root `exec` leaves: Apptainer's trusted.overlay.*). Copying a 1 GB image to
 * drop a few xattrs costs seconds and as much free disk; this writes a few blocks instead.
 *
 * Crash safety: `ea_rm` writes only the inode's inode-table block, its xattr block (or a new one
 * when the old one is shared), the block and inode bitmaps, the group descriptors and the
 * superblocks. The old content of all of those is saved in an undo log (fs/undo.ts) before
 * debugfs starts. debugfs reads its commands from a file, runs in its own process group and
 * inherits the image lock, so our own death (Ctrl-C, a cancelled job, SIGKILL) does not interrupt
 * it and nobody else takes the image while it runs. Only a SIGKILL aimed at debugfs itself can cut
 * it short: the next operation that locks the image finds the log of a dead process and, unless
 * the edit is complete and e2fsck finds the image clean, writes the old blocks back.
 */

/** `ea_rm <ino> NAME` (and `cd`, which writes nothing): the only edits made in place. */
const IN_PLACE_CMD = /^(?:cd .*|ea_rm <(\d+)> (\S+))$/;

export function canEditInPlace(cmds: string[]): boolean {
  return (
    cmds.length > 0 && cmds.every((c) => IN_PLACE_CMD.test(c)) && cmds.some((c) => c.startsWith('ea_rm'))
  );
}

interface Target {
  ino: number;
  names: string[];
}

function targetsOf(cmds: string[]): Target[] {
  const byIno = new Map<number, string[]>();
  for (const c of cmds) {
    const m = IN_PLACE_CMD.exec(c);
    if (!m?.[1]) continue;
    const ino = Number(m[1]);
    byIno.set(ino, [...(byIno.get(ino) ?? []), m[2]!]);
  }
  return [...byIno].map(([ino, names]) => ({ ino, names }));
}

const blocks = (out: string) => out.split(/^debugfs: .*$/m).slice(1);

/** Where an inode sits in the inode table and its xattr block (0: none), from debugfs `imap` and `stat`. */
export interface InodeBlocks {
  table: number;
  acl: number;
}

export function parseInodeBlocks(imapOut: string, statOut: string): InodeBlocks | null {
  const at = /located at block (\d+)/.exec(imapOut)?.[1];
  const acl = /File ACL:\s*(\d+)/.exec(statOut)?.[1];
  return at && acl ? { table: Number(at), acl: Number(acl) } : null;
}

/**
 * Every block `ea_rm` on these inodes may write (see the comment at the top). `known` holds what
 * the caller already read under the same lock (normalize's scan stats directories): those inodes
 * cost no second debugfs run.
 */
export async function blocksAtRisk(
  image: string,
  inodes: number[],
  known: ReadonlyMap<number, InodeBlocks> = new Map(),
): Promise<{ blockSize: number; blocks: number[] }> {
  const unknown = inodes.filter((i) => !known.has(i));
  const [{ stdout }, inodeOut] = await Promise.all([
    runTool('dumpe2fs', [image], { timeoutSeconds: 600 }),
    unknown.length
      ? runDebugfs(
          image,
          unknown.flatMap((i) => [`imap <${i}>`, `stat <${i}>`]),
        )
      : '',
  ]);
  const blockSize = Number(/^Block size:\s+(\d+)/m.exec(stdout)?.[1]);
  if (!blockSize) throw new Error(`dumpe2fs gave no block size for ${image}`);
  const set = new Set<number>();
  const range = (a: string, b?: string) => {
    for (let x = Number(a); x <= Number(b ?? a); x++) set.add(x);
  };
  for (const m of stdout.matchAll(/superblock at (\d+), Group descriptors at (\d+)-(\d+)/g)) {
    range(m[1]!);
    range(m[2]!, m[3]!);
  }
  for (const m of stdout.matchAll(/(?:Block|Inode) bitmap at (\d+)/g)) range(m[1]!);
  // the superblock sits at byte 1024: in block 0 (4 KiB blocks) or block 1 (1 KiB blocks)
  set.add(Math.floor(1024 / blockSize));
  const out = blocks(inodeOut);
  const facts = new Map(known);
  unknown.forEach((ino, k) => {
    const f = parseInodeBlocks(out[2 * k] ?? '', out[2 * k + 1] ?? '');
    if (!f) throw new Error(`debugfs imap/stat gave no inode table block for inode ${ino}`);
    facts.set(ino, f);
  });
  for (const ino of inodes) {
    const f = facts.get(ino)!;
    set.add(f.table);
    if (f.acl) set.add(f.acl);
  }
  return { blockSize, blocks: [...set] };
}

/**
 * Run the edit on the image itself, under an undo log. `lockFd` is the caller's open descriptor
 * holding the image's write lock: debugfs inherits it, so the lock lasts as long as debugfs does.
 * `known`: inode locations read under that same lock (see blocksAtRisk).
 */
export async function editInPlace(
  image: string,
  cmds: string[],
  opts: { lockFd?: number; known?: ReadonlyMap<number, InodeBlocks> } = {},
): Promise<void> {
  const targets = targetsOf(cmds);
  const risk = await blocksAtRisk(
    image,
    targets.map((t) => t.ino),
    opts.known,
  );
  const log = await writeUndoLog(image, risk.blockSize, risk.blocks, { targets });
  try {
    await runDebugfs(image, cmds, {
      write: true,
      detached: true,
      commandFile: `${log}.cmds`,
      extraFds: opts.lockFd === undefined ? undefined : [opts.lockFd],
    });
    await fsyncPath(image);
  } catch (e) {
    await rollBack(image, log);
    await removeUndoLog(log);
    throw e;
  }
  await removeUndoLog(log);
}

/** The edit a log describes went through: every attribute is gone and e2fsck finds the image clean. */
async function editComplete(image: string, targets: Target[]): Promise<boolean> {
  const lists = blocks(
    await runDebugfs(
      image,
      targets.map((t) => `ea_list <${t.ino}>`),
    ).catch(() => ''),
  );
  const left = targets.some((t, k) => t.names.some((n) => (lists[k] ?? n).includes(`${n} (`)));
  if (left || lists.length !== targets.length) return false;
  const fsck = await runTool('e2fsck', ['-fn', image], { okExitCodes: [1, 2, 4, 8], timeoutSeconds: 1800 });
  return fsck.exitCode === 0;
}

/**
 * Finish what an in-place edit killed half way left: keep a complete edit, else put the old blocks
 * back. The caller holds the image's write lock. Returns the logs handled.
 */
export async function recoverInterruptedEdits(image: string): Promise<string[]> {
  const logs = await staleUndoLogs(image);
  for (const log of logs) {
    const undo = await readUndoLog(log);
    // a log cut short was being written when its process died: debugfs never started
    if (undo && !(await editComplete(image, (undo.meta.targets as Target[]) ?? [])))
      await rollBack(image, log);
    await removeUndoLog(log);
  }
  return logs;
}
