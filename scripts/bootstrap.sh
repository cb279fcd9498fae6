#!/usr/bin/env bash
# Create .venv in the repository root and install the project into it.
#   scripts/bootstrap.sh        runtime install
#   scripts/bootstrap.sh dev    + test/lint tools (pytest, ruff, llama-cpp-python's OpenAI-compatible server)
# Order matters: torch first (pinned to the local CPU wheel; any other torch requirement would pull CUDA),
# then DeepSpeed without build isolation (its sdist imports torch at build time), then the project.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python3 -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip setuptools wheel
pip install "torch==2.13.0"
pip install --no-build-isolation "deepspeed==0.19.*"
if [ "$extra" = "dev" ]; then
  pip install -e ".[dev]"
else
  pip install -e .
fi
echo "installed into $(pwd)/.venv"
