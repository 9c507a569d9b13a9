#!/usr/bin/env python3
"""Soak: mixed load on one `ryzanstein serve` for a bounded time, loopback only.

Standard library only. Run through scripts/soak.sh, which builds the release binary and finds
the default model. What it does, in order:

1. Starts the binary on 127.0.0.1 (port 0) with a models directory of symlinks: Gemma 3 270M
   (pinned, preloaded) and three tiny fixtures, under `models_max` = 3, so the three tiny
   models share two places and requests for them load and evict models all the time
   (without --gemma: the three tiny models under `models_max` = 2).
2. Probe: measures capacity quickly, as the completions per second of the request mix with
   PROBE_CONCURRENCY closed-loop clients.
3. Drives about --load-fraction (70%) of that capacity with Poisson arrivals of the same mix:
   streamed and whole completions on Gemma and on the tiny models, streams the client
   cancels by closing the connection after a few events, and now and then an admin unload
   of a tiny model (see `draw` for the shares).
4. Samples the server's resident memory (VmRSS), threads and open descriptors from /proc
   every --sample-s seconds.
5. Stops the arrivals, lets the requests in flight finish, sends SIGTERM and waits (bounded)
   for the exit code.

Every request is checked: 200 with a well-formed body (streams end with `data: [DONE]`) and,
as every request is greedy (temperature 0), the same text as the first answer to the same
request; or 503 with Retry-After (by design: a model loading or waiting for room past
load_wait_ms, a full queue). Anything else is an error.

Exit status 0 only if: no errors; resident memory after warm-up grew at most --rss-drift-max
(10%) from the first to the last window; threads and descriptors did not grow from the first
half of the run after warm-up to the second (beyond a small slack for connections that are
being replaced); models were loaded and evicted; the server exited 0 on SIGTERM.
"""

import argparse
import collections
import http.client
import json
import os
import queue
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

# Closed-loop clients of the capacity probe: enough to fill the batches of a 2-core server.
PROBE_CONCURRENCY = 16
# Completions the probe counts at least (after its ramp), time permitting.
PROBE_MIN = 30
# Client threads of the open-loop phase; arrivals that find all of them busy wait (and are
# counted as late).
WORKERS = 48
# Every socket operation of the client gives up after this long.
IO_TIMEOUT_S = 120
# Arrivals that may wait for a free client thread; past it the client sheds them (counted).
BACKLOG_MAX = 16
# Requests still running at the end get this long to finish.
DRAIN_S = 120
# Threads and descriptors may exceed their first-half maximum by this much in the second
# half: connections being replaced (a cancelled stream closes its connection and the client
# opens a new one) briefly hold one more thread and descriptor each. A leak per request would
# be thousands over a run.
THREADS_SLACK = 8
FDS_SLACK = 8

TINY_MODELS = ["tiny-llama", "qwen2-q4_k", "qwen3-q4_k"]
GEMMA_PROMPTS = [
    "The capital of France is",
    "Write one sentence about the sea.",
    "List three colours:",
    "Once upon a time, in a small village,",
    "The quick brown fox",
    "Water boils at",
    "A haiku about autumn:",
    "The best way to learn a language is",
]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the server


def models_dir(workdir, fixtures, gemma):
    """A models directory of symlinks plus its manifest; returns its path."""
    d = os.path.join(workdir, "models")
    os.makedirs(d, exist_ok=True)
    manifest = []
    if gemma:
        os.symlink(os.path.abspath(gemma), os.path.join(d, "gemma.gguf"))
        # Pinned: its ~250 MB mapping never leaves, so resident memory is comparable sample
        # to sample; a short context keeps its KV pool small.
        manifest.append(
            '[[model]]\nid = "gemma"\npath = "gemma.gguf"\npin = true\npreload = true\n'
            "priority = 10\nn_ctx = 1024\n"
        )
    for m in TINY_MODELS:
        os.symlink(os.path.join(os.path.abspath(fixtures), m + ".gguf"), os.path.join(d, m + ".gguf"))
        manifest.append(f'[[model]]\nid = "{m}"\npath = "{m}.gguf"\nn_ctx = 256\nmax_batch_size = 8\n')
    with open(os.path.join(d, "models.toml"), "w") as f:
        f.write("\n".join(manifest))
    return d


class Server:
    """The binary as a child process; its stderr goes to a file."""

    def __init__(self, binary, models, workdir, threads, models_max):
        self.log_path = os.path.join(workdir, "server.log")
        self.log_file = open(self.log_path, "w")
        args = [
            binary, "serve", "--listen", "127.0.0.1:0", "--models-dir", models,
            "--threads", str(threads), "--models-max", str(models_max), "--load-wait-ms", "5000",
            "--max-tokens-cap", "256",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RYZANSTEIN_")}
        env.pop("RUST_LOG", None)
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.log_file, env=env)
        self.pid = self.proc.pid
        self.port = self._wait_listening()

    def _wait_listening(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"soak: the server exited at start:\n{self.tail()}")
            with open(self.log_path) as f:
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", f.read())
            if m:
                return int(m.group(1))
            time.sleep(0.05)
        self.kill()
        raise SystemExit(f"soak: no 'listening' line within 60 s:\n{self.tail()}")

    def tail(self, n=20):
        with open(self.log_path) as f:
            return "".join(f.readlines()[-n:])

    def wait_ready(self, timeout_s=120):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if get(self.port, "/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"soak: not ready after {timeout_s} s:\n{self.tail()}")

    def terminate(self, timeout_s=60):
        """SIGTERM to our child; its exit code and how long it took (None: it hung)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None, timeout_s
        return code, time.monotonic() - t0

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def proc_sample(pid):
    """(rss bytes, threads, open descriptors) of `pid`, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024
        threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss, threads, fds
    except (OSError, AttributeError):
        return None


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT_S)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def metric(page, prefix):
    for line in page.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ----------------------------------------------------------------------------- the requests


class Outcome:
    OK, UNAVAILABLE, CANCELLED, ERROR = "200", "503", "cancelled", "error"


class Stats:
    """Every request's kind, outcome and latency; errors by description. Thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.latency = collections.defaultdict(list)
        self.errors = collections.Counter()
        self.answers = {}

    def record(self, kind, outcome, seconds, error=None):
        with self.lock:
            self.counts[(kind, outcome)] += 1
            if outcome == Outcome.OK:
                self.latency[kind].append(seconds)
            if error:
                self.errors[f"{kind}: {error}"[:200]] += 1

    def check_answer(self, key, text):
        """Greedy requests are deterministic: the first answer to `key` is the answer."""
        with self.lock:
            first = self.answers.setdefault(key, text)
        return first == text

    def total(self, outcome=None):
        with self.lock:
            return sum(n for (_, o), n in self.counts.items() if outcome in (None, o))


class Request:
    """One request of the mix."""

    def __init__(self, kind, model, body, cancel_after=None):
        self.kind, self.model, self.body, self.cancel_after = kind, model, body, cancel_after

    def key(self):
        b = dict(self.body)
        b.pop("stream", None)
        return json.dumps(b, sort_keys=True)


def draw(rng, gemma):
    """A request of the mix. With Gemma: 60% of arrivals go to it (25% streamed, 10% streams
    the client cancels, 25% whole), 40% to the tiny models; without, all to the tiny models.
    In both, about 0.5% are an admin unload of a tiny model."""
    x = rng.random() * 100
    if x > 99.5:
        return Request("admin_unload", rng.choice(TINY_MODELS), None)
    if gemma and x < 60:
        body = {"model": "gemma", "prompt": rng.choice(GEMMA_PROMPTS), "temperature": 0}
        if x < 25:
            return Request("gemma_stream", "gemma", {**body, "max_tokens": 32, "stream": True})
        if x < 35:
            # Cancelled by the client after a few events: it closes the connection.
            return Request("gemma_cancel", "gemma", {**body, "max_tokens": 128, "stream": True},
                           cancel_after=rng.randint(1, 4))
        return Request("gemma_whole", "gemma", {**body, "max_tokens": 16})
    model = rng.choice(TINY_MODELS)
    # The fixtures' vocabularies hold 1000 ordinary tokens (ids 0-999); few distinct prompts,
    # so that answers repeat and are compared.
    first, n = rng.randrange(8), rng.choice([4, 8, 16])
    prompt = [(first * 37 + 11 * i) % 1000 for i in range(n)]
    body = {"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0}
    y = rng.random()
    if y < 0.2:
        # Long enough that the close lands mid-stream.
        return Request("tiny_cancel", model, {**body, "max_tokens": 200, "stream": True},
                       cancel_after=rng.randint(1, 8))
    if y < 0.6:
        return Request("tiny_stream", model, {**body, "stream": True})
    return Request("tiny_whole", model, body)


class Client:
    """One keep-alive connection, replaced after a cancel or an error."""

    def __init__(self, port, stats):
        self.port, self.stats, self.conn = port, stats, None

    def _conn(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=IO_TIMEOUT_S)
        return self.conn

    def connect(self):
        """Opens the connection now (a GET /health on it), so the open-loop phase holds all
        its connections from its start and threads and descriptors are flat from then on."""
        c = self._conn()
        try:
            c.request("GET", "/health")
            c.getresponse().read()
        except (OSError, http.client.HTTPException):
            self.close()

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def run(self, req):
        t0 = time.monotonic()
        try:
            outcome, error = self._send(req)
        except (OSError, http.client.HTTPException) as e:
            self.close()
            outcome, error = Outcome.ERROR, f"{type(e).__name__}: {e}"
        self.stats.record(req.kind, outcome, time.monotonic() - t0, error)

    def _send(self, req):
        c = self._conn()
        if req.kind == "admin_unload":
            c.request("POST", f"/v1/models/{req.model}/unload", body=b"",
                      headers={"Content-Length": "0"})
            r = c.getresponse()
            r.read()
            # 200 not loaded, 202 unloading, 409 loading: all by design.
            return (Outcome.OK, None) if r.status in (200, 202, 409) else (
                Outcome.ERROR, f"unload status {r.status}")
        c.request("POST", "/v1/completions", body=json.dumps(req.body),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status == 503:
            body = r.read()
            if r.getheader("Retry-After") is None:
                return Outcome.ERROR, "503 without Retry-After"
            return Outcome.UNAVAILABLE, None
        if r.status != 200:
            body = r.read()[:120].decode(errors="replace")
            self.close()
            return Outcome.ERROR, f"status {r.status}: {body}"
        if req.body.get("stream"):
            return self._stream(req, r)
        v = json.loads(r.read())
        return self._check(req, v["choices"][0]["text"])

    def _stream(self, req, r):
        text, events, done = [], 0, False
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                done = True
                continue
            v = json.loads(data)
            for ch in v["choices"]:
                text.append(ch.get("text") or "")
            events += 1
            if req.cancel_after is not None and events >= req.cancel_after:
                # Close mid-stream: the server's next write fails and it cancels.
                self.close()
                return Outcome.CANCELLED, None
        if not done:
            self.close()
            return Outcome.ERROR, "stream ended without [DONE]"
        return self._check(req, "".join(text))

    def _check(self, req, text):
        if req.cancel_after is None and not self.stats.check_answer(req.key(), text):
            return Outcome.ERROR, "greedy answer differs from the first one"
        return Outcome.OK, None


# ----------------------------------------------------------------------------- the phases


def probe_capacity(port, stats, gemma, seconds, seed):
    """Completions per second of the mix with PROBE_CONCURRENCY closed-loop clients, counted
    after a ramp of a quarter of `seconds`; runs longer (up to 4x) until PROBE_MIN
    completions are counted. The clients finish their last request in the background."""
    stop = threading.Event()
    finished = []  # monotonic times of completed requests (list.append is atomic)

    def loop(i):
        rng = random.Random(seed * 1000 + i)
        c = Client(port, stats)
        while not stop.is_set():
            c.run(draw(rng, gemma))
            finished.append(time.monotonic())
        c.close()

    t0 = time.monotonic()
    for i in range(PROBE_CONCURRENCY):
        threading.Thread(target=loop, args=(i,), daemon=True).start()
    ramp_end = t0 + seconds / 4
    while True:
        time.sleep(0.2)
        now = time.monotonic()
        counted = sum(t >= ramp_end for t in finished)
        if now - t0 >= 4 * seconds or (now - t0 >= seconds and counted >= PROBE_MIN):
            break
    stop.set()
    return max(counted, 1) / (now - ramp_end)


def open_loop(port, stats, gemma, rate, until, seed, client):
    """Poisson arrivals at `rate`/s until `until` (monotonic), served by WORKERS threads.
    `client` counts what the client itself did not send as planned: arrivals shed because
    BACKLOG_MAX others already waited for a free client thread (the server was slower than
    the probe said: on a shared machine its CPU share varies), requests that started over
    1 s late, and arrivals still waiting at the end (not sent: after the end, only the
    requests in flight finish). Returns the client threads still busy after DRAIN_S."""
    q = queue.Queue()
    lock = threading.Lock()

    def count(what):
        with lock:
            client[what] += 1

    def worker():
        c = Client(port, stats)
        c.connect()
        while True:
            item = q.get()
            if item is None:
                break
            due, req = item
            now = time.monotonic()
            if now >= until:
                count("unsent")
                continue
            if now - due > 1.0:
                count("late")
            c.run(req)
            if c.conn is None:
                # Replace a connection closed by a cancel or an error at once, so the server
                # holds WORKERS connections all along and its descriptors and threads are
                # comparable sample to sample.
                c.connect()
        c.close()

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(WORKERS)]
    for w in workers:
        w.start()
    rng = random.Random(seed)
    t = time.monotonic()
    while t < until:
        t += rng.expovariate(rate)
        delay = t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        req = draw(rng, gemma)
        if q.qsize() >= BACKLOG_MAX:
            count("shed")
        else:
            q.put((t, req))
    for _ in workers:
        q.put(None)
    deadline = time.monotonic() + DRAIN_S
    for w in workers:
        w.join(timeout=max(0.1, deadline - time.monotonic()))
    return sum(w.is_alive() for w in workers)


class Sampler(threading.Thread):
    """(t, rss, threads, fds) of the server every `period` seconds."""

    def __init__(self, pid, period):
        super().__init__(daemon=True)
        self.pid, self.period, self.samples, self.stop = pid, period, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            s = proc_sample(self.pid)
            if s:
                self.samples.append((time.monotonic(), *s))
            self.stop.wait(self.period)


# ----------------------------------------------------------------------------- the verdict


def window_median(values, frac):
    n = max(3, int(len(values) * frac))
    return statistics.median(values[:n]), statistics.median(values[-n:])


def summarize(a, stats, samples, measure_from, capacity, rate, started, client, stuck,
              loads, evictions, exit_code, exit_s):
    mib = 1 << 20
    after = [s for s in samples if s[0] >= measure_from]
    failures = []
    probe_s, warm_s = phases(a.minutes)
    lines = [f"soak: {(time.monotonic() - started) / 60:.1f} min (probe {probe_s:.0f} s, then "
             f"warm-up {warm_s:.0f} s); capacity {capacity:.2f} req/s (the mix, "
             f"{PROBE_CONCURRENCY} closed-loop clients), driven at {rate:.2f} req/s "
             f"({a.load_fraction:.0%}, Poisson arrivals) by {WORKERS} client threads"]
    lines.append(f"requests: {stats.total()} in all: {stats.total(Outcome.OK)} ok, "
                 f"{stats.total(Outcome.UNAVAILABLE)} 503 (by design), "
                 f"{stats.total(Outcome.CANCELLED)} cancelled by the client, "
                 f"{stats.total(Outcome.ERROR)} errors")
    lines.append(f"client: {client['late']} requests started over 1 s late, {client['shed']} "
                 f"arrivals shed (backlog of {BACKLOG_MAX}), {client['unsent']} left unsent "
                 f"at the end")
    kinds = sorted({k for k, _ in stats.counts})
    for k in kinds:
        c = {o: stats.counts[(k, o)] for o in (Outcome.OK, Outcome.UNAVAILABLE, Outcome.CANCELLED, Outcome.ERROR)}
        lat = sorted(stats.latency[k])
        p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: float("nan"))
        lines.append(f"  {k:13} ok {c['200']:6}  503 {c['503']:5}  cancelled {c['cancelled']:5}  "
                     f"errors {c['error']:3}  latency p50 {p(0.5) * 1000:7.1f} ms  p99 {p(0.99) * 1000:7.1f} ms")
    for e, n in stats.errors.most_common(10):
        lines.append(f"  error x{n}: {e}")
    if stats.total(Outcome.ERROR):
        failures.append(f"{stats.total(Outcome.ERROR)} errors")
    lines.append(f"models: {loads:.0f} loads, {evictions:.0f} evictions")
    if evictions < 1:
        failures.append("no model was evicted: the mix did not exercise loads and evictions")
    if len(after) < 6:
        failures.append(f"only {len(after)} samples after warm-up")
    else:
        rss = [s[1] for s in after]
        first, last = window_median(rss, 0.1)
        drift = (last - first) / first
        lines.append(f"rss after warm-up: min {min(rss) / mib:.1f} MiB, max {max(rss) / mib:.1f} MiB; "
                     f"first-window median {first / mib:.1f}, last-window median {last / mib:.1f}: "
                     f"drift {drift:+.1%} (limit +{a.rss_drift_max:.0%}); {len(after)} samples "
                     f"every {a.sample_s:g} s")
        if drift > a.rss_drift_max:
            failures.append(f"resident memory drifted {drift:+.1%}")
        half = len(after) // 2
        for name, col, slack in (("threads", 2, THREADS_SLACK), ("fds", 3, FDS_SLACK)):
            v = [s[col] for s in after]
            early, late_max = max(v[:half]), max(v[half:])
            lines.append(f"{name}: min {min(v)}, max {max(v)}; max first half {early}, "
                         f"second half {late_max} (slack {slack})")
            if late_max > early + slack:
                failures.append(f"{name} grew from {early} to {late_max}")
    if stuck:
        failures.append(f"{stuck} client threads still busy {DRAIN_S} s after the end")
    lines.append(f"server: exit code {exit_code} {exit_s:.1f} s after SIGTERM")
    if exit_code != 0:
        failures.append(f"the server exited with {exit_code} on SIGTERM")
    lines.append("verdict: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    return "\n".join(lines), not failures


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", required=True, help="the ryzanstein binary")
    p.add_argument("--fixtures", required=True, help="tests/data/fixtures")
    p.add_argument("--gemma", help="Gemma 3 270M GGUF (else only the tiny models)")
    p.add_argument("--minutes", type=float, default=30.0, help="whole run, probe included")
    p.add_argument("--load-fraction", type=float, default=0.7, help="of the probed capacity")
    p.add_argument("--threads", type=int, default=2, help="the server's compute threads")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between /proc samples")
    p.add_argument("--rss-drift-max", type=float, default=0.10)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--samples-csv", help="write every /proc sample to this CSV file")
    return p.parse_args()


def phases(minutes):
    """(probe, warm-up) seconds for a run of `minutes`: short runs get short phases, but the
    warm-up lasts at least 45 s — resident memory rises by some 45 MiB in the first 30-40 s
    of the open-loop load, as concurrency first peaks (KV-pool pages and allocator arenas
    touched for the first time), then stays flat."""
    total = minutes * 60
    return min(60.0, max(8.0, total * 0.05)), min(300.0, max(45.0, total * 0.15))


def on_signal(signum, _frame):
    # Also when started in the background, where SIGINT is ignored: unwind, so that the
    # `finally` below stops the server.
    raise SystemExit(f"soak: signal {signum}: stopping")


def main():
    a = parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    started = time.monotonic()
    total_s = a.minutes * 60
    probe_s, warm_s = phases(a.minutes)
    with tempfile.TemporaryDirectory(prefix="ryz-soak-") as workdir:
        # One model fewer than the catalog holds: the tiny models keep evicting each other.
        models_max = len(TINY_MODELS) + bool(a.gemma) - 1
        server = Server(a.binary, models_dir(workdir, a.fixtures, a.gemma), workdir, a.threads,
                        models_max)
        try:
            server.wait_ready()
            log(f"soak: server pid {server.pid} on 127.0.0.1:{server.port}; probe {probe_s:.0f} s, "
                f"warm-up {warm_s:.0f} s, {a.minutes:g} min in all")
            sampler = Sampler(server.pid, a.sample_s)
            sampler.start()
            stats = Stats()
            capacity = probe_capacity(server.port, stats, bool(a.gemma), probe_s, a.seed)
            rate = capacity * a.load_fraction
            log(f"soak: capacity {capacity:.2f} req/s; driving {rate:.2f} req/s")
            measure_from = time.monotonic() + warm_s
            client = collections.Counter()
            stuck = open_loop(server.port, stats, bool(a.gemma), rate, started + total_s,
                              a.seed + 1, client)
            page = get(server.port, "/metrics")[1].decode()
            loads = metric(page, 'ryzanstein_model_loads_total{outcome="ok"}')
            evictions = metric(page, "ryzanstein_model_evictions_total")
            sampler.stop.set()
            sampler.join()
            code, exit_s = server.terminate()
        finally:
            server.kill()
        text, ok = summarize(a, stats, sampler.samples, measure_from, capacity, rate, started,
                             client, stuck, loads, evictions, code, exit_s)
        print(text, flush=True)
        if a.samples_csv:
            with open(a.samples_csv, "w") as f:
                f.write("seconds,rss_bytes,threads,fds\n")
                for t, rss, th, fd in sampler.samples:
                    f.write(f"{t - started:.1f},{rss},{th},{fd}\n")
        if not ok:
            log("soak: server log tail:\n" + server.tail())
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
