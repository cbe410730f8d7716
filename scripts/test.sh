#!/usr/bin/env bash
# The project's test command (README.md). Installs the outside MQTT clients the
# end-to-end tests use, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets
cargo test --workspace --doc
