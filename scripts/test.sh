#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# tests/report_html.rs renders the incident report in headless Chromium (and fails without it).
if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium for tests/report_html.rs" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  $SUDO apt-get update -qq >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

REKEY_MOTO_PYTHON="$(scripts/install-moto.sh | tail -n 1)"
export REKEY_MOTO_PYTHON
# Incremental artefacts only cost time and disk in one-shot runs.
export CARGO_INCREMENTAL=0

cargo fmt --all --check

# An unused dependency costs compile time in every build. cargo-machete reads the manifests and
# sources only (about 1 s); installing it compiles it once (about 3 CPU-minutes, no prebuilt binary
# here), and later runs find it in ~/.cargo/bin.
if ! cargo machete --version >/dev/null 2>&1; then
  echo "installing cargo-machete for the unused-dependency check" >&2
  cargo install --locked cargo-machete
fi
cargo machete
cargo clippy --workspace --all-targets -- -D warnings
# No separate `cargo build`: dev-dependency features differ, so it would compile the SDK twice.
cargo test --workspace
