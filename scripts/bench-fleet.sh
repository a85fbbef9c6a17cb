#!/usr/bin/env bash
# `rekey run` over many due users on the emulator, at --concurrency 1 and 8: wall time of each run
# (rotations only: seeding is not timed) and the ratio. Every rotation is a real one: create the
# key, verify it twice against STS, rewrite an env file, deactivate the old key, tag it.
#   REKEY_BENCH_USERS=100   users per run
# moto serves requests on a single Python process, so the emulator caps the speedup; AWS's IAM
# throttling (not the emulator's) is what caps it in production.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/rekey-target}"
: "${REKEY_BENCH_USERS:=100}"
export REKEY_BENCH_USERS

echo "load before: $(uptime)" >&2
# Build first, so the compile does not share the cores with the measurement.
cargo test -p rekey --test fleet --no-run
cargo test -p rekey --test fleet bench_fleet_concurrency -- --ignored --nocapture 2>&1 | grep '^BENCH'
echo "load after: $(uptime)" >&2
