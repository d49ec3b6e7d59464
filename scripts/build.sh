#!/bin/sh
# Install the pipeline on Debian 12 (run as root) and build every image in
# images.toml (or the manifest given as manifest=PATH) into out/*.ext4.
#
# The venv is (re)installed only when it is missing or pyproject.toml (the
# version, the dependencies) changed since the last install: a run with
# nothing to build takes doit's time only, and needs no package index once
# the venv is complete. The install is editable, so a code change needs none.
set -eu
cd "$(dirname "$0")/.."

missing=""
command -v mkfs.ext4 >/dev/null 2>&1 || missing="$missing e2fsprogs"
[ -x .venv/bin/python ] || python3 -c 'import ensurepip' 2>/dev/null || missing="$missing python3-venv"
if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.rootfs-pipeline-installed
want="$(cat pyproject.toml pipeline/__init__.py | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/rootfs ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/pip install -q -e .
    echo "$want" > "$stamp"
fi
exec .venv/bin/rootfs "$@"
