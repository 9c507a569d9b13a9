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

# llama.cpp's AMX matmul (compiled in by -march=native where the CPU lists amx_int8) crashed
# with a segmentation fault in ggml_backend_amx_mul_mat on the first prompt on a 2-core
# virtual machine here, so on such CPUs the build turns AMX off and keeps the rest of
# -march=native (AVX-512, VNNI). The flags are recorded so a build with others is redone.
EXTRA_FLAGS=""
if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
  EXTRA_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
STAMP="$PEER_DIR/build/ryzanstein-extra-flags"

if [ -x "$BIN_DIR/llama-bench" ] && [ -x "$BIN_DIR/llama-server" ] \
  && [ "$(cat "$STAMP" 2>/dev/null || echo none)" = "$EXTRA_FLAGS" ]; then
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
# (GCC lets an explicit -mno-X win over -march=native wherever it stands on the line.)
cmake -S "$PEER_DIR/src" -B "$PEER_DIR/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DCMAKE_C_FLAGS="$EXTRA_FLAGS" -DCMAKE_CXX_FLAGS="$EXTRA_FLAGS" \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$PEER_DIR/build" -j "$JOBS" --target llama-bench llama-server llama-cli >&2
printf '%s' "$EXTRA_FLAGS" > "$STAMP"
echo "$BIN_DIR"
