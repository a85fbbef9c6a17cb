#!/usr/bin/env bash
# `rekey sweep` over every enabled Region (17) of the emulator: wall time of an empty account and of
# one with instances, security groups, snapshots, secrets, buckets and functions in every Region
# (tests/sweep.rs, bench_sweep_all_regions). Seeding is not timed.
#   REKEY_BENCH_RUNS=5   runs per figure (median, min, max)
# moto serves every Region from one Python process, so this measures rekey plus the emulator;
# against AWS each Region is served (and throttled) on its own.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/rekey-target}"
: "${REKEY_BENCH_RUNS:=5}"
export REKEY_BENCH_RUNS

echo "load before: $(uptime)" >&2
# Build first, so the compile does not share the cores with the measurement.
cargo test -p rekey --test sweep --no-run
cargo test -p rekey --test sweep bench_sweep_all_regions -- --ignored --nocapture 2>&1 | grep '^BENCH'
echo "load after: $(uptime)" >&2
