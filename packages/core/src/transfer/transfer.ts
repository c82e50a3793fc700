import { resolve } from 'node:path';
import { OverlayError } from '../errors';
import { detectFormat } from '../image/format';
import { formatRef, parseOrasRef, RegistryClient } from '../registry/client';
import { IMAGE_ARTIFACT_TYPE, pullImage, pushImage } from './image';
import { isSifManifest, pullLayer, pushLayer } from './layer';

export interface TransferOptions {
  /** Plain HTTP to a non-loopback registry (Apptainer's --no-https). */
  insecure?: boolean;
  onProgress?: (message: string) => void;
}

export interface PushResult {
  kind: 'image' | 'layer';
  ref: string;
  /** Digest of the manifest pushed (pull by `oras://HOST/REPO@DIGEST` for exactly this). */
  digest: string;
  sizeBytes: number;
  /** Image: content digest (sparse-independent); layer: sha256 of the SquashFS file. */
  sha256: string;
  chunks: number;
  chunksUploaded: number;
  chunksSkipped: number;
  /** Chunks identical to what the tag held before (neither compressed nor uploaded). */
  chunksUnchanged: number;
  bytesUploaded: number;
}

export interface PullResult {
  kind: 'image' | 'layer';
  ref: string;
  digest: string;
  file: string;
  sizeBytes: number;
  sha256: string;
  chunks: number;
  chunksDownloaded: number;
  chunksReused: number;
  bytesDownloaded: number;
}

/** Push an ext3 overlay image (as chunks) or a SquashFS layer (as an Apptainer-pullable SIF). */
export async function pushArtifact(
  file: string,
  uri: string,
  opts: TransferOptions = {},
): Promise<PushResult> {
  const ref = parseOrasRef(uri);
  if (!ref.tag || ref.digest)
    throw new OverlayError('E_INVALID_INPUT', `push needs a tag: ${uri}`, {
      hint: `e.g. ${formatRef({ ...ref, digest: undefined, tag: 'v1' })}`,
    });
  const { format } = await detectFormat(file);
  const client = new RegistryClient(ref.host, ref.repo, {
    insecure: opts.insecure,
    onRetry: opts.onProgress,
  });
  if (format === 'squashfs') {
    const r = await pushLayer(client, file, ref.tag, opts);
    return {
      kind: 'layer',
      ref: uri,
      digest: r.digest,
      sizeBytes: r.sifBytes,
      sha256: r.layerSha256.replace(/^sha256:/, ''),
      chunks: 1,
      chunksUploaded: r.uploaded ? 1 : 0,
      chunksSkipped: r.uploaded ? 0 : 1,
      chunksUnchanged: 0,
      bytesUploaded: r.uploaded ? r.sifBytes : 0,
    };
  }
  const r = await pushImage(client, file, ref.tag, opts); // requireExt3 explains other formats
  return {
    kind: 'image',
    ref: uri,
    digest: r.digest,
    sizeBytes: r.sizeBytes,
    sha256: r.sha256,
    chunks: r.chunks,
    chunksUploaded: r.chunksUploaded,
    chunksSkipped: r.chunksSkipped,
    chunksUnchanged: r.chunksUnchanged,
    bytesUploaded: r.bytesUploaded,
  };
}

/** Pull whichever kind the reference holds into `file` (atomically; a failure replaces nothing). */
export async function pullArtifact(
  uri: string,
  file: string,
  opts: TransferOptions = {},
): Promise<PullResult> {
  const ref = parseOrasRef(uri);
  const client = new RegistryClient(ref.host, ref.repo, {
    insecure: opts.insecure,
    onRetry: opts.onProgress,
  });
  const { body, digest } = await client.getManifest(ref.digest ?? ref.tag ?? 'latest');
  let manifest: {
    artifactType?: string;
    layers?: Array<{ digest: string; size: number; mediaType?: string }>;
  };
  try {
    manifest = JSON.parse(body.toString('utf8'));
  } catch {
    throw new OverlayError('E_WRONG_ARTIFACT', `${uri} is not an OCI manifest`);
  }
  const where = formatRef(ref);
  const target = resolve(file);
  if (manifest.artifactType === IMAGE_ARTIFACT_TYPE) {
    const r = await pullImage(client, body, digest, target, { onProgress: opts.onProgress, where });
    return {
      kind: 'image',
      ref: uri,
      digest,
      file: target,
      sizeBytes: r.sizeBytes,
      sha256: r.sha256,
      chunks: r.chunks,
      chunksDownloaded: r.chunksDownloaded,
      chunksReused: r.chunksReused,
      bytesDownloaded: r.bytesDownloaded,
    };
  }
  if (isSifManifest(manifest)) {
    const r = await pullLayer(client, manifest as Parameters<typeof pullLayer>[1], digest, target, {
      onProgress: opts.onProgress,
      where,
    });
    return {
      kind: 'layer',
      ref: uri,
      digest,
      file: target,
      sizeBytes: r.sizeBytes,
      sha256: r.layerSha256.replace(/^sha256:/, ''),
      chunks: 1,
      chunksDownloaded: 1,
      chunksReused: 0,
      bytesDownloaded: manifest.layers![0]!.size,
    };
  }
  throw new OverlayError(
    'E_WRONG_ARTIFACT',
    `${where} is neither an overlay image nor a SIF layer (${manifest.artifactType ?? manifest.layers?.[0]?.mediaType ?? 'unknown kind'})`,
    { hint: 'container images are pulled with apptainer pull' },
  );
}
