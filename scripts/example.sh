#!/usr/bin/env bash
# Set up (if needed) and run the bundled example on embedded defaults:
# a search for compressed versions of a digits CNN (SQLite storage, local execution).
# Extra arguments go to `slimtune run` (e.g. --n-trials 8).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/slimtune run examples/digits.yaml "$@"
