#!/usr/bin/env bash
# Build llama.cpp (the peer we compare against) from the llama-cpp-python source package,
# into a cache outside the repo. Nothing of the peer is committed.
# Prints the directory holding llama-bench / llama-server / llama-cli.
set -euo pipefail

CACHE_DIR="${RYZANSTEIN_CACHE:-$HOME/.cache/ryzanstein}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PEER_DIR="$CACHE_DIR/peer/llama-cpp-python-$VERSION"
BIN_DIR="$PEER_DIR/build/bin"
PY="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc)}"

if [ -x "$BIN_DIR/llama-bench" ] && [ -x "$BIN_DIR/llama-server" ]; then
  echo "$BIN_DIR"
  exit 0
fi

mkdir -p "$PEER_DIR" "$CACHE_DIR/tools"
if ! command -v cmake >/dev/null 2>&1; then
  "$PY" -m pip install --quiet --disable-pip-version-check --target "$CACHE_DIR/tools/cmake" cmake >&2
  export PATH="$CACHE_DIR/tools/cmake/bin:$PATH"
  export PYTHONPATH="$CACHE_DIR/tools/cmake${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ ! -f "$PEER_DIR/src/CMakeLists.txt" ]; then
  sdist=$("$(dirname "$0")/fetch-llama-cpp-sdist.sh")
  rm -rf "$PEER_DIR/src"
  cp -r "$sdist/vendor/llama.cpp" "$PEER_DIR/src"
fi

# Native build (-march=native via GGML_NATIVE), CPU only, no curl: the same machine, the same flags
# a user would build with.
cmake -S "$PEER_DIR/src" -B "$PEER_DIR/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$PEER_DIR/build" -j "$JOBS" --target llama-bench llama-server llama-cli >&2
echo "$BIN_DIR"
