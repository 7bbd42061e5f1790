#!/usr/bin/env bash
# README command 1: set up the environment if missing, then execute every notebook end to end with
# papermill at its default (reduced) scale. Executed notebooks go to runs/notebooks/, figures and
# training runs to runs/<notebook>/ (git-ignored). Extra arguments are passed to papermill, e.g.
#   bash scripts/run_notebooks.sh -p device cuda
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
mkdir -p "$ROOT/runs/notebooks"
status=0
for nb in "$ROOT"/notebooks/[0-9][0-9]_*.ipynb; do
  name="$(basename "$nb")"
  start=$SECONDS
  echo "[notebooks] $name"
  if papermill --cwd "$ROOT/notebooks" --log-level WARNING --no-progress-bar \
       "$nb" "$ROOT/runs/notebooks/$name" "$@"; then
    echo "[notebooks] $name ok in $((SECONDS - start)) s -> runs/notebooks/$name"
  else
    echo "[notebooks] $name FAILED after $((SECONDS - start)) s (see runs/notebooks/$name)"
    status=1
  fi
done
exit $status
