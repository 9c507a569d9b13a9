#!/usr/bin/env bash
# Fetch and unpack the llama-cpp-python source package (it vendors llama.cpp) into the cache,
# once. Prints the unpacked directory. Used for llama.cpp's tokenizer test vectors
# (vendor/llama.cpp/models/ggml-vocab-*), for building the peer, and for the fixture script.
# Nothing of it is committed.
set -euo pipefail

CACHE_DIR="${RYZANSTEIN_CACHE:-$HOME/.cache/ryzanstein}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
DEST="$CACHE_DIR/sdist/llama_cpp_python-$VERSION"
PY="${PYTHON:-python3}"

if [ -f "$DEST/.complete" ]; then
  echo "$DEST"
  exit 0
fi

mkdir -p "$CACHE_DIR/sdist"
tmp=$(mktemp -d "$CACHE_DIR/sdist/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
  -d "$tmp" "llama-cpp-python==$VERSION" >&2
tar xzf "$tmp/llama_cpp_python-$VERSION.tar.gz" -C "$tmp"
rm -rf "$DEST"
mv "$tmp/llama_cpp_python-$VERSION" "$DEST"
touch "$DEST/.complete"
echo "$DEST"
