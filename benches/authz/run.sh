#!/usr/bin/env bash
# What authorization costs on the hot path: the same brokk binary with
# benches/authz/open.toml (everything allowed) and benches/authz/bindings.toml
# (every PUBLISH decided by permission bindings), alternating, ROUNDS times, on
# brokk-load's fan-in and pairs scenarios. Broker pinned to CPU 0, generator to
# CPU 1. Prints one line per run: scenario, config, messages received per second.
#
# Usage: benches/authz/run.sh [ROUNDS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${1:-3}"
SCENARIOS="${SCENARIOS:-fanin-q1-v5 pairs-q1-v5 fanin-q0-v5 pairs-q0-v5}"
cargo build --release -q -p adapter-tokio --bin brokk
cargo build --release -q -p brokk-benches --bin brokk-load
BROKK=target/release/brokk
LOAD=target/release/brokk-load
log="$(mktemp)"
trap 'rm -f "$log"; [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true' EXIT
for round in $(seq "$ROUNDS"); do
  for scenario in $SCENARIOS; do
    for config in open bindings; do
      taskset -c 0 "$BROKK" --config "benches/authz/$config.toml" >"$log" 2>&1 &
      pid=$!
      for _ in $(seq 100); do grep -q "brokk listening" "$log" && break; sleep 0.05; done
      line="$(taskset -c 1 "$LOAD" run "$scenario" --port 1999 --broker-pid "$pid" 2>&1 | tail -1)"
      kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
      rx="$(printf '%s\n' "$line" | tr ' ' '\n' | sed -n 's/^rx_per_s=//p')"
      ok="$(printf '%s\n' "$line" | tr ' ' '\n' | sed -n 's/^ok=//p')"
      printf '%s\t%s\t%s\t%s\tok=%s\n' "$round" "$scenario" "$config" "${rx:-?}" "${ok:-?}"
    done
  done
done
