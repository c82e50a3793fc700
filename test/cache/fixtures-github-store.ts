// Child-process entry (bundled by the test): the GitHub store reads ACTIONS_* from its env.
import { GitHubCacheStore } from '../../packages/actions/src/github-cache-store';

const [op, key, image, ...restoreKeys] = process.argv.slice(2);
const store = new GitHubCacheStore();
const result =
  op === 'save'
    ? await store.save(key!, image!)
    : await store.restore({ primary: key!, restoreKeys }, image!);
process.stdout.write(`\nRESULT ${JSON.stringify(result)}\n`);
