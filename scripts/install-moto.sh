#!/usr/bin/env bash
# Installs the AWS emulator the tests run against: moto[server], pinned, in its own venv.
# Idempotent: does nothing when the venv already holds this version.
# Prints the venv's python on the last line of stdout.
set -euo pipefail

MOTO_VERSION="5.2.5"
VENV="${REKEY_MOTO_VENV:-$HOME/.cache/rekey-moto-venv}"
PY="$VENV/bin/python"

installed() {
    [ -x "$PY" ] && "$PY" - "$MOTO_VERSION" <<'PYEOF' >/dev/null 2>&1
import sys
import moto
import moto.server  # the [server] extra (flask, werkzeug) must be there too
sys.exit(0 if moto.__version__ == sys.argv[1] else 1)
PYEOF
}

if installed; then
    echo "moto $MOTO_VERSION already installed in $VENV" >&2
    echo "$PY"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install-moto: $PYTHON not found; moto needs Python 3.9+" >&2
    exit 1
fi

echo "installing moto[server]==$MOTO_VERSION into $VENV" >&2
mkdir -p "$(dirname "$VENV")"
[ -x "$PY" ] || "$PYTHON" -m venv "$VENV"
# uv resolves and installs moto's dependencies in ~14 s where pip takes 75-90 s.
"$VENV/bin/pip" install --quiet --disable-pip-version-check uv
VIRTUAL_ENV="$VENV" "$VENV/bin/uv" pip install --quiet "moto[server]==$MOTO_VERSION"

if ! installed; then
    echo "install-moto: moto $MOTO_VERSION still not importable from $PY" >&2
    exit 1
fi
echo "$PY"
