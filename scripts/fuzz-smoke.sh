#!/usr/bin/env bash
# A short fuzz run of every cargo-fuzz target in fuzz/ (default 30 s each), for CI.
# Needs nightly Rust; installs cargo-fuzz if it is missing. Without nightly it says
# so and exits 0: the stable replay tests (cargo test) still run the saved corpus and
# every crash artifact.
#
#   scripts/fuzz-smoke.sh            # every target, 30 s each
#   FUZZ_SECONDS=120 scripts/fuzz-smoke.sh decode roundtrip
#
# New inputs go to a scratch corpus, so fuzz/corpus/ keeps only its seeds; a crash
# is written to fuzz/artifacts/<target>/ and fails the script: fix it and keep the
# artifact, which `cargo test` then replays as a regression.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-30}"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz-smoke: no nightly toolchain; skipping (install: rustup toolchain install nightly)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

for target in "${targets[@]}"; do
  echo "==> fuzz ${target} for ${seconds}s"
  mkdir -p "corpus/${target}" "${scratch}/${target}"
  log="${scratch}/${target}.log"
  # The first corpus directory receives new inputs: the scratch one.
  if ! cargo +nightly fuzz run "${target}" "${scratch}/${target}" "corpus/${target}" -- \
      -max_total_time="${seconds}" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 80 "$log" >&2
    echo "fuzz-smoke: ${target} failed (log above): a build error, or a finding saved in fuzz/artifacts/${target}/" >&2
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units)' "$log" || true
done
echo "fuzz-smoke: ${#targets[@]} target(s) ran ${seconds}s each without a finding"
