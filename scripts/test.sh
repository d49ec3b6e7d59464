#!/bin/sh
# Install what the test suite needs on Debian 12 (run as root), then run it.
# Real parts only: Debian's docker-registry, e2fsprogs, skopeo and umoci for
# the peer comparison, qemu and a Debian kernel for the boot test.
set -eu
cd "$(dirname "$0")/.."

missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need docker-registry docker-registry
need mkfs.ext4 e2fsprogs
need debugfs e2fsprogs
need skopeo skopeo
need umoci umoci
need qemu-system-x86_64 qemu-system-x86
need busybox busybox-static
need setpriv util-linux
ls /boot/vmlinuz-* >/dev/null 2>&1 || missing="$missing linux-image-amd64"
python3 -c 'import ensurepip' 2>/dev/null || missing="$missing python3-venv"
if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]'
exec .venv/bin/python -m pytest "$@"
