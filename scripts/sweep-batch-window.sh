#!/usr/bin/env bash
# Chooses `batch_window_ms` by measurement: for each window, starts `ryzanstein serve
# --batch-window-ms W` on MODEL and drives it with `ryzanstein bench` — bursts of tiny requests
# (max_tokens 1, 5-token prompts, 64 keep-alive connections: where gathering arrivals could pay)
# and 16 concurrent streams (20-token prompts, 64 new tokens: where waiting could only cost) —
# then prints one table. The windows run in turn, twice (W1 W2 … W1 W2 …), so drift on a shared
# machine shows as the gap between a window's two rounds.
#
#   scripts/sweep-batch-window.sh [--model FILE] [--threads N] [--windows 0,2,5,10] [--out DIR]
#
# The server is stopped (by PID) after each window and when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=""
THREADS=2
WINDOWS=0,2,5,10
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift ;;
    --threads) THREADS="$2"; shift ;;
    --windows) WINDOWS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
MODEL="${MODEL:-$(scripts/fetch-model.sh)}"
cargo build --release --quiet
BIN=target/release/ryzanstein
OUT="${OUT:-target/sweep-batch-window/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"

PID=""
stop_server() {
  if [ -n "$PID" ]; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
  fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

run_window() { # run_window W ROUND
  local w="$1" round="$2" p
  p="$(port)"
  "$BIN" serve --model "$MODEL" --listen "127.0.0.1:$p" --threads "$THREADS" \
    --batch-window-ms "$w" --log-level warn > "$OUT/serve-w$w-r$round.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 600); do
    curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$p/health/ready" && break
    kill -0 "$PID" 2>/dev/null || { echo "server exited; see $OUT/serve-w$w-r$round.log" >&2; exit 1; }
    sleep 0.2
  done
  "$BIN" bench --url "http://127.0.0.1:$p" --concurrency 64 --requests 640 --prompt-tokens 5 \
    --max-tokens 1 --no-stream --warmup 8 --json "$OUT/tiny-w$w-r$round.json" > /dev/null
  "$BIN" bench --url "http://127.0.0.1:$p" --concurrency 16 --prompt-tokens 20 \
    --token-range 1000..30000 --max-tokens 64 --json "$OUT/streams-w$w-r$round.json" > /dev/null
  stop_server
}

IFS=, read -r -a WS <<< "$WINDOWS"
for round in 1 2; do
  for w in "${WS[@]}"; do
    echo "window $w ms, round $round ..." >&2
    run_window "$w" "$round"
  done
done

python3 - "$OUT" "$WINDOWS" <<'PYEOF' | tee "$OUT/table.md"
import json, sys
out, windows = sys.argv[1], sys.argv[2].split(",")
lvl = lambda f: json.load(open(f))["levels"][0][0]
print("| batch_window_ms | round | tiny req/s | tiny p99 ms | 16 streams tok/s | 16 streams TTFT p99 ms | 16 streams ITL p50 ms |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for w in windows:
    for r in (1, 2):
        t, s = lvl(f"{out}/tiny-w{w}-r{r}.json"), lvl(f"{out}/streams-w{w}-r{r}.json")
        print(f"| {w} | {r} | {t['request_throughput']:.1f} | {t['e2el_ms']['p99']:.1f} | "
              f"{s['output_throughput']:.1f} | {s['ttft_ms']['p99']:.1f} | {s['itl_ms']['p50']:.1f} |")
PYEOF
echo "results in $OUT" >&2
