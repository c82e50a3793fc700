#!/usr/bin/env bash
# scripts/setup-apptainer.sh -- make an Apptainer runtime available on this host and apply the
# few host fixes overlay-action relies on. Idempotent; when nothing is to be done it only looks
# (command -v, stat, grep) and returns in a few milliseconds. Called by scripts/setup-host.sh.
#
# Which Apptainer, in order of preference:
#   1. one already on PATH: `apptainer`, or `singularity` (SingularityCE / old installs) -- kept;
#   2. the distro package, when the configured apt repositories carry one
#      (`apt-cache madison apptainer` non-empty: Ubuntu with the Apptainer PPA, newer Debian, ...);
#   3. Debian 12 (bookworm) on amd64, which has no apptainer package: sid's package, repacked.
#
# Why a repack for bookworm: sid's apptainer is built against glibc >= 2.38 (bookworm ships 2.36),
# and replacing the system libc, or pointing /etc/apt at sid, is not something a CI helper may do.
# So, without touching the system's apt configuration:
#   a. sid's apptainer, libc6, libseccomp2 and libsqlite3-0 are *downloaded* (never installed)
#      through a private apt configuration: own sources.list, own lists and archives directories;
#   b. sid's shared libraries are copied into the package under $PRIVLIB, and only the two ELF
#      programs of the package (/usr/bin/apptainer and the setuid-capable `starter`) get their ELF
#      interpreter and DT_RPATH pointed there with patchelf. Every host tool Apptainer runs
#      (mksquashfs, mkfs.ext3, fuse2fs, squashfuse_ll, fuse-overlayfs, newuidmap) keeps the host
#      libc;
#   c. offsetpreload.so is LD_PRELOADed into the *host* fuse2fs (unprivileged use of an ext3
#      overlay embedded in a SIF), so it must not need the newer glibc: it is rebuilt from the
#      Debian source package with the host gcc when gcc is available;
#   d. the control file gets a "+sidglibc1" version suffix, Depends without the sid-only version
#      bounds, plus the FUSE helpers; the .deb is installed with apt-get so dpkg owns every file
#      and host dependencies come from the host's own mirror.
#
# Host fixes (checked every run, applied only when needed, root only):
#   - /dev/fuse mode 0666: fuse2fs, squashfuse_ll and fuse-overlayfs run unprivileged; machines
#     without udev create the node 0600 (this does not survive a reboot, hence the per-run check);
#   - a /etc/subuid + /etc/subgid range for root, so `apptainer build --fakeroot` works as root;
#   - when root's capability bounding set is not complete (on some VMs CAP_SYS_RESOURCE is
#     missing), Apptainer's default "root default capabilities = full" aborts every root container
#     with "Requesting capability set ...". Then: "root default capabilities = file" and a
#     capability.json entry granting root exactly the capabilities of its bounding set.
#
# Not root: succeeds only when a runtime is present and no fix is needed; otherwise it lists what
# is missing and exits 1.
#
# Environment:
#   APPTAINER_SETUP_WORK=DIR    work dir for the bookworm repack (default /var/cache/overlay-action/apptainer)
#   APPTAINER_SETUP_MIRROR=URL  Debian mirror to fetch sid from (default: the one /etc/apt uses)
#   APPTAINER_SETUP_FORCE=1     (re)install even if a runtime is on PATH
#   APPTAINER_SETUP_BUILD_ONLY=1  bookworm route: build the repacked .deb, print its path, install nothing
#   SETUP_APT_UPDATED=1         set by setup-host.sh once it has run `apt-get update` in this session
set -euo pipefail

log() { printf '[setup-apptainer] %s\n' "$*"; }
die() {
  printf '[setup-apptainer] error: %s\n' "$*" >&2
  exit 1
}

IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1
FORCE=${APPTAINER_SETUP_FORCE:-0}
BUILD_ONLY=${APPTAINER_SETUP_BUILD_ONLY:-0}
WORK=${APPTAINER_SETUP_WORK:-/var/cache/overlay-action/apptainer}
TRIPLET=x86_64-linux-gnu
PRIVLIB=/usr/lib/$TRIPLET/apptainer/glibc
SUFFIX=+sidglibc1
APT_OPTS=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
export DEBIAN_FRONTEND=noninteractive

runtime_bin() { command -v apptainer 2>/dev/null || command -v singularity 2>/dev/null || true; }

apt_update_once() {
  if [ "${SETUP_APT_UPDATED:-0}" != 1 ]; then
    log "apt-get update"
    apt-get -q -o DPkg::Lock::Timeout=300 update >/dev/null
    export SETUP_APT_UPDATED=1
  fi
}

# The Debian mirror this machine's apt already uses, from deb822 or one-line sources.
system_mirror() {
  {
    grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' || true
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | sed 's/\[[^]]*\] //' | awk '{print $2}' || true
  } | grep -v -- '-security' | grep -E '/debian/?$' | head -1 || true
}

# ---------------------------------------------------------------------------------------------
# Route 3: sid's apptainer repacked with a private glibc (Debian amd64 only). Sets REPACKED_DEB.
REPACKED_DEB=""
build_repacked_deb() {
  command -v patchelf >/dev/null 2>&1 || apt-get install "${APT_OPTS[@]}" patchelf >/dev/null
  local mirror=${APPTAINER_SETUP_MIRROR:-$(system_mirror)}
  [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt; set APPTAINER_SETUP_MIRROR"
  mkdir -p "$WORK/lists/partial" "$WORK/archives/partial" "$WORK/debs"
  cat >"$WORK/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main
EOF
  # A private apt: nothing in /etc/apt or /var/lib/apt/lists is read or written for sid.
  local -a papt=(-o Dir::Etc::sourcelist="$WORK/sources.list" -o Dir::Etc::sourceparts=/dev/null
    -o Dir::State::Lists="$WORK/lists" -o Dir::Cache::Archives="$WORK/archives"
    -o Acquire::Check-Valid-Until=false -o APT::Sandbox::User=root)
  log "private apt-get update for sid ($mirror)"
  apt-get "${papt[@]}" -q update >/dev/null
  log "download from sid: apptainer libc6 libseccomp2 libsqlite3-0"
  rm -f "$WORK"/debs/*.deb
  (cd "$WORK/debs" && apt-get "${papt[@]}" -q download apptainer/sid libc6/sid libseccomp2/sid libsqlite3-0/sid >/dev/null)
  local app_deb
  app_deb=$(ls "$WORK"/debs/apptainer_*_amd64.deb)

  local pkg=$WORK/pkg libs=$WORK/libs
  rm -rf "$pkg" "$libs" "$WORK/src"
  mkdir -p "$libs"
  dpkg-deb -R "$app_deb" "$pkg"
  local d
  for d in libc6 libseccomp2 libsqlite3-0; do dpkg-deb -x "$WORK"/debs/${d}_*_amd64.deb "$libs"; done
  mkdir -p "$pkg$PRIVLIB"
  cp -a "$libs/usr/lib/$TRIPLET"/*.so* "$pkg$PRIVLIB/"
  local f
  for f in usr/bin/apptainer "usr/lib/$TRIPLET/apptainer/bin/starter"; do
    patchelf --set-interpreter "$PRIVLIB/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$PRIVLIB" "$pkg/$f"
  done
  log "repacked $(basename "$app_deb"): private glibc $(dpkg-deb -f "$WORK"/debs/libc6_*_amd64.deb Version) in $PRIVLIB"

  if command -v gcc >/dev/null 2>&1 &&
    (mkdir -p "$WORK/src" && cd "$WORK/src" &&
      apt-get "${papt[@]}" -q source --download-only apptainer/sid >/dev/null 2>&1 &&
      tar -xf apptainer_*.orig.tar.* --wildcards --strip-components=1 '*/tools/offsetpreload.c' &&
      gcc -O2 -fPIC -shared -o offsetpreload.so tools/offsetpreload.c -ldl &&
      install -m 0644 offsetpreload.so "$pkg/usr/lib/$TRIPLET/apptainer/lib/offsetpreload.so"); then
    log "offsetpreload.so rebuilt against the host glibc"
  else
    log "warning: offsetpreload.so not rebuilt (no gcc or no source); unprivileged use of SIF-embedded overlays will fail"
  fi

  local ctl=$pkg/DEBIAN/control ver
  ver=$(sed -n 's/^Version: //p' "$ctl")
  sed -i -e "s/^Version: .*/Version: ${ver}${SUFFIX}/" \
    -e '/^Depends:/s/libc6 ([^)]*)/libc6/' \
    -e '/^Depends:/s/, *libseccomp2 ([^)]*)//; /^Depends:/s/, *libsqlite3-0 ([^)]*)//' \
    -e '/^Depends:/s/$/, e2fsprogs, fuse2fs, squashfuse, fuse-overlayfs/' "$ctl"
  sed -i "s/^Installed-Size: .*/Installed-Size: $(du -sk --apparent-size --exclude=DEBIAN "$pkg" | cut -f1)/" "$ctl"
  (cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | grep -v '^etc/' | LC_ALL=C sort |
    xargs -d '\n' md5sum >DEBIAN/md5sums)
  local out=$WORK/apptainer_${ver}${SUFFIX}_amd64.deb
  dpkg-deb -Zgzip -z1 --root-owner-group -b "$pkg" "$out" >/dev/null
  rm -rf "$pkg" "$libs" "$WORK/src" "$WORK/archives"
  REPACKED_DEB=$out
}

install_runtime() {
  [ "$IS_ROOT" = 1 ] || die "no apptainer or singularity on PATH; run as root to install it (sudo bash $0)"
  apt_update_once
  if [ -n "$(apt-cache madison apptainer 2>/dev/null)" ] && [ "$BUILD_ONLY" != 1 ]; then
    log "installing the distro's apptainer package"
    apt-get install "${APT_OPTS[@]}" apptainer >/dev/null
    return
  fi
  # shellcheck source=/dev/null
  . /etc/os-release
  if [ "${ID:-}" != debian ] || [ "$(dpkg --print-architecture)" != amd64 ]; then
    die "no apptainer package in the apt repositories of ${PRETTY_NAME:-this system}; install Apptainer (https://apptainer.org/docs/admin/main/installation.html) and rerun"
  fi
  log "installing host dependencies"
  apt-get install "${APT_OPTS[@]}" ca-certificates containernetworking-plugins squashfs-tools uidmap \
    e2fsprogs fuse2fs squashfuse fuse-overlayfs fuse3 libcap2-bin patchelf >/dev/null
  build_repacked_deb
  local deb=$REPACKED_DEB
  if [ "$BUILD_ONLY" = 1 ]; then
    log "built $deb (not installed)"
    exit 0
  fi
  log "installing $(basename "$deb")"
  if dpkg-query -W -f '${db:Status-Status}' apptainer 2>/dev/null | grep -qx installed; then
    dpkg -i "$deb" >/dev/null # forced reinstall over a present copy; its deps are already there
  else
    apt-get install "${APT_OPTS[@]}" "$deb" >/dev/null
  fi
}

# ---------------------------------------------------------------------------------------------
# Host fixes: each check prints nothing when all is well; NEEDS collects what is wrong.
NEEDS=()

fix_fuse() {
  if [ ! -c /dev/fuse ]; then
    log "warning: no /dev/fuse: unprivileged overlays (fuse2fs, squashfuse, fuse-overlayfs) will not work"
    return
  fi
  [ "$(stat -c %a /dev/fuse)" = 666 ] && return
  if [ "$IS_ROOT" = 1 ]; then
    chmod 0666 /dev/fuse
    log "fixed: /dev/fuse mode 0666"
  elif [ ! -r /dev/fuse ] || [ ! -w /dev/fuse ]; then
    NEEDS+=("/dev/fuse is not usable by $(id -un) (root: chmod 0666 /dev/fuse)")
  fi
}

fix_root_subids() {
  [ "$IS_ROOT" = 1 ] || return 0
  local f
  for f in /etc/subuid /etc/subgid; do
    if ! grep -qs '^root:' "$f"; then
      echo 'root:1000000000:65536' >>"$f"
      log "fixed: added a subordinate id range for root to $f"
    fi
  done
}

# Root's capability bounding set vs. every capability the kernel knows.
fix_root_capabilities() {
  [ "$IS_ROOT" = 1 ] || return 0
  local bnd last full
  bnd=$(awk '/^CapBnd/ {print $2}' /proc/self/status)
  last=$(cat /proc/sys/kernel/cap_last_cap)
  full=$(printf '%016x' $(((1 << (last + 1)) - 1)))
  [ "$bnd" = "$full" ] && return 0

  local name conf capjson d c
  name=$(basename "$BIN")
  conf=""
  for d in /etc /usr/local/etc; do
    [ -f "$d/$name/$name.conf" ] && conf=$d/$name/$name.conf && break
  done
  if [ -z "$conf" ]; then
    conf="$("$BIN" buildcfg SYSCONFDIR 2>/dev/null || true)/$name/$name.conf"
    [ -f "$conf" ] || {
      log "warning: bounding set $bnd is incomplete and $name.conf was not found; root containers may fail"
      return 0
    }
  fi
  capjson=$(dirname "$conf")/capability.json

  local caps missing=""
  caps=$(capsh --decode="$bnd" | cut -d= -f2 | tr 'a-z,' 'A-Z ')
  # the "root": [ ... ] block of capability.json
  local granted
  granted=$(sed -n '/"root"[[:space:]]*:/,/\]/p' "$capjson" 2>/dev/null || true)
  for c in $caps; do
    grep -q "\"$c\"" <<<"$granted" || missing+=" $c"
  done
  if [ -z "$missing" ] && grep -q '^root default capabilities = file$' "$conf"; then
    return 0
  fi
  if [ -n "$missing" ]; then
    # (it warns once per capability that root may escalate: expected, root is root)
    local out
    out=$("$BIN" capability add --user root "$(tr ' ' ',' <<<"$caps")" 2>&1) || die "capability add failed: $out"
  fi
  sed -i 's/^root default capabilities = .*/root default capabilities = file/' "$conf"
  log "fixed: CapBnd $bnd is not $full; $conf uses 'root default capabilities = file', root granted its bounding set"
}

# ---------------------------------------------------------------------------------------------
BIN=$(runtime_bin)
if [ -z "$BIN" ] || [ "$FORCE" = 1 ] || [ "$BUILD_ONLY" = 1 ]; then
  install_runtime
  hash -r
  BIN=$(runtime_bin)
  [ -n "$BIN" ] || die "installation finished but neither apptainer nor singularity is on PATH"
  log "installed: $("$BIN" --version)"
fi

fix_fuse
fix_root_subids
fix_root_capabilities

if [ "${#NEEDS[@]}" -gt 0 ]; then
  for n in "${NEEDS[@]}"; do printf '[setup-apptainer] missing: %s\n' "$n" >&2; done
  exit 1
fi
