#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv — sourced by the two README commands.
# Idempotent: reinstalls only when requirements.txt or pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TINYHD_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

# the pinned numpy/pandas/matplotlib/ipykernel wheels need Python >= 3.11
if [ ! -x "$VENV/bin/python" ]; then
  if ! command -v "$PY" > /dev/null; then
    echo "[env] error: no $PY found; the pinned packages need Python >= 3.11: run with PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "[env] error: $PY is $("$PY" --version 2>&1); the pinned packages need Python >= 3.11:" \
         "run with PYTHON=/path/to/python3.11 (or newer)" >&2
    exit 1
  fi
  echo "[env] creating $VENV with $($PY --version 2>&1)"
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.tinyhd-installed"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[env] installing pinned requirements (torch brings ~5 GB of CUDA libraries; a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements.txt"
  "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONUNBUFFERED=1
