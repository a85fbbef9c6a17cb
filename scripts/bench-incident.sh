#!/usr/bin/env bash
# `rekey incident` time to containment: seconds from the start until the fence is on the user, with
# 30,000 and 3,000,000 events of the leaked key's event history served at AWS's real rate (50 events a
# page, 2 requests/s per Region: launcher patch 11). The fence is learnt from a bounded sample, so both
# figures should be the same; reading the whole history would take 5 minutes and 8 hours.
# (tests/incident_busy_key.rs, bench_time_to_fence.)
#   REKEY_BENCH_RUNS=3   runs per figure (median, min, max)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/rekey-target}"
: "${REKEY_BENCH_RUNS:=3}"
export REKEY_BENCH_RUNS

echo "load before: $(uptime)" >&2
# Build first, so the compile does not share the cores with the measurement.
cargo test -p rekey --test incident_busy_key --no-run
cargo test -p rekey --test incident_busy_key bench_time_to_fence -- --ignored --nocapture 2>&1 | grep '^BENCH'
echo "load after: $(uptime)" >&2
