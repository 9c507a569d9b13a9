#!/usr/bin/env bash
# Admission under many connections, with default settings (issue: admit by expected wait).
#
#   scripts/admission-check.sh [--model FILE] [--duration S] [--levels 64,256,1000]
#                              [--modes "immediate honor"] [--out DIR] [--port N]
#
# Starts `ryzanstein serve` on the model with no tuning flag, then for each client behaviour
# (`--on-503 immediate`: resend at once, as wrk does; `honor`: resend after Retry-After) runs
# closed-loop levels of keep-alive connections for a fixed time each, with short prompts
# (20 random token ids) and 1-16 new tokens per request (a seeded mix), whole answers. It
# prints, per level, 2xx requests/s and their share of the 64-connection level (the peak),
# 503s/s, socket errors (anything but a 503), and the p99 latency of answered requests against
# max_queue_wait_ms plus one request's service time (taken as the answered p99 at 64
# connections, where a request waits at most for one batch). Loopback only; the server is
# stopped by PID. Run on a quiet machine: the load generator shares the cores with the server.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${RYZANSTEIN_MODEL:-$HOME/.cache/ryzanstein/models/gemma-3-270m-q4_k_m.gguf}"
DURATION=20
LEVELS="64,256,1000"
MODES="immediate honor"
OUT="target/admission-check"
PORT=18391
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --levels) LEVELS="$2"; shift ;;
    --modes) MODES="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --port) PORT="$2"; shift ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) echo "admission-check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ -f "$MODEL" ] || { echo "admission-check.sh: no model file $MODEL (scripts/fetch-model.sh)" >&2; exit 2; }
case ",$LEVELS," in *,64,*) ;; *) echo "admission-check.sh: --levels must include 64 (the peak)" >&2; exit 2 ;; esac

cargo build --release --quiet
BIN=target/release/ryzanstein
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Prompts: 20 token ids each, max_tokens 1-16, seeded.
python3 - "$OUT/prompts.jsonl" <<'EOF'
import json, random, sys
rng = random.Random(25)
with open(sys.argv[1], "w") as f:
    for _ in range(4096):
        ids = [rng.randrange(100, 1000) for _ in range(20)]
        f.write(json.dumps({"prompt": ids, "max_tokens": rng.randint(1, 16)}) + "\n")
EOF

"$BIN" serve --model "$MODEL" --listen "127.0.0.1:$PORT" --log-level warn > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$PORT/health/ready" > /dev/null && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$OUT/server.log" >&2; exit 1; }
  sleep 0.1
done
MAX_WAIT_MS=$("$BIN" serve --print-config | sed -n 's/^max_queue_wait_ms = //p')

for mode in $MODES; do
  echo "== --on-503 $mode: connections $LEVELS, ${DURATION} s each ==" >&2
  "$BIN" bench --url "http://127.0.0.1:$PORT" --connections "$LEVELS" --duration-s "$DURATION" \
    --on-503 "$mode" --prompts "$OUT/prompts.jsonl" --no-stream --warmup 8 --timeout-s 300 \
    --json "$OUT/$mode.json" > "$OUT/$mode.txt"
done
curl -s "http://127.0.0.1:$PORT/metrics" > "$OUT/metrics.txt"

python3 - "$OUT" "$MAX_WAIT_MS" "$MODEL" $MODES <<'EOF'
import json, os, sys
out, max_wait_ms, model, modes = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]
print(f"model {os.path.basename(model)}; default settings (max_queue_wait_ms {max_wait_ms:.0f})")
print("| on 503 | connections | 2xx req/s | % of 64-conn peak | 503/s | socket errors | answered p99 ms | limit ms | verdict |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
failed = 0
for mode in modes:
    # One list of levels per server (a single server here).
    levels = json.load(open(f"{out}/{mode}.json"))["levels"][0]
    base = next(l for l in levels if l["clients"] == 64)
    peak = base["answered_2xx_per_s"]
    limit = max_wait_ms + base["e2el_ms"]["p99"]
    for l in levels:
        socket = sum(n for e, n in l["errors"].items() if e != "http_503")
        share = l["answered_2xx_per_s"] / peak if peak else 0.0
        p99 = l["e2el_ms"]["p99"]
        ok = share >= 0.9 and socket == 0 and p99 <= limit
        failed += not ok
        print(f"| {mode} | {l['clients']} | {l['answered_2xx_per_s']:.1f} | {100 * share:.0f}% | "
              f"{l['refusals_per_s']:.1f} | {socket} | {p99:.0f} | {limit:.0f} | {'ok' if ok else 'MISSED'} |")
print(f"{failed} level(s) missed the floor (>= 90% of the peak, no socket errors, p99 within the limit)")
EOF
