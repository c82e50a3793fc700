import { OverlayError } from '../errors';
import { defaultStoreDir, LocalStore } from './local-store';
import { RegistryStore } from './registry-store';
import type { CacheStore } from './store';

/** The store-spec forms, for messages and docs. */
export const STORE_SPEC_FORMS =
  'a directory path (./store, /shared/overlay-cache) or a registry repository (oras://HOST/REPO)';

/**
 * The one place a cache store is chosen from a store spec: a directory (absolute or relative) is
 * a LocalStore; `oras://HOST/REPO` is a registry store; any other `scheme://` is refused
 * (never taken for a relative path). No spec: $OVERLAY_CACHE_STORE, else ~/.cache/overlay-action/store.
 * The GitHub Actions cache is not opened here: it is an adapter the action passes in.
 */
export function openStore(spec?: string): CacheStore {
  const s = spec ?? defaultStoreDir();
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(s)?.[1]?.toLowerCase();
  if (scheme === 'oras') return new RegistryStore(s);
  if (scheme)
    throw new OverlayError('E_INVALID_INPUT', `store ${s}: ${scheme}:// stores are not supported`, {
      hint: `a store is ${STORE_SPEC_FORMS}`,
    });
  if (!s.trim()) throw new OverlayError('E_INVALID_INPUT', 'store: empty store spec');
  return new LocalStore(s);
}
