import { closeSync, constants, openSync, readFileSync } from 'node:fs';
import { OverlayError } from '../errors';

/** What the diagnostics look at on the host; injectable so the rules are testable anywhere. */
export interface HostFacts {
  uid: number;
  /** /proc/sys/kernel/apparmor_restrict_unprivileged_userns (Ubuntu ≥ 23.10), null when absent. */
  apparmorRestrictUserns: string | null;
  /** /proc/sys/kernel/unprivileged_userns_clone (older Debian kernels), null when absent. */
  usernsClone: string | null;
  /** /proc/sys/user/max_user_namespaces, null when absent. */
  maxUserNamespaces: string | null;
  /** 'ok', 'missing', or the errno code from opening /dev/fuse read-write. */
  devFuse: string;
}

function readProc(path: string): string | null {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return null;
  }
}

export function probeHost(): HostFacts {
  let devFuse = 'ok';
  try {
    closeSync(openSync('/dev/fuse', constants.O_RDWR));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    devFuse = code === 'ENOENT' ? 'missing' : code;
  }
  return {
    uid: process.getuid?.() ?? 0,
    apparmorRestrictUserns: readProc('/proc/sys/kernel/apparmor_restrict_unprivileged_userns'),
    usernsClone: readProc('/proc/sys/kernel/unprivileged_userns_clone'),
    maxUserNamespaces: readProc('/proc/sys/user/max_user_namespaces'),
    devFuse,
  };
}

/** The lines Apptainer itself printed (FATAL/ERROR), not the container command's output. */
function runtimeLines(stderr: string): string[] {
  return stderr
    .split('\n')
    .map((l) => l.replace(/\x1b\[[0-9;]*m/g, '').trim())
    .filter((l) => /^(FATAL|ERROR)\s*:/.test(l));
}

/**
 * Turn a failed Apptainer start (exit 255 with FATAL/ERROR lines) into an actionable error:
 * E_LOCKED for a busy image, E_RUNTIME_FAILED with a hint for known host problems. Returns null
 * when stderr shows no Apptainer failure (the container command itself failed).
 */
export function diagnoseRuntimeFailure(
  stderr: string,
  opts: { image?: string; runtime?: string; host?: HostFacts } = {},
): OverlayError | null {
  const lines = runtimeLines(stderr);
  if (!lines.length) return null;
  const text = lines.join('\n');
  const rt = opts.runtime ?? 'apptainer';
  const details = { stderr: lines.slice(-10).join('\n') };

  if (/currently in use/i.test(text)) {
    return new OverlayError(
      'E_LOCKED',
      `${opts.image ?? 'the overlay image'} is in use by another process (${rt} refused to mount it)`,
      { hint: 'wait for the other container or overlayctl job to finish, or pass --wait SECONDS', details },
    );
  }
  if (/upper dir.*not writable/i.test(text)) {
    return new OverlayError(
      'E_RUNTIME_FAILED',
      `the upper/ directory of ${opts.image ?? 'the overlay'} is not writable by you`,
      {
        hint: 'let overlayctl choose --fakeroot (omit --no-fakeroot), mount it read-only (--ro), or give upper/ to your user',
        details,
      },
    );
  }
  // the container's command could not be started: its exit status (255) is the result
  if (/executable file not found|no such file or directory: .*exec/i.test(text)) return null;
  const host = opts.host ?? probeHost();
  if (/user namespace|setgroups|namespace requires privileges|unprivileged_userns/i.test(text)) {
    let hint: string;
    if (host.apparmorRestrictUserns === '1') {
      hint =
        'AppArmor blocks unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1, ' +
        'Ubuntu 23.10+): install the AppArmor profile shipped with Apptainer (/etc/apparmor.d/apptainer, ' +
        'in the GitHub release .deb; then `systemctl reload apparmor`), or as root ' +
        '`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`';
    } else if (host.usernsClone === '0' || host.maxUserNamespaces === '0') {
      hint =
        'unprivileged user namespaces are disabled: as root `sysctl -w kernel.unprivileged_userns_clone=1` ' +
        'and `sysctl -w user.max_user_namespaces=15000`, or install apptainer-suid';
    } else {
      hint =
        'user namespaces are not usable here (inside another container?): run on the host, or ask the ' +
        'administrator to enable them (see https://apptainer.org/docs/admin/main/user_namespace.html)';
    }
    return new OverlayError('E_RUNTIME_FAILED', `${rt} could not create a user namespace: ${lines[0]}`, {
      hint,
      details: { ...details, host },
    });
  }
  if (/subuid|subgid|no mapping entry/i.test(text)) {
    return new OverlayError('E_RUNTIME_FAILED', `${rt} --fakeroot has no subordinate ids: ${lines[0]}`, {
      hint: 'as root: `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 USER`, or omit --fakeroot',
      details,
    });
  }
  if (/fuse/i.test(text)) {
    if (host.devFuse !== 'ok') {
      const why =
        host.devFuse === 'missing' ? '/dev/fuse is missing' : `/dev/fuse is not usable (${host.devFuse})`;
      return new OverlayError('E_RUNTIME_FAILED', `${rt} needs FUSE to mount the overlay: ${why}`, {
        hint:
          'as root `modprobe fuse` (and `chmod 666 /dev/fuse`); inside a container start it with ' +
          '`--device /dev/fuse`; run scripts/setup-host.sh for fuse2fs, squashfuse and fuse-overlayfs',
        details: { ...details, host },
      });
    }
    return new OverlayError('E_RUNTIME_FAILED', `${rt} could not mount through FUSE: ${lines[0]}`, {
      hint: 'install the FUSE helpers with scripts/setup-host.sh (fuse2fs, squashfuse, fuse-overlayfs, fuse3)',
      details,
    });
  }
  return new OverlayError('E_RUNTIME_FAILED', `${rt} could not start the container: ${lines.at(-1)}`, {
    hint: 'see the runtime messages above; OVERLAYCTL_DEBUG=1 shows the full command',
    details,
  });
}
