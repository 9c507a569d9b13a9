#!/usr/bin/env python3
"""A/B of the prefix cache's wait for in-flight blocks (docs/BENCHMARKS.md, "Prefix cache").

    scripts/prefix-wait-ab.py [--binary target/release/ryzanstein] [--model FILE] [--rounds 3]

Starts the server twice on loopback, once as shipped (a prompt whose next block another
running sequence is computing waits for it) and once with RYZANSTEIN_PREFIX_WAIT=0 (such
prompts compute it side by side), alternating A, B, A, B. Each round sends 4 streamed
requests at once that share a new ~1,100-token document (a different document every round)
and differ in their question, and prints the wall time of the round and each request's time
to first token. Standard library only; the servers are stopped by PID.
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import threading
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ttft(port, prompt):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = json.dumps({"prompt": prompt, "max_tokens": 8, "temperature": 0, "stream": True})
    t0 = time.monotonic()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    first = None
    while True:
        line = r.readline()
        if not line:
            break
        if first is None and line.startswith(b"data: ") and b'"text"' in line:
            first = time.monotonic() - t0
    return first


def run_server(binary, model, wait, rounds, tag):
    port = free_port()
    env = dict(os.environ, RYZANSTEIN_PREFIX_WAIT="1" if wait else "0")
    p = subprocess.Popen([binary, "serve", "-m", model, "--listen", f"127.0.0.1:{port}", "-t", "2"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/health/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        walls, ttfts = [], []
        for rnd in range(rounds):
            doc = " ".join(f"Round {tag}.{rnd} item {i}: the parcel weighs {i * 13 % 97} grams "
                           f"and goes to dock {i % 11}." for i in range(75))
            out = {}

            def one(i):
                out[i] = ttft(port, doc + f"\nQuestion {i}: which dock gets item {i * 5}?\nAnswer:")

            ts = [threading.Thread(target=one, args=(i,)) for i in range(4)]
            t0 = time.monotonic()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            walls.append(time.monotonic() - t0)
            ttfts += [out[i] for i in range(4)]
        return statistics.mean(walls), statistics.median(ttfts)
    finally:
        p.terminate()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/ryzanstein")
    ap.add_argument("--model", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    model = a.model or subprocess.check_output(["scripts/fetch-model.sh"], text=True).strip()
    print("| setting | round wall time, mean (s) | TTFT median (s) |")
    print("|---|---:|---:|")
    for k, wait in enumerate([True, False, True, False]):
        wall, t = run_server(a.binary, model, wait, a.rounds, k)
        name = "wait (default)" if wait else "side by side (RYZANSTEIN_PREFIX_WAIT=0)"
        print(f"| {name} | {wall:.2f} | {t:.2f} |")


if __name__ == "__main__":
    main()
