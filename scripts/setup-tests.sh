#!/usr/bin/env bash
# Installs what the client-compatibility tests need: Debian's kcat and a
# Python virtualenv (.venv at the repo root) with the packages from
# tests/python/requirements.txt. Idempotent; quiet when nothing changes.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        echo "setup-tests: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- kcat -------------------------------------------------------------------
if ! command -v kcat >/dev/null 2>&1; then
    echo "setup-tests: installing kcat"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_install kcat
fi

# --- python venv ------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
    echo "setup-tests: creating .venv"
    if ! python3 -m venv .venv >/dev/null 2>&1; then
        # Debian ships ensurepip separately.
        rm -rf .venv
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        apt_install python3-venv
        python3 -m venv .venv
    fi
fi

req=tests/python/requirements.txt
stamp=.venv/.requirements.sha256
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup-tests: installing python packages"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
    echo "$want" >"$stamp"
fi
