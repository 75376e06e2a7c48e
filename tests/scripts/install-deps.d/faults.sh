#!/usr/bin/env bash
# The power-loss fault test (F8) mounts a FUSE layer written with fusepy; the network
# outage test (F2) needs iproute2. Idempotent.
set -euo pipefail
missing=()
/usr/bin/python3 -c "import fusepy" >/dev/null 2>&1 || missing+=(python3-fusepy libfuse2)
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
