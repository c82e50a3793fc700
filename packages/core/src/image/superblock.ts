import { runTool } from '../tools/run';

/** Superblock fields as dumpe2fs -h prints them (read-only, unprivileged, no mount). */
export interface Superblock {
  uuid: string;
  state: string;
  blockCount: number;
  freeBlocks: number;
  reservedBlocks: number;
  blockSize: number;
  inodeCount: number;
  freeInodes: number;
  features: string[];
}

export function parseDumpe2fs(text: string): Superblock {
  const field = (name: string): string => {
    const m = new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(text);
    return m ? m[1]!.trim() : '';
  };
  const num = (name: string) => Number(field(name) || 0);
  return {
    uuid: field('Filesystem UUID'),
    state: field('Filesystem state'),
    blockCount: num('Block count'),
    freeBlocks: num('Free blocks'),
    reservedBlocks: num('Reserved block count'),
    blockSize: num('Block size'),
    inodeCount: num('Inode count'),
    freeInodes: num('Free inodes'),
    features: field('Filesystem features').split(/\s+/).filter(Boolean),
  };
}

export async function readSuperblock(path: string): Promise<Superblock> {
  const { stdout } = await runTool('dumpe2fs', ['-h', path], { timeoutSeconds: 60 });
  return parseDumpe2fs(stdout);
}
