// Child-process entry (bundled by the tests): one store operation, the result as a RESULT line.
// `github` is the Actions cache adapter (it reads ACTIONS_* and GITHUB_WORKSPACE from the env);
// anything else is a store spec for openStore.
import { copyFile } from 'node:fs/promises';
import { GitHubCacheStore } from '../../packages/actions/src/github-cache-store';
import { restoreImage, saveImage } from '../../packages/core/src/cache/state';
import { openStore } from '../../packages/core/src/cache/stores';
import { isOverlayError } from '../../packages/core/src/errors';

const [spec, opJson] = process.argv.slice(2);
const op = JSON.parse(opJson!);
const store = spec === 'github' ? new GitHubCacheStore() : openStore(spec!);
const keys = { primary: op.primary, restoreKeys: op.restoreKeys ?? [] };

async function main(): Promise<unknown> {
  switch (op.op) {
    case 'put':
      return store.put(
        op.key,
        async (archive) => {
          if (op.failWrite) throw new Error('write failed (injected)');
          await copyFile(op.from, archive);
        },
        { replace: op.replace },
      );
    case 'fetch':
      return store.fetch(keys, async (archive, key) => {
        if (op.failUse) throw new Error('use failed (injected)');
        await copyFile(archive, op.to);
        return key;
      });
    case 'has':
      return store.has(op.key);
    case 'delete':
      return store.delete(op.key);
    case 'save':
      return saveImage(store, op.key, op.image, { replace: op.replace });
    case 'restore':
      return restoreImage(store, keys, op.image);
  }
  throw new Error(`unknown op ${op.op}`);
}

try {
  process.stdout.write(`\nRESULT ${JSON.stringify({ value: (await main()) ?? null })}\n`);
} catch (e) {
  const error = isOverlayError(e) ? e.toJSON() : { code: 'THROWN', message: (e as Error).message };
  process.stdout.write(`\nRESULT ${JSON.stringify({ error })}\n`);
}
