#!/usr/bin/env bash
# The contract of ARCHITECTURE.md: mqtt-proto and broker-state never depend on an
# async runtime, TLS or sockets, and never read a clock, spawn a thread or touch a
# file. Checked on their source (comments excluded) and on their dependency trees.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
pattern='Instant::now|SystemTime::now|std::thread|std::net|std::fs|std::process|tokio|async_std|smol::|rustls|rand::thread_rng|std::env'
for crate in mqtt-proto broker-state; do
  # Strip // comments (doc comments included) before matching.
  hits=$(grep -rnE "$pattern" "$crate/src" --include=*.rs | grep -vE '^[^:]+:[0-9]+:\s*//' || true)
  if [ -n "$hits" ]; then
    echo "$crate/src must stay sans-IO; found:" >&2
    echo "$hits" >&2
    fail=1
  fi
  deps=$(cargo tree -p "$crate" -e normal --prefix none 2>/dev/null | grep -E '^(tokio|smol|async-std|async-io|rustls|mio|socket2) ' || true)
  if [ -n "$deps" ]; then
    echo "$crate depends on a runtime or TLS crate:" >&2
    echo "$deps" >&2
    fail=1
  fi
done
[ "$fail" -eq 0 ] && echo "sans-IO check passed: mqtt-proto and broker-state read no clock and do no I/O"
exit "$fail"
