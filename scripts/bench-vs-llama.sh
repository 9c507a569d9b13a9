#!/usr/bin/env bash
# Prefill and decode speed of ryzanstein beside llama.cpp's llama-bench, same file, same
# threads, in one run: the two alternate for ROUNDS rounds and the table reports the mean of
# each and the ratio. Usage: scripts/bench-vs-llama.sh [THREADS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${1:-2}"
ROUNDS="${2:-2}"
MODEL="$(scripts/fetch-model.sh)"
PEER_BIN="$(scripts/build-llama-cpp.sh)"
cargo build --release --quiet
OUT="$(mktemp -d)"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS: llama-bench" >&2
  "$PEER_BIN/llama-bench" -m "$MODEL" -t "$THREADS" -p 512 -n 128 -r 3 -o json > "$OUT/llama-$round.json" 2>/dev/null
  echo "round $round/$ROUNDS: ryzanstein bench-model" >&2
  target/release/ryzanstein bench-model -m "$MODEL" -t "$THREADS" -p 512 -n 128 -r 3 --json > "$OUT/ours-$round.json"
done
python3 - "$OUT" "$ROUNDS" "$THREADS" <<'PYEOF'
import json, sys, statistics, subprocess, platform
out, rounds, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ll = {"pp": [], "tg": []}
us = {"pp": [], "tg": []}
build = ""
for r in range(1, rounds + 1):
    for t in json.load(open(f"{out}/llama-{r}.json")):
        kind = "pp" if t["n_prompt"] > 0 else "tg"
        ll[kind].append(t["avg_ts"])
        build = t.get("build_commit", build)
    o = json.load(open(f"{out}/ours-{r}.json"))
    us["pp"].append(o["prefill_tokens_per_s"])
    us["tg"].append(o["decode_tokens_per_s"])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"CPU: {cpu}; threads: {threads}; rounds: {rounds} (each: llama-bench -r 3, then bench-model -r 3)")
print(f"ryzanstein commit: {commit}; llama.cpp: the copy vendored in llama-cpp-python {__import__('os').environ.get('LLAMA_CPP_PYTHON_VERSION', '0.3.36')} (build id: {build})")
print()
print("| test | llama.cpp tokens/s | ryzanstein tokens/s | ratio |")
print("|---|---:|---:|---:|")
for kind, name in (("pp", "prefill pp512"), ("tg", "decode tg128")):
    a, b = statistics.mean(ll[kind]), statistics.mean(us[kind])
    print(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f}× |")
PYEOF
