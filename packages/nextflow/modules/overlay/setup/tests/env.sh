#!/bin/sh
# The build script the nf-tests use: plain sh, so any base works (docker://busybox included).
set -eu
mkdir -p /opt/env/bin
printf '#!/bin/sh\necho "hello from the overlay"\n' > /opt/env/bin/hello
chmod 755 /opt/env/bin/hello
