#!/usr/bin/env bash
# The whole test suite: fetches the default model if missing, checks formatting and lints,
# then runs every test (the test profile is optimized: tests run the real model).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (rustup) first" >&2
  exit 1
fi
RYZANSTEIN_MODEL="$(scripts/fetch-model.sh)"
export RYZANSTEIN_MODEL

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --quiet "$@"
