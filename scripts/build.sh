#!/bin/sh
# Install the pipeline on Debian 12 (run as root) and build every image in
# images.toml (or the manifest given as manifest=PATH) into out/*.ext4.
set -eu
cd "$(dirname "$0")/.."

missing=""
command -v mkfs.ext4 >/dev/null 2>&1 || missing="$missing e2fsprogs"
python3 -c 'import ensurepip' 2>/dev/null || missing="$missing python3-venv"
if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q .
exec .venv/bin/doit "$@"
