#!/usr/bin/env bash
# Create .venv (if missing) and install slimtune with its test dependencies into it.
# torch is pinned to the CPU build 2.13.0 (set TORCH_SPEC to use another).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
# every other package is installed against the torch just installed, so none can swap it
# (plain `torch` from PyPI is a multi-GB CUDA build; torchvision must never come in)
echo "${TORCH_SPEC:-torch==2.13.0}" > .venv/constraints.txt
.venv/bin/python -m pip install -q -c .venv/constraints.txt -e ".[dev]"
