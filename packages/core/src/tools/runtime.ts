import { OverlayError } from '../errors';
import { findTool } from './run';

export type RuntimeName = 'apptainer' | 'singularity';

export interface Runtime {
  /** The command runTool spawns (resolved on PATH, plus the sbin directories). */
  name: RuntimeName;
  path: string;
}

/**
 * The container runtime: `apptainer`, else `singularity` (same CLI for everything used here).
 * `env` supplies the PATH searched (default: this process's), so callers and tests can point it
 * elsewhere.
 */
export function findRuntime(env: NodeJS.ProcessEnv = process.env): Runtime {
  for (const name of ['apptainer', 'singularity'] as const) {
    const path = findTool(name, env);
    if (path) return { name, path };
  }
  throw new OverlayError('E_RUNTIME_MISSING', 'neither apptainer nor singularity is installed (or on PATH)', {
    hint:
      'install Apptainer: run scripts/setup-host.sh as root (Debian/Ubuntu), or apt-get install apptainer ' +
      '(Ubuntu PPA ppa:apptainer/ppa), or see https://apptainer.org/docs/admin/main/installation.html',
    details: { searched: ['apptainer', 'singularity'], PATH: env.PATH ?? '' },
  });
}
