#!/usr/bin/env bash
# Ryzanstein beside llama.cpp's llama-server: the same model file, the same threads, one run.
#
#   scripts/compare.sh [--overhead] [--model FILE] [--threads N] [--out DIR] [--tiny-requests N]
#                      [--latency-requests N] [--token-range LO..HI]
#
# Default (full) mode prints one table: single-stream prefill and decode (`ryzanstein
# bench-model` beside `llama-bench`), aggregate generated tokens/s at 1, 4, 8, 16 and 32 streams
# (~20-token prompts, 64 new tokens, ignore_eos), time to first token and inter-token latency
# p50/p99, the latency at 8 streams again over more requests (--latency-requests, default 128:
# with the 4 per client of the levels above, a p99 is simply the worst request; from 101 on it is
# not), tiny-request throughput (max_tokens 1, 5-token prompt, 64 keep-alive connections)
# and each server's peak resident memory (VmHWM). `--overhead` runs only the tiny-request part:
# the serving overhead, best on tests/data/fixtures/tiny-llama.gguf.
#
# The load comes from `ryzanstein bench --compare`, which alternates the two servers level by
# level. llama-server runs as `-m MODEL -t THREADS -c 8192 -np 16`. Both servers are stopped
# (by PID) when the script exits. Everything lands in OUT (default
# target/compare/<UTC time>): table.md (the table with date, CPU, commits and load average,
# ready for docs/BENCHMARKS.md), the bench JSON reports and SVG charts, the servers' logs.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=full
MODEL=""
THREADS=2
OUT=""
TINY_REQUESTS=1000
LATENCY_REQUESTS=128
TOKEN_RANGE=1000..30000
while [ $# -gt 0 ]; do
  case "$1" in
    --overhead) MODE=overhead ;;
    --model) MODEL="$2"; shift ;;
    --threads) THREADS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --tiny-requests) TINY_REQUESTS="$2"; shift ;;
    --latency-requests) LATENCY_REQUESTS="$2"; shift ;;
    --token-range) TOKEN_RANGE="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

MODEL="${MODEL:-$(scripts/fetch-model.sh)}"
PEER_BIN="$(scripts/build-llama-cpp.sh)"
cargo build --release --quiet
BIN=target/release/ryzanstein
OUT="${OUT:-target/compare/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
LOAD_AT_START="$(cut -d' ' -f1-3 /proc/loadavg)"

OURS_PID=""
PEER_PID=""
stop_servers() {
  for pid in $OURS_PID $PEER_PID; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $OURS_PID $PEER_PID; do
    wait "$pid" 2>/dev/null || true
  done
  OURS_PID=""
  PEER_PID=""
}
trap stop_servers EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_ok URL PID: until URL answers 200 (at most 5 minutes), or the server exits.
wait_ok() {
  for _ in $(seq 1 1500); do
    if curl -sf -o /dev/null --max-time 2 "$1"; then
      return 0
    fi
    if ! kill -0 "$2" 2>/dev/null; then
      echo "the server behind $1 exited; see $OUT/*.log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "$1 did not answer in time" >&2
  return 1
}

peak_rss_kib() {
  awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"
}

if [ "$MODE" = full ]; then
  echo "single stream: llama-bench, then ryzanstein bench-model ..." >&2
  "$PEER_BIN/llama-bench" -m "$MODEL" -t "$THREADS" -p 512 -n 128 -r 3 -o json \
    > "$OUT/llama-bench.json" 2> "$OUT/llama-bench.log"
  "$BIN" bench-model -m "$MODEL" -t "$THREADS" -p 512 -n 128 -r 3 --json \
    > "$OUT/bench-model.json" 2> "$OUT/bench-model.log"
fi

OURS_PORT="$(free_port)"
PEER_PORT="$(free_port)"
"$BIN" serve --model "$MODEL" --listen "127.0.0.1:$OURS_PORT" --threads "$THREADS" \
  --log-level warn > "$OUT/ryzanstein.log" 2>&1 &
OURS_PID=$!
"$PEER_BIN/llama-server" -m "$MODEL" -t "$THREADS" -c 8192 -np 16 \
  --host 127.0.0.1 --port "$PEER_PORT" > "$OUT/llama-server.log" 2>&1 &
PEER_PID=$!
OURS="http://127.0.0.1:$OURS_PORT"
PEER="http://127.0.0.1:$PEER_PORT"
wait_ok "$OURS/health/ready" "$OURS_PID"
wait_ok "$PEER/health" "$PEER_PID"
echo "servers up: ryzanstein pid $OURS_PID at $OURS, llama-server pid $PEER_PID at $PEER" >&2

if [ "$MODE" = full ]; then
  # Token ids 1000..30000 are ordinary Gemma 3 word pieces (below ~1000 lie special, unused
  # and byte tokens), so the prompts look like text to both servers.
  echo "streams: 1, 4, 8, 16, 32 concurrent (20-token prompts, 64 new tokens) ..." >&2
  "$BIN" bench --url "$OURS" --compare "$PEER" --concurrency 1,4,8,16,32 \
    --prompt-tokens 20 --token-range "$TOKEN_RANGE" --max-tokens 64 --json "$OUT/streams.json" --svg "$OUT/charts" \
    | tee "$OUT/streams.txt"
  echo "latency: 8 streams, $LATENCY_REQUESTS requests ..." >&2
  "$BIN" bench --url "$OURS" --compare "$PEER" --concurrency 8 --requests "$LATENCY_REQUESTS" \
    --prompt-tokens 20 --token-range "$TOKEN_RANGE" --max-tokens 64 --json "$OUT/latency8.json" \
    | tee "$OUT/latency8.txt"
fi
echo "tiny requests: max_tokens 1, 5-token prompt, 64 keep-alive connections ..." >&2
"$BIN" bench --url "$OURS" --compare "$PEER" --concurrency 64 --requests "$TINY_REQUESTS" \
  --prompt-tokens 5 --max-tokens 1 --no-stream --warmup 8 --json "$OUT/tiny.json" \
  | tee "$OUT/tiny.txt"

OURS_RSS="$(peak_rss_kib "$OURS_PID")"
PEER_RSS="$(peak_rss_kib "$PEER_PID")"
stop_servers

python3 - "$OUT" "$MODE" "$MODEL" "$THREADS" "$OURS_RSS" "$PEER_RSS" "$LOAD_AT_START" <<'PYEOF' | tee "$OUT/table.md"
import json, os, platform, subprocess, sys, datetime
out, mode, model, threads, ours_rss, peer_rss, load0 = sys.argv[1:8]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()
commit = git("rev-parse", "--short", "HEAD") + ("" if not git("status", "--porcelain", "--untracked-files=no") else "+dirty")
load1 = open("/proc/loadavg").read().split()[:3]
build = ""
rows = []
ratio = lambda a, b: f"{a / b:.2f}×" if b else "-"
def row(name, ours, peer, fmt="{:.1f}", lower_better=False):
    r = ratio(peer, ours) if lower_better else ratio(ours, peer)
    rows.append(f"| {name} | {fmt.format(ours)} | {fmt.format(peer)} | {r} |")
if mode == "full":
    ll = {("pp" if t["n_prompt"] > 0 else "tg"): t for t in json.load(open(f"{out}/llama-bench.json"))}
    build = next(iter(ll.values())).get("build_commit", "")
    us = json.load(open(f"{out}/bench-model.json"))
    row("prefill pp512, tokens/s (single stream)", us["prefill_tokens_per_s"], ll["pp"]["avg_ts"])
    row("decode tg128, tokens/s (single stream)", us["decode_tokens_per_s"], ll["tg"]["avg_ts"])
    s = json.load(open(f"{out}/streams.json"))
    for a, b in zip(*s["levels"]):
        row(f"{a['clients']} streams: generated tokens/s", a["output_throughput"], b["output_throughput"])
    for a, b in zip(*s["levels"]):
        c = a["clients"]
        for key, name in (("ttft_ms", "TTFT"), ("itl_ms", "ITL")):
            for q in ("p50", "p99"):
                row(f"{c} streams: {name} {q}, ms", a[key][q], b[key][q], lower_better=True)
    l8 = json.load(open(f"{out}/latency8.json"))
    a, b = l8["levels"][0][0], l8["levels"][1][0]
    n8 = f"8 streams, {a['completed']} / {b['completed']} requests"
    for key, name in (("ttft_ms", "TTFT"), ("itl_ms", "ITL")):
        for q in ("p50", "p99", "max"):
            row(f"{n8}: {name} {q}, ms", a[key][q], b[key][q], lower_better=True)
    for a, b in [*zip(*s["levels"]), (a, b)]:
        errs = sum(a["errors"].values()) + sum(b["errors"].values())
        if errs:
            rows.append(f"| {a['clients']} streams: errors (ours / peer) | {a['errors']} | {b['errors']} | |")
t = json.load(open(f"{out}/tiny.json"))
a, b = t["levels"][0][0], t["levels"][1][0]
row("tiny requests (64 conns): requests/s", a["request_throughput"], b["request_throughput"])
row("tiny requests: latency p50, ms", a["e2el_ms"]["p50"], b["e2el_ms"]["p50"], lower_better=True)
row("tiny requests: latency p99, ms", a["e2el_ms"]["p99"], b["e2el_ms"]["p99"], lower_better=True)
row("tiny requests: TCP connections opened", a["connections_opened"], b["connections_opened"], "{:.0f}", lower_better=True)
if sum(a["errors"].values()) + sum(b["errors"].values()):
    rows.append(f"| tiny requests: errors (ours / peer) | {a['errors']} | {b['errors']} | |")
row("peak RSS (VmHWM), MiB", int(ours_rss) / 1024, int(peer_rss) / 1024, lower_better=True)
print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; CPU: {cpu} ({os.cpu_count()} logical); threads: {threads}")
print(f"Model: {os.path.basename(model)}; ryzanstein commit {commit}; llama.cpp from llama-cpp-python "
      f"{os.environ.get('LLAMA_CPP_PYTHON_VERSION', '0.3.36')}" + (f" (build {build})" if build else ""))
print(f"Load average (1/5/15 min) at start {load0}, at end {' '.join(load1)}: ratios from one run; absolute figures move with the load.")
print()
print("| measure | ryzanstein | llama-server | ratio (higher = ryzanstein better) |")
print("|---|---:|---:|---:|")
print("\n".join(rows))
PYEOF
echo "results in $OUT" >&2
