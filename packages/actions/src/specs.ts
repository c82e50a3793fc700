import {
  checkTask,
  commitTask,
  type FieldInfo,
  kebab,
  resizeTask,
  setupTask,
  type TaskDef,
  taskFields,
} from '@overlay-action/core';
import { z } from 'zod';

/**
 * What each action is: the task whose zod schema validates its inputs (the single source of
 * input names, defaults and descriptions), the few places where an input's name differs from its
 * task field, action-only inputs with their own schema, and the outputs. action.yml files are
 * generated from this (scripts/gen-actions.mjs) and test/actions/schema-agreement.test.ts holds
 * them to it.
 */
export interface ActionSpec<S extends z.ZodObject = z.ZodObject, E extends z.ZodObject = z.ZodObject> {
  /** Directory under actions/ and the bundle entry name. */
  name: string;
  title: string;
  description: string;
  branding: { icon: string; color: string };
  task: TaskDef<S, unknown>;
  /** Action input name → task field name, only where they differ. */
  rename?: Record<string, string>;
  /** Task fields that are not action inputs. */
  omit?: string[];
  /** action.yml defaults that are expressions the runner expands (e.g. `${{ github.token }}`). */
  defaults?: Record<string, string>;
  /** Input descriptions that differ from the schema's (the action reads them differently). */
  describe?: Record<string, string>;
  /** Inputs that exist only in the action (not in the task), validated by this schema. */
  extra?: E;
  outputs: Record<string, string>;
  /** The bundle also runs as `runs.post` (with `post-if`). */
  post?: { if: string };
}

export interface ActionInput {
  /** The action input name (kebab-case). */
  name: string;
  /** The schema field it feeds. */
  field: string;
  extra: boolean;
  required: boolean;
  /** The action.yml default: the schema default as the text the runner passes ('' = unset). */
  default: string;
  description: string;
  kind: FieldInfo['kind'];
  choices?: string[];
}

export function defaultText(value: unknown): string {
  if (value === undefined || value === null) return '';
  if (Array.isArray(value)) return value.join('\n');
  return String(value);
}

function fieldsOf(task: TaskDef): FieldInfo[] {
  return taskFields(task);
}

/** Every input of the action, in schema order, derived from the task schema and the spec. */
export function actionInputs(spec: ActionSpec<z.ZodObject, z.ZodObject>): ActionInput[] {
  const renamedFrom = new Map(Object.entries(spec.rename ?? {}).map(([input, field]) => [field, input]));
  const omit = new Set(spec.omit ?? []);
  const out: ActionInput[] = [];
  const add = (f: FieldInfo, extra: boolean) => {
    const name = renamedFrom.get(f.name) ?? f.kebab;
    out.push({
      name,
      field: f.name,
      extra,
      required: f.required,
      default: spec.defaults?.[name] ?? defaultText(f.defaultValue),
      description: spec.describe?.[name] ?? f.description,
      kind: f.kind,
      choices: f.choices,
    });
  };
  for (const f of fieldsOf(spec.task as unknown as TaskDef)) if (!omit.has(f.name)) add(f, false);
  if (spec.extra) for (const f of fieldsOf(extraTask(spec.extra))) add(f, true);
  return out;
}

function extraTask(schema: z.ZodObject): TaskDef {
  return { name: 'action-inputs', summary: '', input: schema, run: async () => undefined };
}

export const setupOverlaySpec: ActionSpec = {
  name: 'setup-overlay',
  title: 'Setup Apptainer overlay',
  description:
    'Restore an Apptainer ext3 overlay image from the Actions cache (or create it), build inside it, check it; save it in the post step when it changed.',
  branding: { icon: 'layers', color: 'blue' },
  task: setupTask as unknown as TaskDef<z.ZodObject, unknown>,
  rename: { 'create-dirs': 'createDir' },
  describe: {
    'create-dirs':
      'Directories to create under upper/ in a new image, one per line (e.g. /opt/env: a non-root build can then write there)',
  },
  extra: z.object({
    registryToken: z
      .string()
      .optional()
      .describe(
        'Token for an oras://ghcr.io/… store (the job token by default; saving needs `permissions: packages: write`)',
      ),
  }),
  // biome-ignore lint/suspicious/noTemplateCurlyInString: a GitHub expression, expanded by the runner
  defaults: { 'registry-token': '${{ github.token }}' },
  outputs: {
    path: 'Path of the image',
    base: 'Path of the base image as a SIF the runtime runs (a pulled reference is cached); "" without base',
    'cache-hit': '"true" when the image was restored from the exact key, "false" otherwise',
    'cache-key': 'The exact key the image is saved under',
    'cache-matched-key': 'The key of the restored entry (a restore-key match on a partial hit), "" on a miss',
    'size-bytes': 'Image file size in bytes',
    'used-bytes': 'Bytes used inside the filesystem',
    'inodes-used-percent': 'Percent of inodes in use',
  },
  post: { if: 'success()' },
};

export const resizeOverlaySpec: ActionSpec = {
  name: 'resize-overlay',
  title: 'Resize Apptainer overlay',
  description: 'Grow or shrink an Apptainer ext3 overlay image in place (offline, crash safe).',
  branding: { icon: 'maximize-2', color: 'blue' },
  task: resizeTask as unknown as TaskDef<z.ZodObject, unknown>,
  rename: { path: 'image' },
  outputs: {
    'size-bytes': 'Image file size in bytes after the resize',
    'used-bytes': 'Bytes used inside the filesystem',
  },
};

export const checkOverlaySpec: ActionSpec = {
  name: 'check-overlay',
  title: 'Check Apptainer overlays',
  description:
    'fsck many Apptainer overlay images (e.g. nightly): a JSON report, counts, an error annotation per corrupt image.',
  branding: { icon: 'check-circle', color: 'green' },
  task: checkTask as unknown as TaskDef<z.ZodObject, unknown>,
  rename: { paths: 'images' },
  describe: { paths: 'Images to check: paths or globs, one per line' },
  extra: z.object({
    failOnCorrupt: z
      .boolean()
      .default(true)
      .describe(
        'Fail the step when `overlayctl check` would fail: an image corrupt or not checkable (after any repair), or images in use that could not be checked',
      ),
    store: z
      .string()
      .optional()
      .describe(
        'Also verify every entry of this cache store directory (overlayctl cache verify): restored in a temp dir, digest and fsck',
      ),
    removeBadEntries: z
      .boolean()
      .default(false)
      .describe('With store: delete the entries that fail verification (the next restore rebuilds)'),
  }),
  outputs: {
    report: 'Path of the JSON report (in RUNNER_TEMP)',
    clean: 'Number of clean images',
    repaired: 'Number of images repaired',
    corrupt: 'Number of corrupt images (not repaired)',
    locked: 'Number of images skipped because they were in use',
  },
};

export const commitLayerSpec: ActionSpec = {
  name: 'commit-layer',
  title: 'Commit overlay to a SquashFS layer',
  description:
    'Turn the upper/ of an Apptainer overlay into a read-only SquashFS layer (deletions kept for every reader).',
  branding: { icon: 'package', color: 'purple' },
  task: commitTask as unknown as TaskDef<z.ZodObject, unknown>,
  rename: { path: 'image' },
  outputs: {
    layer: 'Path of the SquashFS layer',
    bytes: 'Layer size in bytes',
    sha256: 'SHA-256 of the layer file',
  },
};

/** Every action, in the order the docs list them; the first is the repository's root action. */
export const ACTION_SPECS: ActionSpec[] = [
  setupOverlaySpec,
  checkOverlaySpec,
  resizeOverlaySpec,
  commitLayerSpec,
];

export const ROOT_ACTION = 'setup-overlay';

export { kebab };
