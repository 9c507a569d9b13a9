#!/usr/bin/env bash
# The whole test suite: fetches the default model and llama.cpp's source package (tokenizer test
# vectors) if missing, checks formatting and lints, then runs every test (the test profile is
# optimized: tests run the real model).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (rustup) first" >&2
  exit 1
fi
RYZANSTEIN_MODEL="$(scripts/fetch-model.sh)"
export RYZANSTEIN_MODEL
# llama.cpp's tokenizer test vectors (models/ggml-vocab-*) for tests/tokenizer_vectors.rs.
RYZANSTEIN_VOCAB_DIR="$(scripts/fetch-llama-cpp-sdist.sh)/vendor/llama.cpp/models"
export RYZANSTEIN_VOCAB_DIR

# The official openai Python package, for tests/openai_client.py (run by
# tests/server_binary.rs): installed once into the cache, found through this variable.
OPENAI_VERSION="3.54.0"
OPENAI_DIR="${RYZANSTEIN_CACHE:-$HOME/.cache/ryzanstein}/py/openai-$OPENAI_VERSION"
PY="${PYTHON:-python3}"
if ! PYTHONPATH="$OPENAI_DIR" "$PY" -c "import openai" >/dev/null 2>&1; then
  echo "installing openai==$OPENAI_VERSION into $OPENAI_DIR ..." >&2
  rm -rf "$OPENAI_DIR"
  mkdir -p "$(dirname "$OPENAI_DIR")"
  # pip's resolver warns about packages outside --target; only the exit code matters here.
  "$PY" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$OPENAI_DIR" "openai==$OPENAI_VERSION" >/dev/null 2>"$OPENAI_DIR.log" || {
    cat "$OPENAI_DIR.log" >&2
    exit 1
  }
fi
export RYZANSTEIN_OPENAI_PYTHONPATH="$OPENAI_DIR"

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
# fault-injection: the hooks tests/faults.rs needs to make a handler, a dispatcher or a load
# panic (src/faults.rs); release builds have none.
cargo test --quiet --features fault-injection "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole suite (cargo prints one per test binary, the last being the
# doc tests, which may hold none).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
