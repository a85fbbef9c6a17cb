#!/usr/bin/env bash
# Rotates a live app's key under load against the emulator and reports the downtime.
# Extra arguments go to rekey-demo (e.g. --keep).
set -euo pipefail
cd "$(dirname "$0")/.."

REKEY_MOTO_PYTHON="$(scripts/install-moto.sh | tail -n 1)"
export REKEY_MOTO_PYTHON

cargo build --workspace --bins
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
exec "$TARGET_DIR/debug/rekey-demo" --rekey "$TARGET_DIR/debug/rekey" "$@"
