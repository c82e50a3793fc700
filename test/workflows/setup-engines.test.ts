// scripts/setup-engines.sh: present engines are only looked at; a user who is not root and lacks
// them is told what to install, and nothing is attempted.
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { isRoot } from '../helpers/tools';
import { ensureTestUser, runAs } from '../helpers/users';
import { ROOT } from './helpers';

const SCRIPT = join(ROOT, 'scripts/setup-engines.sh');

describe('scripts/setup-engines.sh', () => {
  it('with everything present: ok, without apt-get', async () => {
    const r = await execa('bash', [SCRIPT], { reject: false, all: true });
    expect(r.exitCode, r.all).toBe(0);
    expect(r.stdout).toMatch(/^\[setup-engines\] ok: snakemake, cwltool and singularity present/m);
    expect(r.stdout).not.toContain('installing');
  });

  it.runIf(isRoot())('not root, engines missing from PATH: names them, exit 1', async () => {
    const user = await ensureTestUser();
    // a PATH without /usr/bin (where the engines are) but with what bash needs to run the script
    const r = await runAs(user, ['/bin/bash', SCRIPT], { env: { PATH: '/nonexistent' } });
    expect(r.exitCode, String(r.stdout)).toBe(1);
    expect(String(r.stdout)).toMatch(/missing: snakemake cwltool; install them as root/);
  });
});
