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

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --quiet "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole suite (cargo prints one per test binary, the last being the
# doc tests, which may hold none).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
