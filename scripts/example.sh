#!/usr/bin/env bash
# Set up (if needed) and run the bundled example on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m slimtune.examples.demo "$@"
