#!/usr/bin/env bash
# Ryzanstein beside llama.cpp's llama-server: the same model file, the same threads, one run.
#
#   scripts/compare.sh [--overhead | --prefix-only | --connections-only] [--model FILE]
#                      [--threads N] [--out DIR] [--tiny-requests N] [--latency-requests N]
#                      [--token-range LO..HI] [--conn-duration S]
#
# Default (full) mode prints one table: single-stream prefill and decode (`ryzanstein
# bench-model` beside `llama-bench`), aggregate generated tokens/s at 1, 4, 8, 16 and 32 streams
# (~20-token prompts, 64 new tokens, ignore_eos), time to first token and inter-token latency
# p50/p99, the latency at 8 streams again over more requests (--latency-requests, default 128:
# with the 4 per client of the levels above, a p99 is simply the worst request; from 101 on it is
# not), tiny-request throughput (max_tokens 1, 5-token prompt, 64 keep-alive connections),
# each server's peak resident memory (VmHWM), then many connections (the same tiny requests in
# timed closed-loop levels of 64, 256 and 1,000 keep-alive connections, --conn-duration s each,
# default 15; one pass resending a 503 at once, one honouring its Retry-After; at 256 and 1,000:
# 2xx requests/s, also as % of the server's own 64-connection peak (the better pass), 503s/s,
# answered and first-send-to-answer p99, socket errors), then the prefix-cache workloads: shared
# prefix (every chat request's system message is one ~1,050-token document, then a question of its
# own; 4 concurrent clients, 32 requests, 8 new tokens) and multi-turn (4 conversations of 8
# turns, each turn resending the history with the answers, 24 new tokens a turn; one
# conversation at a time, then all 4 at once; TTFT p50 at turns 1 and 8). `--overhead` runs
# only the tiny-request part: the serving overhead, best on tests/data/fixtures/tiny-llama.gguf.
# `--prefix-only` runs only the prefix-cache workloads, `--connections-only` only the
# many-connections part (admission and overload).
#
# The load comes from `ryzanstein bench --compare`, which alternates the two servers level by
# level. llama-server runs as `-m MODEL -t THREADS -c 8192 -np 16`; for the prefix-cache
# workloads it is restarted with `-c 32768`, as a slot holds n_ctx / 16 tokens (512 would not
# take the document, 2,048 take a whole conversation), its prompt cache on as by default
# (`cache_prompt`), and, for a model file without a chat template, with the template
# Ryzanstein falls back to (`--no-jinja --chat-template gemma` for Gemma). Both servers are
# stopped (by PID) when the script exits. Everything lands in OUT (default
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
PEER_CTX=8192
PREFIX_PEER_CTX=32768
CONN_DURATION=15
CONN_LEVELS=64,256,1000
while [ $# -gt 0 ]; do
  case "$1" in
    --overhead) MODE=overhead ;;
    --prefix-only) MODE=prefix ;;
    --connections-only) MODE=connections ;;
    --model) MODEL="$2"; shift ;;
    --threads) THREADS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --tiny-requests) TINY_REQUESTS="$2"; shift ;;
    --latency-requests) LATENCY_REQUESTS="$2"; shift ;;
    --token-range) TOKEN_RANGE="$2"; shift ;;
    --conn-duration) CONN_DURATION="$2"; shift ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
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

# start_peer CTX LOG [ARGS...]: llama-server on PEER_PORT with a context of CTX tokens (16
# slots) and any further arguments.
start_peer() {
  local ctx="$1" log="$2"
  shift 2
  "$PEER_BIN/llama-server" -m "$MODEL" -t "$THREADS" -c "$ctx" -np 16 "$@" \
    --host 127.0.0.1 --port "$PEER_PORT" > "$log" 2>&1 &
  PEER_PID=$!
  wait_ok "$PEER/health" "$PEER_PID"
}

# The peer's chat template for the prefix-cache workloads (chat requests): the file's own if it
# has one, else the format Ryzanstein falls back to (model/chat.rs: Gemma turns for Gemma, Llama
# 3 headers for llama-bpe Llama) rather than llama.cpp's ChatML, which a Gemma vocabulary reads
# as plain text (other prompts, ~27 more tokens a request, other answers). The built-in names
# are only read as such with --no-jinja.
peer_template_args() {
  local meta arch pre
  meta="$("$BIN" inspect "$MODEL")"
  if grep -q 'tokenizer.chat_template' <<< "$meta"; then
    return
  fi
  arch="$(sed -n 's/^ *general.architecture (string) = "\(.*\)"$/\1/p' <<< "$meta")"
  pre="$(sed -n 's/^ *tokenizer.ggml.pre (string) = "\(.*\)"$/\1/p' <<< "$meta")"
  case "$arch" in
    gemma*) echo "--no-jinja --chat-template gemma" ;;
    llama) if [ "$pre" = llama-bpe ]; then echo "--no-jinja --chat-template llama3"; fi ;;
  esac
}

if [ "$MODE" = full ] || [ "$MODE" = connections ]; then
  # 1,000 connections need as many descriptors in each server (the bench raises its own).
  ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
fi
OURS_PORT="$(free_port)"
PEER_PORT="$(free_port)"
OURS="http://127.0.0.1:$OURS_PORT"
PEER="http://127.0.0.1:$PEER_PORT"
"$BIN" serve --model "$MODEL" --listen "127.0.0.1:$OURS_PORT" --threads "$THREADS" \
  --log-level warn > "$OUT/ryzanstein.log" 2>&1 &
OURS_PID=$!
PREFIX_PEER_ARGS="$(peer_template_args)"
if [ "$MODE" = prefix ]; then
  PEER_CTX=$PREFIX_PEER_CTX
  # shellcheck disable=SC2086 # word splitting wanted
  start_peer "$PEER_CTX" "$OUT/llama-server-prefix.log" $PREFIX_PEER_ARGS
else
  start_peer "$PEER_CTX" "$OUT/llama-server.log"
fi
wait_ok "$OURS/health/ready" "$OURS_PID"
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
OURS_RSS=""
PEER_RSS=""
if [ "$MODE" = full ] || [ "$MODE" = overhead ]; then
  echo "tiny requests: max_tokens 1, 5-token prompt, 64 keep-alive connections ..." >&2
  "$BIN" bench --url "$OURS" --compare "$PEER" --concurrency 64 --requests "$TINY_REQUESTS" \
    --prompt-tokens 5 --max-tokens 1 --no-stream --warmup 8 --json "$OUT/tiny.json" \
    | tee "$OUT/tiny.txt"
  # Before the prefix-cache workloads: the memory of the runs above.
  OURS_RSS="$(peak_rss_kib "$OURS_PID")"
  PEER_RSS="$(peak_rss_kib "$PEER_PID")"
fi

if [ "$MODE" = full ] || [ "$MODE" = connections ]; then
  # After the memory reading above, so that its row stays that of the runs before. Each pass
  # alternates the two servers level by level, as everywhere here.
  for on503 in immediate honor; do
    echo "many connections: ${CONN_LEVELS//,/, } keep-alive connections," \
      "${CONN_DURATION} s a level, 503s resent $on503 ..." >&2
    "$BIN" bench --url "$OURS" --compare "$PEER" --connections "$CONN_LEVELS" \
      --duration-s "$CONN_DURATION" --on-503 "$on503" --prompt-tokens 5 --max-tokens 1 \
      --no-stream --warmup 8 --json "$OUT/connections-$on503.json" \
      | tee "$OUT/connections-$on503.txt"
  done
fi

if [ "$MODE" = full ] || [ "$MODE" = prefix ]; then
  if [ "$PEER_CTX" != "$PREFIX_PEER_CTX" ]; then
    echo "restarting llama-server with -c $PREFIX_PEER_CTX for the prefix-cache workloads ..." >&2
    kill "$PEER_PID"
    wait "$PEER_PID" 2>/dev/null || true
    PEER_CTX=$PREFIX_PEER_CTX
    # shellcheck disable=SC2086 # word splitting wanted
    start_peer "$PEER_CTX" "$OUT/llama-server-prefix.log" $PREFIX_PEER_ARGS
  fi
  echo "shared prefix: one document, 4 concurrent clients, 32 requests, 8 new tokens ..." >&2
  "$BIN" bench --url "$OURS" --compare "$PEER" --workload shared-prefix --concurrency 4 \
    --requests 32 --max-tokens 8 --json "$OUT/shared-prefix.json" | tee "$OUT/shared-prefix.txt"
  echo "multi-turn: 4 conversations of 8 turns, 24 new tokens, 1 then 4 at once ..." >&2
  "$BIN" bench --url "$OURS" --compare "$PEER" --workload multi-turn --turns 8 \
    --concurrency 1,4 --requests 4 --max-tokens 24 --json "$OUT/multi-turn.json" \
    | tee "$OUT/multi-turn.txt"
fi
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
def errors(name, a, b):
    if sum(a["errors"].values()) + sum(b["errors"].values()):
        rows.append(f"| {name}: errors (ours / peer) | {a['errors']} | {b['errors']} | |")
def plain(name, ours, peer, fmt="{:.1f}"):
    rows.append(f"| {name} | {fmt.format(ours)} | {fmt.format(peer)} | |")
def cached(name, a, b):
    rows.append(f"| {name}: cached prompt tokens | {100 * a['cached_prompt_share']:.0f}% "
                f"| {100 * b['cached_prompt_share']:.0f}% | |")
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
        errors(f"{a['clients']} streams", a, b)
if mode in ("full", "overhead"):
    t = json.load(open(f"{out}/tiny.json"))
    a, b = t["levels"][0][0], t["levels"][1][0]
    row("tiny requests (64 conns): requests/s", a["request_throughput"], b["request_throughput"])
    row("tiny requests: latency p50, ms", a["e2el_ms"]["p50"], b["e2el_ms"]["p50"], lower_better=True)
    row("tiny requests: latency p99, ms", a["e2el_ms"]["p99"], b["e2el_ms"]["p99"], lower_better=True)
    row("tiny requests: TCP connections opened", a["connections_opened"], b["connections_opened"], "{:.0f}", lower_better=True)
    errors("tiny requests", a, b)
    row("peak RSS (VmHWM), MiB", int(ours_rss) / 1024, int(peer_rss) / 1024, lower_better=True)
if mode in ("full", "connections"):
    # Per pass, each server's levels by connections; the 64-connection peak is the better of
    # the two passes' 64-connection levels (no 503 is expected there, so they measure the same).
    passes = {}
    for on503 in ("immediate", "honor"):
        c = json.load(open(f"{out}/connections-{on503}.json"))
        passes[on503] = (c["workload"]["level_duration_s"],
                         *({l["clients"]: l for l in side} for side in c["levels"]))
    peak = [max(p[side][64]["answered_2xx_per_s"] for p in passes.values()) or 1e-9 for side in (1, 2)]
    for on503, (secs, ours, peer) in passes.items():
        for n in (256, 1000):
            a, b = ours[n], peer[n]
            name = f"{n} conns, 503 resent {on503}"
            row(f"{name} ({secs:g} s, max_tokens 1): 2xx requests/s", a["answered_2xx_per_s"], b["answered_2xx_per_s"])
            row(f"{name}: 2xx requests/s as % of own 64-conn peak",
                100 * a["answered_2xx_per_s"] / peak[0], 100 * b["answered_2xx_per_s"] / peak[1], "{:.0f}%")
            plain(f"{name}: 503s/s", a["refusals_per_s"], b["refusals_per_s"])
            row(f"{name}: answered p99, ms", a["e2el_ms"]["p99"], b["e2el_ms"]["p99"], lower_better=True)
            row(f"{name}: first send to answer p99, ms", a["first_send_to_answer_ms"]["p99"],
                b["first_send_to_answer_ms"]["p99"], lower_better=True)
            sock = lambda l: sum(v for k, v in l["errors"].items() if k != "http_503")
            plain(f"{name}: socket errors (not http_503)", sock(a), sock(b), "{:.0f}")
if mode in ("full", "prefix"):
    sp = json.load(open(f"{out}/shared-prefix.json"))
    a, b = sp["levels"][0][0], sp["levels"][1][0]
    tokens = a["prompt_tokens"] // max(a["completed"], 1)
    name = f"shared prefix ({a['clients']} clients, {a['completed']} / {b['completed']} requests of ~{tokens} tokens)"
    row(f"{name}: TTFT p50, ms", a["ttft_ms"]["p50"], b["ttft_ms"]["p50"], lower_better=True)
    row("shared prefix: TTFT p99, ms", a["ttft_ms"]["p99"], b["ttft_ms"]["p99"], lower_better=True)
    row("shared prefix: requests/s", a["request_throughput"], b["request_throughput"], "{:.2f}")
    cached("shared prefix", a, b)
    errors("shared prefix", a, b)
    mt = json.load(open(f"{out}/multi-turn.json"))
    for a, b in zip(*mt["levels"]):
        at_once = "1 conversation at a time" if a["clients"] == 1 else f"{a['clients']} conversations at once"
        name = f"multi-turn ({at_once})"
        for ta, tb in ((a["turns"][0], b["turns"][0]), (a["turns"][-1], b["turns"][-1])):
            row(f"{name}: turn-{ta['turn']} TTFT p50, ms", ta["ttft_ms"]["p50"], tb["ttft_ms"]["p50"], lower_better=True)
        cached(name, a, b)
        errors(name, a, b)
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
