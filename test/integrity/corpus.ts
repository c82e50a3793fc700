// e2fsprogs' own corpus of damaged filesystems (tests/f_* of its Debian source package), fetched
// at test time through a private apt source list (never committed, never the host's apt state)
// and kept in the test cache.
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { TEST_CACHE_DIR, withDirLock } from '../helpers/tools';

export interface CorpusCase {
  name: string;
  /** image.gz of the test */
  image: string;
  /** Exit status e2fsprogs expects from the first `e2fsck -yf` run (expect.1). */
  expected: number;
  /** ... and from the second run (expect.2); null when the test has none. */
  expectedSecond: number | null;
}

const exitOf = (text: string) => {
  const all = [...text.matchAll(/^Exit status is (\d+)/gm)];
  return all.length ? Number(all[all.length - 1]![1]) : null;
};

/** The source version of the installed e2fsprogs, so the expectations match the e2fsck under test. */
async function sourceVersion(): Promise<string> {
  // biome-ignore lint/suspicious/noTemplateCurlyInString: a dpkg-query format, not a template
  const r = await execa('dpkg-query', ['-W', '-f', '${source:Version}', 'e2fsprogs'], { reject: false });
  return r.exitCode === 0 ? r.stdout.trim() : '';
}

async function download(into: string): Promise<string> {
  const apt = await mkdtemp(join(TEST_CACHE_DIR, 'apt-'));
  try {
    await mkdir(join(apt, 'lists', 'partial'), { recursive: true });
    await mkdir(join(apt, 'cache', 'archives', 'partial'), { recursive: true });
    await mkdir(join(apt, 'parts'));
    await writeFile(
      join(apt, 'sources.list'),
      'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main\n',
    );
    const opts = [
      `-o=Dir::Etc::SourceList=${join(apt, 'sources.list')}`,
      `-o=Dir::Etc::SourceParts=${join(apt, 'parts')}`,
      `-o=Dir::State::Lists=${join(apt, 'lists')}`,
      `-o=Dir::Cache=${join(apt, 'cache')}`,
      '-o=Debug::NoLocking=1',
      '-o=APT::Sandbox::User=root',
      '-qq',
    ];
    await execa('apt-get', [...opts, 'update']);
    const version = await sourceVersion();
    const dl = await mkdtemp(join(TEST_CACHE_DIR, 'e2fsprogs-src-'));
    await execa(
      'apt-get',
      [...opts, 'source', '--download-only', version ? `e2fsprogs=${version}` : 'e2fsprogs'],
      {
        cwd: dl,
      },
    );
    const orig = (await readdir(dl)).find((f) => /^e2fsprogs_.*\.orig\.tar\.(gz|xz)$/.test(f));
    if (!orig) throw new Error(`apt-get source fetched no e2fsprogs orig tarball into ${dl}`);
    await mkdir(into, { recursive: true });
    await execa('tar', [
      '-xf',
      join(dl, orig),
      '-C',
      into,
      '--strip-components=1',
      '--wildcards',
      '*/tests/f_*',
    ]);
    await rm(dl, { recursive: true, force: true });
    return version;
  } finally {
    await rm(apt, { recursive: true, force: true });
  }
}

/**
 * The f_* tests that run with e2fsprogs' default script (no `script` of their own): a gzipped
 * image and the exit statuses e2fsprogs expects.
 */
export async function e2fsprogsCorpus(): Promise<{ version: string; cases: CorpusCase[] }> {
  const root = join(TEST_CACHE_DIR, 'e2fsprogs-corpus');
  const stamp = join(root, '.complete');
  await mkdir(TEST_CACHE_DIR, { recursive: true });
  // the expectations belong to one e2fsprogs version: the installed one's source
  const wanted = await sourceVersion();
  const fresh = async () => existsSync(stamp) && (await readFile(stamp, 'utf8')).trim() === wanted;
  if (!(await fresh())) {
    await withDirLock(join(TEST_CACHE_DIR, 'e2fsprogs-corpus.lock'), async () => {
      if (await fresh()) return;
      await rm(root, { recursive: true, force: true });
      const version = await download(root);
      await writeFile(stamp, version);
    });
  }
  const version = (await readFile(stamp, 'utf8')).trim();
  const tests = join(root, 'tests');
  const cases: CorpusCase[] = [];
  for (const name of (await readdir(tests)).filter((n) => n.startsWith('f_')).sort()) {
    const dir = join(tests, name);
    if (existsSync(join(dir, 'script')) || !existsSync(join(dir, 'image.gz'))) continue;
    const first = await readFile(join(dir, 'expect.1'), 'utf8').catch(() => null);
    const expected = first === null ? null : exitOf(first);
    if (expected === null) continue;
    const second = await readFile(join(dir, 'expect.2'), 'utf8').catch(() => null);
    cases.push({
      name,
      image: join(dir, 'image.gz'),
      expected,
      expectedSecond: second === null ? null : exitOf(second),
    });
  }
  return { version, cases };
}
