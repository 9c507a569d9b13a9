#!/usr/bin/env bash
# A flamegraph of `ryzanstein serve` under load (see docs/PROFILING.md).
#
#   scripts/profile.sh [--model FILE] [--threads N] [--seconds S] [--out DIR] [--fp]
#                      [-- BENCH ARGS...]
#
# Starts the release server, drives it with `ryzanstein bench` (default: 16 concurrent
# streams of 64 tokens, ~20-token prompts; anything after `--` replaces those arguments),
# records the server's stacks with `perf record -e cpu-clock` for S seconds (default 20), and
# folds and draws them with inferno, installed once into the cache (not globally).
# Writes OUT/flamegraph.svg (default OUT: target/profile/<UTC time>), OUT/perf.data and the
# folded stacks. cpu-clock is a software event, so it works in VMs without hardware counters.
# Call graphs come from DWARF unwinding (the release profile keeps line tables and unwind
# tables); `--fp` uses frame pointers instead (`perf record -g`), which needs a build with
# RUSTFLAGS="-C force-frame-pointers=yes" to show deep stacks.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=""
THREADS=2
SECONDS_REC=20
OUT=""
CALL_GRAPH=(--call-graph dwarf,32768)
BENCH_ARGS=(--concurrency 16 --requests 1000 --prompt-tokens 20 --max-tokens 64)
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift ;;
    --threads) THREADS="$2"; shift ;;
    --seconds) SECONDS_REC="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --fp) CALL_GRAPH=(-g) ;;
    --) shift; BENCH_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

if ! command -v perf >/dev/null 2>&1; then
  echo "perf not found: install Debian's linux-perf (apt-get install linux-perf)" >&2
  exit 1
fi
CACHE_DIR="${RYZANSTEIN_CACHE:-$HOME/.cache/ryzanstein}"
INFERNO_VERSION=0.12.8
INFERNO="$CACHE_DIR/tools/inferno-$INFERNO_VERSION/bin"
if [ ! -x "$INFERNO/inferno-flamegraph" ]; then
  echo "installing inferno $INFERNO_VERSION into $INFERNO ..." >&2
  cargo install --locked --quiet inferno --version "$INFERNO_VERSION" \
    --root "$CACHE_DIR/tools/inferno-$INFERNO_VERSION" >&2
fi

MODEL="${MODEL:-$(scripts/fetch-model.sh)}"
cargo build --release --quiet
BIN=target/release/ryzanstein
OUT="${OUT:-target/profile/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"

SERVER_PID=""
LOAD_PID=""
cleanup() {
  for pid in $LOAD_PID $SERVER_PID; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $LOAD_PID $SERVER_PID; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"
"$BIN" serve --model "$MODEL" --listen "127.0.0.1:$PORT" --threads "$THREADS" --log-level warn \
  > "$OUT/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 1500); do
  curl -sf -o /dev/null --max-time 2 "$URL/health/ready" && break
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server exited; see $OUT/server.log" >&2; exit 1; }
  sleep 0.2
done

"$BIN" bench --url "$URL" --warmup 2 "${BENCH_ARGS[@]}" > "$OUT/bench.txt" 2>&1 &
LOAD_PID=$!
sleep 2 # let the load reach its steady state
echo "recording $SECONDS_REC s of pid $SERVER_PID under load ..." >&2
perf record -e cpu-clock -F 499 "${CALL_GRAPH[@]}" -p "$SERVER_PID" -o "$OUT/perf.data" \
  -- sleep "$SECONDS_REC" 2> "$OUT/perf-record.log"
cleanup
LOAD_PID=""
SERVER_PID=""

perf script -i "$OUT/perf.data" 2> "$OUT/perf-script.log" \
  | "$INFERNO/inferno-collapse-perf" > "$OUT/stacks.folded"
"$INFERNO/inferno-flamegraph" --title "ryzanstein serve under load ($(basename "$MODEL"))" \
  < "$OUT/stacks.folded" > "$OUT/flamegraph.svg"
echo "top frames (self time):" >&2
awk '{ n = $NF; $NF = ""; k = split($0, f, ";"); self[f[k]] += n; total += n }
     END { for (s in self) printf "%6.2f%%  %s\n", 100 * self[s] / total, s }' "$OUT/stacks.folded" \
  | sort -rn | head -15 >&2
echo "flamegraph: $OUT/flamegraph.svg" >&2
