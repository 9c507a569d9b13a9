#!/usr/bin/env bash
# The prefix cache's bookkeeping on traffic that shares no prefix: Ryzanstein with the cache
# (A) beside Ryzanstein with `--prefix-cache false` (B), one run, levels alternating.
#
#   scripts/prefix-cache-ab.sh [--model FILE] [--threads N] [--levels 16,16,16] [--requests 64]
#                              [--swap]
#
# Random 20-token prompts (ids 1000..30000, a disjoint range per level), 64 new tokens,
# ignore_eos, streamed: the `scripts/compare.sh` streams workload. Prints `ryzanstein bench --compare`'s table (A÷B above
# 1 = the cache costs nothing measurable), then each server's peak resident memory. `--swap`
# makes the server without the cache A (it then runs first in each level's pair). Both
# servers are stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=""
THREADS=2
LEVELS=16,16,16
REQUESTS=64
CACHE_A=true
CACHE_B=false
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift ;;
    --threads) THREADS="$2"; shift ;;
    --levels) LEVELS="$2"; shift ;;
    --requests) REQUESTS="$2"; shift ;;
    --swap) CACHE_A=false; CACHE_B=true ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
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
"$BIN" serve -m "$MODEL" --listen "127.0.0.1:$PA" -t "$THREADS" --log-level warn \
  --prefix-cache "$CACHE_A" &
PIDS="$PIDS $!"
"$BIN" serve -m "$MODEL" --listen "127.0.0.1:$PB" -t "$THREADS" --log-level warn \
  --prefix-cache "$CACHE_B" &
PIDS="$PIDS $!"
for p in "$PA" "$PB"; do
  for _ in $(seq 1 600); do
    curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$p/health/ready" && break
    sleep 0.2
  done
done
# One bench run per level, each with token ids of its own range and no warm-up: no prompt
# repeats one the cache has seen (the random workload draws the same ids in every run).
IFS=, read -r -a LEVEL_LIST <<< "$LEVELS"
n=${#LEVEL_LIST[@]}
for i in "${!LEVEL_LIST[@]}"; do
  lo=$((1000 + i * 29000 / n))
  hi=$((1000 + (i + 1) * 29000 / n))
  "$BIN" bench --url "http://127.0.0.1:$PA" --compare "http://127.0.0.1:$PB" \
    --concurrency "${LEVEL_LIST[$i]}" --requests "$REQUESTS" --prompt-tokens 20 \
    --token-range "$lo..$hi" --max-tokens 64 --warmup 0
done
set -- $PIDS
for side in "A (prefix cache $CACHE_A):$1" "B (prefix cache $CACHE_B):$2"; do
  echo "peak RSS (VmHWM) of ${side%%:*}: $(awk '/VmHWM/ {printf "%.1f MiB", $2 / 1024}' "/proc/${side##*:}/status")"
done
