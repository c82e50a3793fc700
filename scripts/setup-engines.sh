#!/usr/bin/env bash
# scripts/setup-engines.sh -- the workflow engines test/workflows runs for real: Snakemake and the
# CWL reference runner (cwltool), from Debian's packages (bookworm: Snakemake 7.21, cwltool 3.1).
# Idempotent. Fast path (everything present): one dpkg-query and `command -v`, no apt-get.
#
# Install size (measured on bookworm, 2026-11-29): with --no-install-recommends 112 packages,
# ~36 MB to download, ~735 MB on disk, ~75 s; with recommends it would be 295 packages.
# Both engines start containers with the `singularity` command: Apptainer's Debian package
# provides it (an alternatives link); an Apptainer without it gets a link made here.
set -euo pipefail

T0=${EPOCHREALTIME/[.,]/}
log() { printf '[setup-engines] %s\n' "$*"; }
elapsed() { printf '%d.%03ds' $(((${EPOCHREALTIME/[.,]/} - T0) / 1000000)) $((((${EPOCHREALTIME/[.,]/} - T0) / 1000) % 1000)); }

# Debian package : the command it provides
ENGINES=(
  snakemake:snakemake # Snakemake: wrappers in packages/snakemake, `container:` rules
  cwltool:cwltool     # the CWL reference runner: tools in packages/cwl, --singularity
)

missing=()
for e in "${ENGINES[@]}"; do
  command -v "${e#*:}" >/dev/null 2>&1 || missing+=("${e%%:*}")
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "missing: ${missing[*]}; install them as root (sudo bash $0) and rerun"
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if [ "${SETUP_APT_UPDATED:-0}" != 1 ]; then
    log "apt-get update"
    apt-get -q -o DPkg::Lock::Timeout=300 update >/dev/null
  fi
  log "installing: ${missing[*]} (--no-install-recommends)"
  apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null
  log "installed: ${missing[*]} ($(elapsed))"
fi

if ! command -v singularity >/dev/null 2>&1; then
  app=$(command -v apptainer || true)
  [ -n "$app" ] || { log "neither singularity nor apptainer is on PATH: run scripts/setup-host.sh first"; exit 1; }
  [ "$(id -u)" = 0 ] || { log "no singularity command; as root this script links it to $app"; exit 1; }
  ln -sf "$app" /usr/local/bin/singularity
  log "linked /usr/local/bin/singularity -> $app"
fi

# versions only after an install: asking the engines costs a second of Python start-up
[ "${#missing[@]}" -eq 0 ] || log "snakemake $(snakemake --version), $(cwltool --version 2>/dev/null | awk '{print "cwltool", $NF}')"
log "ok: snakemake, cwltool and singularity present ($(elapsed))"
