#!/bin/sh
# The environment build, run by the overlay/setup wrapper (overlayctl setup --build) inside the
# base container with the overlay mounted writable; /opt/env exists in the overlay (create_dirs).
# A real one would be e.g. `micromamba create -y -p /opt/env -f environment.yml`; this one is
# plain sh, so the tests run it offline on a busybox base.
set -eu
mkdir -p /opt/env/bin
cat > /opt/env/bin/hello <<'EOS'
#!/bin/sh
echo "hello $1 from the overlay"
EOS
chmod 755 /opt/env/bin/hello
