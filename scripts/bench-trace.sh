#!/usr/bin/env bash
# The trail scan benchmark (trail/benches/scan.rs), for one generated trail whose key chain (five
# hops: a second key, a role session, role chaining, a key for another user, a federation token)
# is spread over the whole window and every Region, each hop delivered late. It prints, side by
# side: single key and --follow MB/s, the re-reads (at most the files that hold a minted key), the
# decompression floor (zlib-rs and libdeflate, 1 and all threads), the scanner's fraction of that
# floor, `zcat | jq` and how many times slower it is, and the peak memory of a scan of hostile
# input (gzip bombs, files at the size limit). It fails if a planted match is missing or extra, if
# a file without a minted key is read twice, or if the hostile scan reaches 200 MB.
#   REKEY_BENCH_MB=1000   uncompressed MB of the trail
#   REKEY_BENCH_RUNS=3    rounds, each measuring every figure once; the best round of each is shown
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
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo bench -p rekey-trail --bench scan | tee "$out"
echo "load after: $(uptime)" >&2
# The bench panics on a wrong match; this also catches a run that stopped without a summary.
grep -q 'matches_checked=ok' "$out" || { echo "bench-trace: no checked summary line" >&2; exit 1; }
