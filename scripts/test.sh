#!/usr/bin/env bash
# README command 2: set up the environment if missing, then run the test suite and re-execute every
# notebook under nbval (`--nbval-lax`: a notebook fails if any cell raises, e.g. a failed check cell).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` or `-k metrics`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
# testpaths (pyproject.toml) are tests/ and notebooks/: this is the plain `pytest --nbval-lax` of the design card
exec python -m pytest --nbval-lax -p no:cacheprovider "$@"
