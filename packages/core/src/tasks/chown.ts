import { z } from 'zod';
import { chownImage } from '../image/chown';
import { checkOwner, ownerFields, ownerFrom, pathSchema, waitField } from './common';
import { renderImageSummary } from './create';
import { defineTask } from './define';

export const chownTask = defineTask({
  name: 'chown',
  summary: 'Give every inode of upper/ (and work/) a new owner: unprivileged, no mount, no Apptainer',
  positional: ['image'],
  input: z
    .object({ image: pathSchema.describe('The ext3 overlay image'), ...ownerFields, wait: waitField })
    .superRefine((v, ctx) => {
      checkOwner(v, ctx);
      if (!v.fakeroot && v.uid === undefined) {
        ctx.addIssue({ code: 'custom', path: ['fakeroot'], message: 'give --fakeroot or --uid N --gid N' });
      }
    }),
  run: (input) => chownImage(input.image, ownerFrom(input)),
  render: (r) => `${r.inodesChanged} inodes changed\n${renderImageSummary(r)}`,
});
