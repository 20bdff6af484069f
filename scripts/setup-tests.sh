#!/usr/bin/env bash
# Installs what the build and the tests need: Debian's kcat, psql and
# Chromium, Node.js and npm (which build the web console), and a Python
# virtualenv (.venv at the repo root) with the packages from
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

# Run quietly; show the output only if the command fails.
quiet() {
    local log
    log="$(mktemp)"
    if ! "$@" >"$log" 2>&1; then
        echo "setup-tests: command failed: $*" >&2
        tail -n 50 "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

apt_update() {
    quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
}

apt_install() {
    quiet as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$@"
}

# --- kcat -------------------------------------------------------------------
if ! command -v kcat >/dev/null 2>&1; then
    echo "setup-tests: installing kcat"
    apt_update
    apt_install kcat
fi

# --- psql --------------------------------------------------------------------
if ! command -v psql >/dev/null 2>&1; then
    echo "setup-tests: installing psql"
    apt_update
    apt_install postgresql-client
fi

# --- a PostgreSQL server, which the postgres sink's tests start and write to --
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo "setup-tests: installing the PostgreSQL server"
    apt_update
    apt_install postgresql
fi

# --- mosquitto: MQTT clients for the MQTT front's tests, and the broker as
# the MQTT benchmark's baseline and an existing broker for MQTT sources ---------
if ! command -v mosquitto_pub >/dev/null 2>&1 || [ ! -x /usr/sbin/mosquitto ]; then
    echo "setup-tests: installing mosquitto and mosquitto-clients"
    apt_update
    apt_install mosquitto mosquitto-clients
fi

# --- Chromium, for the console's browser tests ----------------------------------
# Debian's build, driven by Playwright; a test tool's own browser download is
# neither needed nor reachable.
if ! command -v chromium >/dev/null 2>&1; then
    echo "setup-tests: installing chromium"
    apt_update
    apt_install chromium
fi

# --- Node.js and npm, which build the console (crates/fluxo-console/web) -----
if ! command -v npm >/dev/null 2>&1; then
    echo "setup-tests: installing nodejs and npm"
    apt_update
    apt_install nodejs npm
fi

# --- python venv ------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
    echo "setup-tests: creating .venv"
    if ! python3 -m venv .venv >/dev/null 2>&1; then
        # Debian ships ensurepip separately.
        rm -rf .venv
        apt_update
        apt_install python3-venv
        python3 -m venv .venv
    fi
fi

req=tests/python/requirements.txt
stamp=.venv/.requirements.sha256
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] ||
    ! .venv/bin/python -c "import confluent_kafka, kafka, lz4, snappy, zstandard, pytest, pytest_timeout, playwright, prometheus_client, paho.mqtt" 2>/dev/null; then
    echo "setup-tests: installing python packages"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
    quiet .venv/bin/python -m pip install --upgrade pip
    quiet .venv/bin/python -m pip install -r "$req"
    echo "$want" >"$stamp"
fi
