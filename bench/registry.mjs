#!/usr/bin/env node
// Claim: an overlay image moves through an OCI registry as cheaply as one blob does, and an update
// moves only what changed: after adding a small package's worth of files (~5 MB) to the image,
// push and pull (over the old image) each move <= 15% of the bytes of a full push/pull.
// Baselines in the same run, against the same registry (Debian's docker-registry 2.8 on loopback,
// test/registry/registry.ts): `skopeo copy` of the image's cache archive as one OCI blob (an OCI
// layout -> registry -> OCI layout), and `overlayctl cache save/restore` to a directory store.
// Bytes are the request and response bodies counted by the registry's forwarder; downloads are
// cross-checked against the registry's own access log.
// The image: an ext3 overlay holding real files (/usr/share and /usr/bin copied through a kernel
// loop mount, as a build would write them); the update adds files the same way.
// Root (loop mount). Usage: sudo node bench/registry.mjs [--small]
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build } from 'esbuild';
import { execa } from 'execa';
import { CLI, run, table } from './lib.mjs';

const small = process.argv.includes('--small');
const SIZE = small ? '2G' : '8G';
const TREES = small ? ['/usr/bin'] : ['/usr/share', '/usr/bin'];
const dir = mkdtempSync(join(tmpdir(), 'bench-registry-'));
const MiB = 2 ** 20;
const mb = (n) => (n / MiB).toFixed(1);

// the test registry helper is TypeScript: bundle it for this script
const helper = join(dir, 'registry.mjs');
await build({
  entryPoints: [join(import.meta.dirname, '../test/registry/registry.ts')],
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  outfile: helper,
  logLevel: 'error',
  banner: { js: "import { createRequire as __r } from 'node:module'; const require = __r(import.meta.url);" },
});
const { startRegistry } = await import(helper);

const time = async (fn) => {
  const t0 = process.hrtime.bigint();
  const value = await fn();
  return { value, s: Number(process.hrtime.bigint() - t0) / 1e9 };
};
// async (never spawnSync): the registry's forwarder runs in this process's event loop
const ctlJson = async (args) =>
  JSON.parse((await execa(process.execPath, [CLI, ...args, '--json'])).stdout.trim().split('\n').at(-1));
const runAsync = (file, args) => execa(file, args);

/** Copy directory trees into the image's upper/ through a loop mount (what a build's writes do). */
function writeThroughMount(img, copies) {
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt, { recursive: true });
  run('mount', ['-o', 'loop', img, mnt]);
  try {
    for (const [from, to] of copies) {
      mkdirSync(join(mnt, 'upper', to, '..'), { recursive: true });
      run('cp', ['-a', from, join(mnt, 'upper', to)]);
    }
  } finally {
    run('umount', [mnt]);
  }
}

/** Directories of a small package (~5 MB of real files). */
function smallPackage() {
  const root = '/usr/lib/python3.11';
  const picked = [];
  let bytes = 0;
  for (const name of readdirSync(root).sort()) {
    const p = join(root, name);
    if (!statSync(p).isDirectory() || name.startsWith('__') || name === 'site-packages') continue;
    const size = Number(run('du', ['-sb', p]).split('\t')[0]);
    if (size > 3 * MiB) continue;
    picked.push(p);
    bytes += size;
    if (bytes >= 5 * MiB) break;
  }
  return { picked, bytes };
}

/** Sum of response bytes of successful blob GETs in the registry's access log since `from`. */
function accessLogBlobBytes(log, from) {
  let n = 0;
  for (const m of log
    .slice(from)
    .matchAll(/"GET \/v2\/[^ ]+\/blobs\/sha256:[0-9a-f]+ HTTP\/1\.1" 200 (\d+)/g))
    n += Number(m[1]);
  return n;
}

/** An OCI layout holding one blob (the baseline's artifact). */
function ociLayout(layoutDir, blobPath) {
  const sha = (p) => run('sha256sum', [p]).split(' ')[0];
  mkdirSync(join(layoutDir, 'blobs/sha256'), { recursive: true });
  const blobSha = sha(blobPath);
  cpSync(blobPath, join(layoutDir, 'blobs/sha256', blobSha));
  const config = Buffer.from('{}');
  const configSha = '44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a';
  writeFileSync(join(layoutDir, 'blobs/sha256', configSha), config);
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    artifactType: 'application/vnd.example.blob.v1',
    config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: `sha256:${configSha}`, size: 2 },
    layers: [
      { mediaType: 'application/octet-stream', digest: `sha256:${blobSha}`, size: statSync(blobPath).size },
    ],
  });
  const mpath = join(layoutDir, 'manifest.tmp');
  writeFileSync(mpath, manifest);
  const mSha = sha(mpath);
  rmSync(mpath);
  writeFileSync(join(layoutDir, 'blobs/sha256', mSha), manifest);
  writeFileSync(join(layoutDir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  writeFileSync(
    join(layoutDir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: `sha256:${mSha}`,
          size: Buffer.byteLength(manifest),
          annotations: { 'org.opencontainers.image.ref.name': 'v1' },
        },
      ],
    }),
  );
}

const reg = await startRegistry();
try {
  const img = join(dir, 'env.img');
  run(process.execPath, [CLI, 'create', img, '--size', SIZE, '--profile', 'small']);
  writeThroughMount(
    img,
    TREES.map((t) => [t, `opt/env${t}`]),
  );
  // the bench is only valid on a clean source (the machine is shared: a mount yanked by another
  // process would leave a half-written image)
  run('e2fsck', ['-fn', img]);
  const used = (await ctlJson(['info', img])).usedBytes;
  console.log(`image: ${SIZE} sparse, ${mb(used)} MiB in use (${TREES.join(' + ')})`);
  const base = `oras://${reg.host}/bench/env`;
  const rows = [];
  const measure = async (name, fn) => {
    reg.resetTraffic();
    const logFrom = (await reg.accessLog()).length;
    const { value, s } = await time(fn);
    const t = reg.traffic();
    const logDown = accessLogBlobBytes(await reg.accessLog(), logFrom);
    const row = {
      step: name,
      seconds: s.toFixed(1),
      upMiB: mb(t.up),
      downMiB: mb(t.down),
      logBlobDownMiB: mb(logDown),
      requests: t.requests.length,
    };
    rows.push(row);
    return { value, s, up: t.up, down: t.down };
  };

  // ours: full push, full pull into an empty place
  const push1 = await measure('overlayctl push (full)', async () => ctlJson(['push', img, `${base}:latest`]));
  const pulled = join(dir, 'pulled.img');
  const pull1 = await measure('overlayctl pull (full)', async () =>
    ctlJson(['pull', `${base}@${push1.value.digest}`, pulled]),
  );

  // baseline: the same image as one blob (its cache archive), skopeo copy up and down
  const store = join(dir, 'store');
  const dsave = await time(async () =>
    ctlJson(['cache', 'save', img, '--key', 'bench-v1', '--store', store]),
  );
  const archive = join(
    store,
    readdirSync(store).find((n) => n.endsWith('.ovc.zst')),
  );
  const drest = await time(async () =>
    ctlJson(['cache', 'restore', join(dir, 'dir-restored.img'), '--key', 'bench-v1', '--store', store]),
  );
  rows.push({
    step: 'cache save --store DIR',
    seconds: dsave.s.toFixed(1),
    upMiB: '-',
    downMiB: '-',
    logBlobDownMiB: '-',
    requests: 0,
  });
  rows.push({
    step: 'cache restore --store DIR',
    seconds: drest.s.toFixed(1),
    upMiB: '-',
    downMiB: '-',
    logBlobDownMiB: '-',
    requests: 0,
  });
  const layout = join(dir, 'layout');
  ociLayout(layout, archive);
  const skUp = await measure('skopeo copy up (one blob)', async () =>
    runAsync('skopeo', [
      'copy',
      '--dest-tls-verify=false',
      `oci:${layout}:v1`,
      `docker://${reg.host}/bench/blob:v1`,
    ]),
  );
  const skDown = await measure('skopeo copy down (one blob)', async () =>
    runAsync('skopeo', [
      'copy',
      '--src-tls-verify=false',
      `docker://${reg.host}/bench/blob:v1`,
      `oci:${join(dir, 'layout-down')}:v1`,
    ]),
  );

  // the update: a small package added the way a build adds it
  const v2 = join(dir, 'env-v2.img');
  run('cp', ['--sparse=always', img, v2]);
  const pkg = smallPackage();
  writeThroughMount(
    v2,
    pkg.picked.map((p) => [p, `opt/env/pkg${p}`]),
  );
  run('e2fsck', ['-fn', v2]);
  console.log(
    `update: ${mb(pkg.bytes)} MiB of files (${pkg.picked.length} directories of ${'/usr/lib/python3.11'})`,
  );
  // CI pushes the new version under the same (moving) tag
  const push2 = await measure('overlayctl push (update)', async () =>
    ctlJson(['push', v2, `${base}:latest`]),
  );
  const pull2 = await measure('overlayctl pull (update over v1)', async () =>
    ctlJson(['pull', `${base}:latest`, pulled]),
  );
  table(rows);
  const ratio = (a, b) => (a / b).toFixed(3);
  console.log('');
  console.log(`full push bytes  / skopeo one-blob push bytes : ${ratio(push1.up, skUp.up)}`);
  console.log(`full pull bytes  / skopeo one-blob pull bytes : ${ratio(pull1.down, skDown.down)}`);
  console.log(`full push time   / skopeo push time           : ${ratio(push1.s, skUp.s)}`);
  console.log(`full pull time   / skopeo pull time           : ${ratio(pull1.s, skDown.s)}`);
  console.log(`full push time   / cache save to a directory  : ${ratio(push1.s, dsave.s)}`);
  console.log(`update push time / full push time             : ${ratio(push2.s, push1.s)}`);
  console.log(`update pull time / full pull time             : ${ratio(pull2.s, pull1.s)}`);
  console.log(`full pull time   / cache restore from a dir   : ${ratio(pull1.s, drest.s)}`);
  console.log(
    `update push bytes / full push bytes           : ${ratio(push2.up, push1.up)}  (target <= 0.15)`,
  );
  console.log(
    `update pull bytes / full pull bytes           : ${ratio(pull2.down, pull1.down)}  (target <= 0.15)`,
  );
  console.log(
    `chunks: full ${push1.value.chunks}; update pushed ${push2.value.chunksUploaded} (${push2.value.chunksUnchanged} unchanged, not recompressed), pulled ${pull2.value.chunksDownloaded} (reused ${pull2.value.chunksReused} from the old image)`,
  );
} finally {
  await reg.stop();
  rmSync(dir, { recursive: true, force: true });
}
