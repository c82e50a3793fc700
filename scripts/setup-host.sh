#!/usr/bin/env bash
# scripts/setup-host.sh -- install (or just verify) every system tool overlay-action uses, then
# make sure an Apptainer runtime is there (scripts/setup-apptainer.sh). Debian/Ubuntu, idempotent.
#
# Fast path: when everything is present it only asks dpkg-query (one call) and `command -v`, never
# apt-get, and finishes well under a second -- `npm test` runs it before every test run.
# As root, missing packages are installed with apt-get (`apt-get update` only when something is
# missing). Not root: succeeds if everything is present, otherwise lists what is missing, exit 1.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T0=${EPOCHREALTIME/[.,]/}
log() { printf '[setup-host] %s\n' "$*"; }
elapsed() { printf '%d.%03ds' $(((${EPOCHREALTIME/[.,]/} - T0) / 1000000)) $((((${EPOCHREALTIME/[.,]/} - T0) / 1000) % 1000)); }

# Debian package : a command it provides (the probe used when dpkg is not available) -- and why.
TOOLS=(
  e2fsprogs:mkfs.ext3         # mkfs.ext3, e2fsck, resize2fs, tune2fs, dumpe2fs, debugfs, e2image
  squashfs-tools:mksquashfs   # mksquashfs, unsquashfs: SquashFS layers
  fuse2fs:fuse2fs             # unprivileged ext3 overlay mounts (used by Apptainer)
  squashfuse:squashfuse       # unprivileged SquashFS mounts (squashfuse_ll, used by Apptainer)
  fuse-overlayfs:fuse-overlayfs # writable overlays with --fakeroot / unprivileged
  fuse3:fusermount3           # FUSE unmounts
  util-linux:flock            # flock, losetup, mount, unshare, runuser
  uidmap:newuidmap            # newuidmap/newgidmap: --fakeroot user namespaces
  zstd:zstd                   # cache archive compression
  tar:tar                     # cache archives (--sparse)
  busybox-static:busybox      # static busybox for the offline test base image
  libcap2-bin:capsh           # capsh, getpcaps: host capability diagnostics
  attr:getfattr               # getfattr/setfattr: overlay whiteout/opaque xattrs
  debootstrap:debootstrap     # the demo's Debian minbase base image (offline from the apt mirror)
  docker-registry:docker-registry # a real OCI registry (distribution 2.8) for the push/pull and registry-store tests
  skopeo:skopeo               # bench/registry.mjs baseline: one-blob copy of the same bytes
  apache2-utils:htpasswd      # bcrypt htpasswd file for the registry tests' Basic auth
  openssl:openssl             # the registry tests' token issuer certificate
)

PKGS=()
declare -A PROBE=()
for t in "${TOOLS[@]}"; do
  PKGS+=("${t%%:*}")
  PROBE[${t%%:*}]=${t#*:}
done

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  declare -A STATUS=()
  # one dpkg-query for all packages; unknown packages are reported on stderr and simply absent here
  while IFS=$'\t' read -r pkg st; do
    STATUS[$pkg]=$st
  done < <(dpkg-query -W -f '${Package}\t${db:Status-Status}\n' "${PKGS[@]}" 2>/dev/null || true)
  for p in "${PKGS[@]}"; do
    [ "${STATUS[$p]:-}" = installed ] || missing+=("$p")
  done
else
  for p in "${PKGS[@]}"; do
    command -v "${PROBE[$p]}" >/dev/null 2>&1 || missing+=("$p")
  done
fi

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "missing packages: ${missing[*]}"
    log "install them as root (sudo bash $HERE/setup-host.sh) and rerun"
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  APT_OPTS=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
  log "installing: ${missing[*]}"
  # lists may be absent (fresh container) or stale (CI images): update, then install
  log "apt-get update"
  apt-get -q -o DPkg::Lock::Timeout=300 update >/dev/null
  export SETUP_APT_UPDATED=1
  apt-get install "${APT_OPTS[@]}" "${missing[@]}" >/dev/null
  log "installed: ${missing[*]} ($(elapsed))"
fi

bash "$HERE/setup-apptainer.sh"

if command -v apptainer >/dev/null 2>&1; then
  rt=apptainer
else
  rt=singularity
fi
log "ok: ${#PKGS[@]} packages and $rt present ($(elapsed))"
