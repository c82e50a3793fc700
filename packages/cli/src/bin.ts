import module from 'node:module';
import { main } from './main';

// Node >= 22.1 caches compiled bytecode of the bundle: exec start-up is most of our overhead.
(module as { enableCompileCache?: () => void }).enableCompileCache?.();
await main(process.argv.slice(2));
