#!/usr/bin/env bash
# The trail scan benchmark (trail/benches/scan.rs): generates a realistic trail, checks the matches
# against what it planted, and prints a table of MB/s and peak memory, next to `zcat | jq`.
#   REKEY_BENCH_MB=1000   uncompressed MB of the large trail (the small one is a quarter)
#   REKEY_BENCH_RUNS=3    runs per figure (median)
#   REKEY_BENCH_JQ=0      skip `zcat | jq`
#   REKEY_BENCH_DIR=path  generate there and keep it (default: a temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/rekey-target}"
export CARGO_INCREMENTAL=0
: "${REKEY_BENCH_MB:=1000}" "${REKEY_BENCH_RUNS:=3}"
export REKEY_BENCH_MB REKEY_BENCH_RUNS

echo "load before: $(uptime)" >&2
# Build first, so the compile does not share the cores with the measurement.
cargo bench -p rekey-trail --bench scan --no-run
cargo bench -p rekey-trail --bench scan
echo "load after: $(uptime)" >&2
