# Runs inside the container with the overlay writable:
#   overlayctl build env.img --base docker://mambaorg/micromamba:2 --script build.sh …
# (/bin/sh -e; the working directory is the host's, so environment.yml is found here)
micromamba create -y -p /opt/env -f environment.yml
# the package cache would otherwise stay in the image
micromamba clean -a -y
