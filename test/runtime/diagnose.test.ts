// Host diagnostics: Apptainer's stderr (real messages, from its issue tracker and this machine)
// turned into codes and hints, on given host facts.
import { describe, expect, it } from 'vitest';
import { diagnoseRuntimeFailure, type HostFacts } from '../../packages/core/src/index';

const healthy: HostFacts = {
  uid: 1001,
  apparmorRestrictUserns: null,
  usernsClone: null,
  maxUserNamespaces: '63000',
  devFuse: 'ok',
};

describe('diagnoseRuntimeFailure', () => {
  it('maps the lock messages to E_LOCKED', () => {
    for (const msg of [
      'FATAL:   while loading overlay images: failed to open overlay image /x/env.img: while locking ext3 overlay image /x/env.img: image /x/env.img is currently in use by another process',
      'FATAL:   container creation failed: overlay image /x/env.img is currently in use for writing',
    ]) {
      const e = diagnoseRuntimeFailure(`INFO:    something\n${msg}\n`, {
        image: '/x/env.img',
        host: healthy,
      });
      expect(e?.code).toBe('E_LOCKED');
      expect(e?.message).toContain('/x/env.img');
    }
  });

  it('explains AppArmor blocking user namespaces (Ubuntu 24.04)', () => {
    const stderr =
      'INFO   : A system administrator may need to enable user namespaces, install\nERROR  : Failed to create user namespace: Permission denied\n';
    const e = diagnoseRuntimeFailure(stderr, { host: { ...healthy, apparmorRestrictUserns: '1' } });
    expect(e?.code).toBe('E_RUNTIME_FAILED');
    expect(e?.hint).toMatch(/apparmor_restrict_unprivileged_userns/);
    const setgroups = diagnoseRuntimeFailure(
      'ERROR  : Could not write info to setgroups: Permission denied\nERROR  : Error while waiting event for user namespace mappings: no event received\n',
      { host: { ...healthy, apparmorRestrictUserns: '1' } },
    );
    expect(setgroups?.hint).toMatch(/AppArmor/);
    // same message, other cause: user namespaces switched off
    const off = diagnoseRuntimeFailure(stderr, { host: { ...healthy, maxUserNamespaces: '0' } });
    expect(off?.hint).toMatch(/max_user_namespaces/);
  });

  it('explains a missing or unusable /dev/fuse', () => {
    const stderr = "FATAL:   squashfuse_ll: fuse: device not found, try 'modprobe fuse' first\n";
    const missing = diagnoseRuntimeFailure(stderr, { host: { ...healthy, devFuse: 'missing' } });
    expect(missing?.code).toBe('E_RUNTIME_FAILED');
    expect(missing?.message).toMatch(/\/dev\/fuse is missing/);
    expect(missing?.hint).toMatch(/--device \/dev\/fuse/);
    const denied = diagnoseRuntimeFailure('FATAL:   fuse2fs: failed to open /dev/fuse: Permission denied\n', {
      host: { ...healthy, devFuse: 'EACCES' },
    });
    expect(denied?.message).toMatch(/not usable \(EACCES\)/);
  });

  it('hints at --fakeroot for an upper/ the caller cannot write', () => {
    const e = diagnoseRuntimeFailure(
      "INFO:    Try appending ':ro' to your overlay image or using '--fakeroot'\nFATAL:   container creation failed: mount hook function failure: hook function for tag prelayer returns error: setup of overlay upper dir failed: /var/lib/apptainer/mnt/session/overlay-images/0/upper is not writable: permission denied\n",
      { image: 'env.img', host: healthy },
    );
    expect(e?.code).toBe('E_RUNTIME_FAILED');
    expect(e?.hint).toMatch(/--fakeroot/);
  });

  it('leaves the command’s own failures alone', () => {
    expect(diagnoseRuntimeFailure('sh: 1: no: not found\n', { host: healthy })).toBeNull();
    expect(
      diagnoseRuntimeFailure('FATAL:   "nosuchcmd": executable file not found in $PATH\n', { host: healthy }),
    ).toBeNull();
    expect(diagnoseRuntimeFailure('', { host: healthy })).toBeNull();
  });

  it('falls back to E_RUNTIME_FAILED with the runtime’s last message', () => {
    const e = diagnoseRuntimeFailure('FATAL:   could not open image /x.sif: image format not recognized\n', {
      host: healthy,
    });
    expect(e?.code).toBe('E_RUNTIME_FAILED');
    expect(e?.message).toMatch(/image format not recognized/);
  });
});
