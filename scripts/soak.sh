#!/usr/bin/env bash
# Soak: 30 minutes (or --minutes N) of mixed load at about 70% of the measured capacity on
# one server on 127.0.0.1 — streams and whole completions, client cancellations, model loads
# and evictions — checking that nothing but designed 503s fails and that resident memory,
# threads and descriptors stay flat. Prints a summary; exits non-zero on any failure.
# See scripts/soak.py for the details and docs/OPERATIONS.md (Soak) for the last run.
#
#   scripts/soak.sh [--minutes N] [--load-fraction F] [--binary PATH] [--gemma FILE|--no-gemma]
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
gemma=""
no_gemma=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --gemma) gemma="$2"; shift 2 ;;
    --no-gemma) no_gemma=1; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -z "$binary" ]; then
  cargo build --release --quiet
  binary="target/release/ryzanstein"
fi
if [ -z "$gemma" ] && [ -z "$no_gemma" ]; then
  gemma="${RYZANSTEIN_MODEL:-$(scripts/fetch-model.sh)}"
fi
gemma_args=()
if [ -n "$gemma" ]; then
  gemma_args=(--gemma "$gemma")
fi
exec "${PYTHON:-python3}" scripts/soak.py --binary "$binary" --fixtures tests/data/fixtures \
  "${gemma_args[@]}" "${args[@]}"
