#!/usr/bin/env bash
# Builds every fuzz target once and runs each for SECONDS (default 30) from its committed seeds
# (fuzz/seeds/TARGET) plus the corpus it grew before (fuzz/corpus/TARGET, git-ignored). Exits
# non-zero when any target crashes, hangs or leaks; the input that did it is kept in
# fuzz/artifacts/TARGET/. One line per target.
#
# Needs only a nightly toolchain (no cargo-fuzz): the targets are built with the flags cargo-fuzz
# uses (SanitizerCoverage for libFuzzer, `--cfg fuzzing`, AddressSanitizer). To reproduce a crash:
#   fuzz/target/x86_64-unknown-linux-gnu/release/TARGET fuzz/artifacts/TARGET/crash-...
# Environment: FUZZ_TARGETS="a b" runs only those; FUZZ_JOBS=N runs N targets at once (default
# 1); FUZZ_SANITIZER=none builds without AddressSanitizer; FUZZ_TARGET_DIR moves fuzz/target.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-30}
jobs=${FUZZ_JOBS:-1}
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
# Instrumented builds stay apart from the workspace's (FUZZ_TARGET_DIR to put them elsewhere).
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target}

flags="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
flags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
flags+=" -Cllvm-args=-sanitizer-coverage-stack-depth"
if [[ ${FUZZ_SANITIZER:-address} == address ]]; then
    flags+=" -Zsanitizer=address"
fi
# `--target` keeps these flags off build scripts and proc macros, as cargo-fuzz does.
RUSTFLAGS="$flags" cargo +nightly build --release --target "$triple" --bins --quiet

targets=${FUZZ_TARGETS:-$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^ferry-fuzz$')}
bin=$CARGO_TARGET_DIR/$triple/release

run_one() {
    local t=$1 log status start
    mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
    log=$(mktemp)
    start=$(date +%s)
    status=0
    # -timeout: one input taking longer is a hang; -rss_limit_mb: memory is bounded.
    "$bin/$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" "corpus/$t" "seeds/$t" >"$log" 2>&1 || status=$?
    local runs cov
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    if [[ $status -eq 0 ]]; then
        printf '%-20s ok     %6ss %10s runs  cov %s\n' "$t" "$(($(date +%s) - start))" "${runs:-?}" "${cov:-?}"
    else
        printf '%-20s FAILED %6ss (exit %s), input in fuzz/artifacts/%s/:\n' "$t" "$(($(date +%s) - start))" "$status" "$t"
        # The panic and its message, or the sanitizer's verdict, and where the input is.
        grep -E -A1 'panicked at' "$log" | head -n 2 | sed 's/^/    /'
        grep -E '^==[0-9]+== ?ERROR: (libFuzzer|AddressSanitizer)|^SUMMARY|^Test unit written' "$log" | head -n 3 | sed 's/^/    /'
    fi
    rm -f "$log"
    return "$status"
}

failed=0
if [[ $jobs -le 1 ]]; then
    for t in $targets; do
        run_one "$t" || failed=1
    done
else
    export -f run_one
    export bin seconds
    printf '%s\n' $targets | xargs -P "$jobs" -I{} bash -c 'run_one {}' || failed=1
fi
exit "$failed"
