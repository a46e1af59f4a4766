#!/usr/bin/env bash
# Installs the test peers and runs every check and test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
# Under CI a test never skips: a missing peer, loop device or tmpfs fails it. Run with CI=false
# to let such tests skip (each prints a SKIP line, counted at the end).
export CI="${CI:-true}"
bash scripts/install-peers.sh
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
# The library's minimal feature set (no HTTP family, VDDK or io_uring), as an embedder that
# copies NBD exports or files builds it.
cargo clippy -p transfer-core --all-targets --release --no-default-features -- -D warnings
# The API docs build without a warning (broken links, undocumented public items).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# The `ci` profile (Cargo.toml): release optimisation without LTO and with parallel codegen
# units. The tests never time anything, and it builds in about a third of the time.
cargo test --workspace --profile ci --no-fail-fast 2>&1 | tee "$log" || status=$?
# cargo prints one summary per test binary (the last one is often an empty doc-test run); add
# them up so the run closes on one line that counts everything. A skipped test returned early
# and counts as passed to cargo; test-kit's skip helper printed "SKIP <test>:" for it, so it
# moves from passed to skipped here.
skipped=$(grep -o 'SKIP [^ ]*:' "$log" | wc -l || true)
awk -v skipped="$skipped" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "ferry: %d passed, %d failed, %d skipped\n", p - skipped, f, skipped }' "$log"
if [ "$skipped" -gt 0 ] && [ "$CI" = true ]; then
    echo "ferry: $skipped test(s) skipped under CI=true" >&2
    status=1
fi
# Every fuzz target (fuzz/, outside the workspace; nightly, AddressSanitizer) builds and runs
# for 20 s from its seeds (17 targets: about 6 minutes); a crash fails the run and leaves its
# input in fuzz/artifacts/.
bash fuzz/run.sh 20 || status=1
exit "$status"
