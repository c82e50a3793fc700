import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { isOverlayError, OverlayError } from '../errors';
import { replaceAtomically, withScratchDir } from '../fs/atomic';
import { OCI_MANIFEST, type RegistryClient } from '../registry/client';
import { layerFromSif, wrapLayerInSif } from '../sif/layer';

/**
 * A committed SquashFS layer in a registry, the way Apptainer's ORAS keeps SIF files (checked
 * here against `apptainer push`): config `application/vnd.sylabs.sif.config.v1+json` holding `{}`,
 * one layer `application/vnd.sylabs.sif.layer.v1.sif` whose bytes are a SIF with the SquashFS as
 * its overlay partition. So `apptainer pull x.sif oras://…` gives a file that works as
 * `--overlay x.sif:ro`, and our pull unwraps the layer byte-identical (sha256 in an annotation).
 */
export const SIF_CONFIG_MEDIA_TYPE = 'application/vnd.sylabs.sif.config.v1+json';
export const SIF_LAYER_MEDIA_TYPE = 'application/vnd.sylabs.sif.layer.v1.sif';
const LAYER_DIGEST = 'org.overlay-action.layer.sha256';
const EMPTY_JSON_DIGEST = 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a';

async function fileDigest(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * 2 ** 20 }))
    hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

/** A scratch directory for a SIF as big as the layer ($TMPDIR). */
const scratch = <T>(fn: (dir: string) => Promise<T>) => withScratchDir('sif', fn);

export interface PushLayerResult {
  digest: string;
  sifBytes: number;
  layerSha256: string;
  uploaded: boolean;
}

export async function pushLayer(
  client: RegistryClient,
  layer: string,
  tag: string,
  opts: { onProgress?: (m: string) => void } = {},
): Promise<PushLayerResult> {
  return scratch(async (dir) => {
    const sif = join(dir, `${basename(layer).replace(/\.(sqfs|squashfs|img)$/, '')}.sif`);
    opts.onProgress?.('wrapping the layer in a SIF');
    await wrapLayerInSif(layer, sif);
    const [sifDigest, layerSha256, st] = await Promise.all([fileDigest(sif), fileDigest(layer), stat(sif)]);
    const present = await client.hasBlob(sifDigest);
    if (!present) {
      opts.onProgress?.(`uploading ${(st.size / 2 ** 20).toFixed(1)} MiB`);
      await client.uploadFile(sif, st.size, sifDigest);
    }
    if (!(await client.hasBlob(EMPTY_JSON_DIGEST))) await client.uploadBlob(Buffer.from('{}'));
    const manifest = {
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: SIF_CONFIG_MEDIA_TYPE, size: 2, digest: EMPTY_JSON_DIGEST },
      layers: [
        {
          mediaType: SIF_LAYER_MEDIA_TYPE,
          size: st.size,
          digest: sifDigest,
          annotations: { 'org.opencontainers.image.title': basename(sif) },
        },
      ],
      annotations: {
        [LAYER_DIGEST]: layerSha256,
        'org.opencontainers.image.created': new Date().toISOString(),
      },
    };
    const digest = await client.putManifest(tag, Buffer.from(JSON.stringify(manifest)), OCI_MANIFEST);
    return { digest, sifBytes: st.size, layerSha256, uploaded: !present };
  });
}

/** Is this manifest a SIF artifact (ours or `apptainer push`'s)? */
export function isSifManifest(m: { layers?: Array<{ mediaType?: string }> }): boolean {
  return m.layers?.length === 1 && m.layers[0]!.mediaType === SIF_LAYER_MEDIA_TYPE;
}

export interface PullLayerResult {
  digest: string;
  layerSha256: string;
  sizeBytes: number;
}

/** Download the SIF, take its SquashFS layer out (renamed into place only when whole and verified). */
export async function pullLayer(
  client: RegistryClient,
  manifest: { layers: Array<{ digest: string; size: number }>; annotations?: Record<string, string> },
  manifestDigest: string,
  target: string,
  opts: { onProgress?: (m: string) => void; where: string },
): Promise<PullLayerResult> {
  return scratch(async (dir) => {
    const sif = join(dir, 'layer.sif');
    const blob = manifest.layers[0]!;
    opts.onProgress?.(`downloading ${(blob.size / 2 ** 20).toFixed(1)} MiB`);
    const fh = await open(sif, 'w');
    let pos = 0;
    try {
      await client.readBlob(
        blob.digest,
        async (chunk) => {
          await fh.write(chunk, 0, chunk.length, pos);
          pos += chunk.length;
        },
        async () => {
          await fh.truncate(0); // a retry starts over
          pos = 0;
        },
      );
    } finally {
      await fh.close();
    }
    const want = manifest.annotations?.[LAYER_DIGEST];
    // unwrapped and checked under a temp name beside the target: a failure replaces nothing
    const layerSha256 = await replaceAtomically(target, async (tmp) => {
      try {
        await layerFromSif(sif, tmp);
      } catch (e) {
        if (isOverlayError(e, 'E_UNKNOWN_FORMAT') || isOverlayError(e, 'E_INVALID_INPUT'))
          throw new OverlayError('E_WRONG_ARTIFACT', `${opts.where} is a SIF but not a layer: ${e.message}`, {
            hint: 'container images are pulled with apptainer pull',
          });
        throw e;
      }
      const got = await fileDigest(tmp);
      if (want && want !== got)
        throw new OverlayError('E_INTEGRITY', `${opts.where}: layer digest ${got} is not ${want}`);
      return got;
    });
    return { digest: manifestDigest, layerSha256, sizeBytes: (await stat(target)).size };
  });
}
