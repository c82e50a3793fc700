// Damage an ext3 image the way a bad disk or an interrupted copy would: zero the first block of
// group 0's inode table (the root directory's inode and upper/, work/ live there), with plain
// positioned writes on the file.
import { open } from 'node:fs/promises';
import { execa } from 'execa';

export async function zeroInodeTable(image: string): Promise<void> {
  const { stdout } = await execa('dumpe2fs', [image], { stderr: 'ignore' });
  const blockSize = Number(/^Block size:\s+(\d+)/m.exec(stdout)?.[1]);
  const first = Number(/Inode table at (\d+)/.exec(stdout)?.[1]);
  if (!blockSize || !first) throw new Error(`no inode table found in dumpe2fs output of ${image}`);
  const fh = await open(image, 'r+');
  try {
    await fh.write(Buffer.alloc(blockSize), 0, blockSize, first * blockSize);
    await fh.sync();
  } finally {
    await fh.close();
  }
}
