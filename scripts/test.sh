#!/usr/bin/env bash
# Installs the test peers and runs every check and test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --release --no-fail-fast 2>&1 | tee "$log" || status=$?
# cargo prints one summary per test binary (the last one is often an empty doc-test run); add
# them up so the run closes on one line that counts everything.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "ferry: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
