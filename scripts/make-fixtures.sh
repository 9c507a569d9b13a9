#!/usr/bin/env bash
# Rebuilds the architecture fixtures in tests/data/fixtures/: small Llama, Qwen2 and Qwen3 models
# with random weights and truncated real vocabularies, and the reference outputs of llama.cpp
# (through llama-cpp-python) for each. See scripts/make_fixtures.py for what is made and how.
#
# Installs what it needs into the cache, once, outside the repo:
#   $CACHE/pylib/llama-cpp-python-$VERSION  llama-cpp-python (compiled from the source package:
#                                           several minutes), numpy, and the gguf package vendored
#                                           in that same source package (so writer and reader agree)
# Usage: scripts/make-fixtures.sh [--install-only]
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_DIR="${RYZANSTEIN_CACHE:-$HOME/.cache/ryzanstein}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PYLIB="$CACHE_DIR/pylib/llama-cpp-python-$VERSION"
PY="${PYTHON:-python3}"

sdist=$(scripts/fetch-llama-cpp-sdist.sh)

if [ ! -f "$PYLIB/.complete" ]; then
  if [ -x "$CACHE_DIR/tools/cmake/bin/cmake" ]; then
    export PATH="$CACHE_DIR/tools/cmake/bin:$PATH"
  elif ! command -v cmake >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --disable-pip-version-check --target "$CACHE_DIR/tools/cmake" cmake >&2
    export PATH="$CACHE_DIR/tools/cmake/bin:$PATH"
  fi
  rm -rf "$PYLIB"
  mkdir -p "$PYLIB"
  echo "building llama-cpp-python $VERSION into $PYLIB (several minutes)" >&2
  # CPU only, native (the default), without the multimodal library nobody here uses.
  CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON" \
    CMAKE_BUILD_PARALLEL_LEVEL="${JOBS:-$(nproc)}" \
    "$PY" -m pip install --disable-pip-version-check --target "$PYLIB" \
    "$sdist" "$sdist/vendor/llama.cpp/gguf-py" >&2
  touch "$PYLIB/.complete"
fi

if [ "${1:-}" = "--install-only" ]; then
  echo "$PYLIB"
  exit 0
fi

PYTHONPATH="$PYLIB${PYTHONPATH:+:$PYTHONPATH}" "$PY" scripts/make_fixtures.py \
  --vocab-dir "$sdist/vendor/llama.cpp/models" --out tests/data/fixtures
du -sh tests/data/fixtures
