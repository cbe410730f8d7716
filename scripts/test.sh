#!/usr/bin/env bash
# The project's test command (README.md). Installs the outside MQTT clients the
# end-to-end tests use, then runs every test of the workspace; the end-to-end suite
# (tests/, crate brokk-e2e) runs once per runtime: tokio (default), smol, async-std.
set -euo pipefail
cd "$(dirname "$0")/.."
# The end-to-end tests fail, never skip, when a client is missing; this makes sure
# they are there (a no-op once installed).
scripts/install-clients.sh
cargo test --workspace --all-targets --no-fail-fast
cargo test --workspace --doc
for runtime in smol async-std; do
  echo "==> end-to-end suite on ${runtime}"
  BROKK_RUNTIME="${runtime}" cargo test -p brokk-e2e --no-fail-fast
done
