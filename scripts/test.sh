#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

REKEY_MOTO_PYTHON="$(scripts/install-moto.sh | tail -n 1)"
export REKEY_MOTO_PYTHON
# Incremental artefacts only cost time and disk in one-shot runs.
export CARGO_INCREMENTAL=0

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# No separate `cargo build`: dev-dependency features differ, so it would compile the SDK twice.
cargo test --workspace
