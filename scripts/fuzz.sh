#!/usr/bin/env bash
# Runs the fuzz target TARGET for SECONDS seconds (default: 600 seconds of `gguf_reader`).
#
#   scripts/fuzz.sh [SECONDS] [TARGET]
#
# Targets (fuzz/fuzz_targets/): `gguf_reader` (the GGUF reader on arbitrary bytes) and
# `request` (request bodies through the server's parse and validation, `api::parse_and_validate`,
# then the tiny Llama fixture's tokenizer and chat template).
#
# Works on stable Rust: cargo-fuzz needs nightly-only rustc flags, so RUSTC_BOOTSTRAP=1 is set
# for the fuzz build (it builds in fuzz/target, apart from the main build).
# Installs cargo-fuzz if it is missing. The working corpus is fuzz/corpus/TARGET (new inputs
# are written there, not tracked by git); it is seeded from the committed fuzz/seeds/TARGET,
# which is read but never written. A crash makes this script exit non-zero; the failing input is
# saved under fuzz/artifacts/TARGET/.
#
# Environment:
#   FUZZ_SANITIZER  cargo-fuzz sanitizer (default: none — the reader is safe Rust, overflow
#                   checks and debug assertions stay on; use `address` to add ASan)
#   FUZZ_MAX_LEN    largest input in bytes (default: 16384)
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${1:-600}"
target="${2:-gguf_reader}"
case "$duration" in
  '' | *[!0-9]*)
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET]" >&2
    exit 2
    ;;
esac
if [ ! -f "fuzz/fuzz_targets/$target.rs" ]; then
  echo "no fuzz target '$target' (fuzz/fuzz_targets/*.rs)" >&2
  exit 2
fi
sanitizer="${FUZZ_SANITIZER:-none}"
max_len="${FUZZ_MAX_LEN:-16384}"

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (rustup) first" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

corpus="fuzz/corpus/$target"
seeds="fuzz/seeds/$target"
mkdir -p "$corpus"

export RUSTC_BOOTSTRAP=1
# The first corpus directory receives new inputs; the seed directory is only read.
exec cargo fuzz run --fuzz-dir fuzz --sanitizer "$sanitizer" --debug-assertions \
  "$target" "$corpus" "$seeds" -- \
  -max_total_time="$duration" \
  -max_len="$max_len" \
  -timeout=10 \
  -rss_limit_mb=2048 \
  -print_final_stats=1
