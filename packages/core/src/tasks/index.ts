import { buildTask } from './build';
import { cacheDeleteTask, cacheKeyTask, cachePruneTask, cacheRestoreTask, cacheSaveTask } from './cache';
import { cacheVerifyTask } from './cache-verify';
import { checkTask } from './check';
import { chownTask } from './chown';
import { commitTask } from './commit';
import { createTask } from './create';
import type { TaskDef } from './define';
import { demoTask } from './demo';
import { embedTask } from './embed';
import { execTask } from './exec';
import { extractTask } from './extract';
import { infoTask } from './info';
import { lockTask } from './lock';
import { normalizeTask } from './normalize';
import { pullTask } from './pull';
import { pushTask } from './push';
import { resizeTask } from './resize';
import { setupTask } from './setup';
import { squashTask } from './squash';

/**
 * Every user-facing operation, in the order the CLI help lists them. A front end (CLI, action,
 * docs generator) iterates this list; adding a task here is all it takes to expose it.
 */
export const TASKS: TaskDef[] = [
  createTask,
  infoTask,
  checkTask,
  resizeTask,
  embedTask,
  extractTask,
  chownTask,
  lockTask,
  execTask,
  buildTask,
  commitTask,
  normalizeTask,
  squashTask,
  setupTask,
  cacheSaveTask,
  cacheRestoreTask,
  cacheKeyTask,
  cacheDeleteTask,
  cachePruneTask,
  cacheVerifyTask,
  pushTask,
  pullTask,
  demoTask,
] as unknown as TaskDef[];

export function findTask(name: string): TaskDef | undefined {
  return TASKS.find((t) => t.name === name);
}
