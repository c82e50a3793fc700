import * as core from '@actions/core';
import {
  formatBytes,
  type ImageInfo,
  imageInfo,
  isOverlayError,
  OverlayError,
  parseTaskInput,
  setProcessLockWait,
  type TaskContext,
  type TaskDef,
} from '@overlay-action/core';
import type { z } from 'zod';
import { type ActionSpec, actionInputs } from './specs';

/**
 * The shared shape of every action (after docker/actions-toolkit's run(main, post)): one bundle
 * serves `runs.main` and `runs.post`; main records `isPost` in the action state so the runner's
 * second invocation (with STATE_isPost set) dispatches to post.
 */
export async function run(main: () => Promise<void>, post?: () => Promise<void>): Promise<void> {
  const isPost = Boolean(process.env.STATE_isPost);
  try {
    if (!isPost) {
      core.saveState('isPost', 'true');
      await main();
    } else if (post) {
      await post();
    }
  } catch (e) {
    fail(e);
  }
}

/** One line: `E_CODE: message (hint: …)`; the stack only with OVERLAYCTL_DEBUG / runner debug. */
export function failureLine(e: unknown): string {
  const err = isOverlayError(e)
    ? e
    : new OverlayError('E_INTERNAL', e instanceof Error ? e.message : String(e), { cause: e });
  return `${err.code}: ${err.message}${err.hint ? ` (hint: ${err.hint})` : ''}`.replace(/\s*\n\s*/g, ' | ');
}

function fail(e: unknown): void {
  if (e instanceof Error && (process.env.OVERLAYCTL_DEBUG || core.isDebug()))
    core.debug(e.stack ?? e.message);
  core.setFailed(failureLine(e));
}

/**
 * Read every declared input of the action (`INPUT_<NAME>`, dashes kept) and validate it with the
 * task schema: a failure is one E_INVALID_INPUT naming the action input, before anything is touched.
 * Action-only inputs (spec.extra) are validated by their own schema the same way.
 */
export function readInputs<T = Record<string, unknown>, X = Record<string, unknown>>(
  spec: ActionSpec,
): { input: T; extra: X } {
  const inputs = actionInputs(spec);
  const inputNameOf = (field: string) => inputs.find((i) => i.field === field)?.name ?? field;
  const raw: Record<string, unknown> = {};
  const rawExtra: Record<string, unknown> = {};
  for (const i of inputs) {
    const value = core.getInput(i.name);
    if (value === '') continue;
    (i.extra ? rawExtra : raw)[i.field] = value;
  }
  const extra = spec.extra ? parseTaskInput(extraTask(spec.extra), rawExtra, inputNameOf) : {};
  const input = parseTaskInput(spec.task, raw, inputNameOf);
  // the `wait` input holds for every lock the step takes, whichever core function the entry calls
  setProcessLockWait((input as { wait?: number }).wait);
  return { input: input as T, extra: extra as X };
}

function extraTask(schema: z.ZodObject): TaskDef {
  return { name: 'action-inputs', summary: '', input: schema, run: async () => undefined };
}

/** Task context for actions: info/warn to the log (warnings as annotations), progress as lines. */
export function actionContext(): TaskContext & {
  group<T>(name: string, fn: () => Promise<T>): Promise<T>;
} {
  return {
    info: (m) => core.info(m),
    warn: (m) => core.warning(m),
    progress: (m) => core.info(`  … ${m}`),
    group: (name, fn) => core.group(name, fn),
  };
}

export function setOutputs(outputs: Record<string, string | number | boolean | null | undefined>): void {
  for (const [name, value] of Object.entries(outputs)) {
    core.setOutput(name, value === null || value === undefined ? '' : String(value));
  }
}

export interface SummaryRow {
  image: string;
  info?: ImageInfo | null;
  status: string;
  seconds: number;
}

/** Image facts for outputs and the summary; null when the file is gone or not an image. */
export async function safeInfo(path: string): Promise<ImageInfo | null> {
  try {
    return await imageInfo(path);
  } catch (e) {
    core.debug(`info ${path}: ${failureLine(e)}`);
    return null;
  }
}

const escapeHtml = (s: string) =>
  s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** Job summary: one table (image, size, used, inodes, status, time) under the action's name. */
export async function writeSummary(title: string, rows: SummaryRow[], note?: string): Promise<void> {
  if (!process.env.GITHUB_STEP_SUMMARY) return;
  const cell = (data: string) => ({ data, header: true });
  const table = [
    [cell('image'), cell('size'), cell('used'), cell('inodes'), cell('status'), cell('time')],
    ...rows.map((r) =>
      [
        r.image,
        r.info ? formatBytes(r.info.sizeBytes) : '-',
        r.info?.usedBytes != null ? formatBytes(r.info.usedBytes) : '-',
        r.info?.inodesUsed != null && r.info.inodesTotal != null
          ? `${r.info.inodesUsed}/${r.info.inodesTotal} (${r.info.inodesUsedPercent}%)`
          : '-',
        r.status,
        `${r.seconds.toFixed(1)} s`,
      ].map(escapeHtml),
    ),
  ];
  try {
    const s = core.summary.addHeading(title, 3).addTable(table);
    if (note) s.addRaw(`<p>${escapeHtml(note)}</p>`, true);
    await s.write();
  } catch (e) {
    core.warning(`could not write the job summary: ${(e as Error).message}`);
  }
}

/** Seconds since `start` (process.hrtime based). */
export function since(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e9;
}
