// The main job: `overlayctl demo` end to end (Debian base from the machine's mirror, a Python
// environment installed into a small-profile overlay through Apptainer, checked, run read-only).
// The base image is kept between runs in the test cache; the overlay is rebuilt every time.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { hasApptainer, isRoot, TEST_CACHE_DIR } from '../helpers/tools';
import { lastJson, overlayctl } from './helpers';

describe.skipIf(!hasApptainer() || !isRoot())('overlayctl demo', () => {
  it('installs a multi-package Python environment into an overlay and runs it read-only', async () => {
    const dir = join(TEST_CACHE_DIR, 'demo');
    const r = await overlayctl(['demo', '--dir', dir, '--json']);
    expect(r.exitCode, r.stderr.slice(-3000)).toBe(0);
    const d = lastJson(r.stdout) as {
      packagesInstalled: number;
      image: { inodesUsed: number; inodeRatio: number; apptainerCompatible: boolean; usedBytes: number };
      check: { status: string };
      run: { output: string };
    };
    expect(d.packagesInstalled).toBeGreaterThan(20);
    expect(d.image.inodesUsed).toBeGreaterThan(2000);
    expect(d.image.inodeRatio).toBe(4096);
    expect(d.image.apptainerCompatible).toBe(true);
    // apt's lists and caches stayed outside: the image holds the software, not 80 MB of apt cache
    expect(d.image.usedBytes).toBeLessThan(200 * 1024 * 1024);
    expect(d.check.status).toBe('clean');
    expect(d.run.output).toMatch(
      /^python 3\.\d+\.\d+: yaml [\d.]+, jinja2 [\d.]+, numpy [\d.]+, requests [\d.]+$/m,
    );
    expect(d.run.output).toContain('numpy.linspace(0, 1, 5).sum() = 2.5');
    expect((await readdir(dir)).sort()).toEqual(['apt', 'base.def', 'base.sif', 'env.img', 'install.sh']);
  });
});
