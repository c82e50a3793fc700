#!/bin/sh
# The environment build, run by OVERLAY_SETUP (overlayctl build --script env.sh) inside the base
# container docker://mambaorg/micromamba:2 with the overlay mounted writable. /opt/envs exists in
# the overlay, owned by the user who runs the task (ext.args: --create-dir /opt/envs), so no root
# and no --fakeroot are needed. Not run here: conda channels are unreachable from these machines.
set -eu
# the package cache stays outside the overlay (host /tmp is bound into the container)
export MAMBA_ROOT_PREFIX="/tmp/mamba-root-$(id -u)"
micromamba create -y -p /opt/envs/main -c conda-forge python=3.12 numpy
