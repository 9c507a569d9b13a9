#!/usr/bin/env bash
# The prefix cache's bookkeeping on traffic that shares no prefix: Ryzanstein with the cache
# (A) beside Ryzanstein with `--prefix-cache false` (B), one run, levels alternating.
#
#   scripts/prefix-cache-ab.sh [--model FILE] [--threads N] [--levels 16,16,16] [--requests 64]
#
# Random 20-token prompts (ids 1000..30000), 64 new tokens, ignore_eos, streamed: the
# `scripts/compare.sh` streams workload. Prints `ryzanstein bench --compare`'s table (A÷B above
# 1 = the cache costs nothing measurable). Both servers are stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=""
THREADS=2
LEVELS=16,16,16
REQUESTS=64
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift ;;
    --threads) THREADS="$2"; shift ;;
    --levels) LEVELS="$2"; shift ;;
    --requests) REQUESTS="$2"; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
MODEL="${MODEL:-$(scripts/fetch-model.sh)}"
cargo build --release --quiet
BIN=target/release/ryzanstein
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PA="$(port)"
PB="$(port)"
PIDS=""
trap 'for p in $PIDS; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
"$BIN" serve -m "$MODEL" --listen "127.0.0.1:$PA" -t "$THREADS" --log-level warn &
PIDS="$PIDS $!"
"$BIN" serve -m "$MODEL" --listen "127.0.0.1:$PB" -t "$THREADS" --log-level warn \
  --prefix-cache false &
PIDS="$PIDS $!"
for p in "$PA" "$PB"; do
  for _ in $(seq 1 600); do
    curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$p/health/ready" && break
    sleep 0.2
  done
done
"$BIN" bench --url "http://127.0.0.1:$PA" --compare "http://127.0.0.1:$PB" \
  --concurrency "$LEVELS" --requests "$REQUESTS" --prompt-tokens 20 --token-range 1000..30000 \
  --max-tokens 64
