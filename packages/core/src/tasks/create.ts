import { z } from 'zod';
import { createImage, PROFILES, type ProfileName } from '../image/create';
import type { ImageInfo } from '../image/info';
import { formatBytes, sizeSchema } from '../size';
import { checkOwner, containerDirSchema, ownerFields, ownerFrom, pathSchema, waitField } from './common';
import { defineTask } from './define';

export const createFields = {
  size: sizeSchema.describe('Image size: MiB (256) or with a unit (512M, 4G); at least 64 MiB'),
  profile: z
    .enum(Object.keys(PROFILES) as [ProfileName, ...ProfileName[]])
    .default('default')
    .describe('Filesystem profile: small (4 KiB/inode, conda), default (16 KiB), large (1 MiB, genomes)'),
  inodeRatio: z
    .number()
    .int()
    .min(4096)
    .max(67108864)
    .optional()
    .describe('Bytes per inode; overrides the profile'),
  reserved: z.number().min(0).max(50).default(0).describe('Percent of blocks reserved for root'),
  sparse: z.boolean().default(true).describe('Sparse file (default); false allocates every block'),
  ...ownerFields,
  createDir: z
    .array(containerDirSchema)
    .default([])
    .describe('Directory to create under upper/ (repeatable)'),
};

const createFieldsSchema = z.object(createFields);

/** The create options a task's createFields ask for (create, build). */
export function createOptionsFrom(input: z.output<typeof createFieldsSchema>) {
  return {
    sizeBytes: input.size,
    inodeRatio: input.inodeRatio ?? PROFILES[input.profile].inodeRatio,
    reservedPercent: input.reserved,
    sparse: input.sparse,
    owner: ownerFrom(input),
    createDirs: input.createDir,
  };
}

export function renderImageSummary(i: ImageInfo): string {
  const lines = [
    `${i.image}: ${i.format}, ${formatBytes(i.sizeBytes)} (${formatBytes(i.allocatedBytes)} allocated${i.sparse ? ', sparse' : ''})`,
  ];
  if (i.usedBytes !== null)
    lines.push(`  used ${formatBytes(i.usedBytes)}, free ${formatBytes(i.freeBytes ?? 0)}`);
  if (i.inodesTotal !== null)
    lines.push(
      `  inodes ${i.inodesUsed}/${i.inodesTotal} (${i.inodesUsedPercent}%), ${i.inodeRatio ?? '-'} bytes/inode`,
    );
  if (i.upper) lines.push(`  upper/ owned by ${i.upper.uid}:${i.upper.gid}`);
  if (i.nonPortableMarkers?.count) {
    lines.push(
      `  warning: ${i.nonPortableMarkers.count} non-portable deletion markers (run overlayctl normalize)`,
    );
  }
  lines.push(
    `  apptainer: ${i.apptainerCompatible ? 'compatible' : `NOT compatible (${i.apptainerProblems.join('; ')})`}`,
  );
  return lines.join('\n');
}

export const createTask = defineTask({
  name: 'create',
  summary: 'Create an Apptainer ext3 overlay image (upper/ + work/) with a filesystem profile',
  positional: ['image'],
  cliAliases: {
    allocated: { description: 'Allocate every block (same as --no-sparse)', sets: { sparse: false } },
  },
  input: z
    .object({
      image: pathSchema.describe('Path of the image to create'),
      ...createFields,
      force: z.boolean().default(false).describe('Replace an existing file'),
      wait: waitField,
    })
    .superRefine(checkOwner),
  async run(input, ctx) {
    return createImage({
      path: input.image,
      ...createOptionsFrom(input),
      force: input.force,
      onProgress: ctx.progress,
    });
  },
  render: renderImageSummary,
});
