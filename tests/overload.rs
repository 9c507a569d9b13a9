//! Overload over loopback, on the default model and on the tiny Llama fixture. Closed-loop
//! phases measure the sustainable rate (the peak); open-loop phases send Poisson arrivals at
//! four times it. The two kinds alternate, several rounds each, so both see the same machine:
//! these machines are shared, and their speed drifts by a fifth within seconds. Excess
//! requests must get 503 + Retry-After fast, admitted ones must be correct, and goodput must
//! hold. Prints what it measured.
//!
//! On the default model, with both cores computing, goodput holds 90% of the peak: its steps
//! last tens of milliseconds and a request seconds, so refusals are a small share of the
//! work. The tiny model is the hard case, a request there costing little more than a refusal.
//! Its goodput depends on whether the engine leaves a core to the HTTP edge. With one compute
//! thread on the 2-core machine it stays at 100% of the peak. With both cores computing, each
//! refusal wakes a connection thread (and, here, a client thread) that takes a core from one
//! compute thread mid-step, and the other waits for it at the step's next join: on the tiny
//! model, whose steps last about two milliseconds, goodput is then 80-95% of the peak, and
//! the test asserts only that it does not collapse (`docs/OPERATIONS.md` § Overload).

mod common;
mod server_support;

use std::net::SocketAddr;
use std::ops::AddAssign;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ryzanstein::config::ServeConfig;
use ryzanstein::server::Server;
use serde_json::{json, Value};
use server_support::*;

/// Closed-loop clients for the peak: below `max_concurrent_requests` (64), above
/// `max_batch_size` (32), so the batch stays full and nothing is refused.
const PEAK_CLIENTS: usize = 48;
const OVERLOAD_FACTOR: f64 = 4.0;
/// Sender threads of the open loop: enough for every admitted request (the running batch
/// and `max_queue_wait_ms` of queue at the peak) plus the refused ones in flight at once.
const SENDERS: usize = 400;

/// One workload: the request every client sends, and how long its phases run.
struct Load {
    body: Value,
    max_tokens: u64,
    /// The text every admitted answer must have (greedy, so the same alone or in a batch).
    expected: String,
    rounds: u64,
    phase_s: f64,
    /// The server's `max_queue_wait_ms`: short enough that a phase at four times the peak is
    /// mostly refused (the open loop's senders keep up with the arrivals only while what is
    /// admitted stays short), long enough for the closed loop's burst of half again the batch
    /// (its last requests wait for the first wave to end: same-length requests started
    /// together end together; on the default model with debug assertions, seconds).
    max_queue_wait_ms: u64,
    /// Rates are counted from this far into a phase: the batch (re)fills (a phase starts with
    /// the previous one drained).
    edge_s: f64,
}

/// One answer as the client saw it.
struct Outcome {
    status: u16,
    /// The body of a refusal (for the assertion messages).
    refusal: Option<String>,
    latency: Duration,
    retry_after: Option<String>,
    /// A 200 whose text, finish reason and usage are the expected ones.
    correct: bool,
}

fn send(c: &mut Conn, load: &Load) -> Outcome {
    let start = Instant::now();
    let r = c.post("/v1/completions", &load.body);
    let correct = r.status == 200 && {
        let v = r.json();
        let c = &v["choices"][0];
        c["text"] == load.expected.as_str()
            && c["finish_reason"] == "length"
            && v["usage"]["completion_tokens"] == load.max_tokens
    };
    Outcome {
        refusal: (r.status == 503).then(|| r.text()),
        status: r.status,
        latency: start.elapsed(),
        retry_after: r.header("retry-after").map(str::to_string),
        correct,
    }
}

/// Requests' worth of tokens the engine sampled over some seconds.
#[derive(Clone, Copy, Default)]
struct Window {
    requests: f64,
    seconds: f64,
}

impl Window {
    /// Goodput in requests per second. Every admitted request runs to exactly `max_tokens`
    /// tokens and is checked, so every token is useful. Counting completions instead is
    /// coarse: same-length requests admitted together end together, so a window holds a
    /// whole number of such waves (the figure moved by a third run to run).
    fn rate(&self) -> f64 {
        self.requests / self.seconds
    }
}

impl AddAssign for Window {
    fn add_assign(&mut self, w: Window) {
        self.requests += w.requests;
        self.seconds += w.seconds;
    }
}

/// The engine's sampled-token counter read `load.edge_s` after `t0` and `end_s` after it.
fn window(addr: SocketAddr, load: &Load, t0: Instant, end_s: f64) -> Window {
    let at = |s: f64| {
        let wake = t0 + Duration::from_secs_f64(s);
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        let page = get(addr, "/metrics").text();
        let tokens = metric(&page, "ryzanstein_engine_generated_tokens_total")
            .expect("the engine's token counter");
        (tokens, t0.elapsed().as_secs_f64())
    };
    let (n0, s0) = at(load.edge_s.min(end_s / 4.0));
    let (n1, s1) = at(end_s);
    Window {
        requests: (n1 - n0) / load.max_tokens as f64,
        seconds: s1 - s0,
    }
}

/// `clients` closed-loop clients for `seconds`; every answer must be correct.
fn closed_loop(addr: SocketAddr, load: &Load, clients: usize, seconds: f64) -> Window {
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(seconds);
    std::thread::scope(|s| {
        let w = s.spawn(|| window(addr, load, t0, seconds));
        for _ in 0..clients {
            s.spawn(|| {
                let mut c = Conn::open(addr);
                while Instant::now() < end {
                    let o = send(&mut c, load);
                    if !o.correct {
                        let page = get(addr, "/metrics").text();
                        let admission: Vec<&str> = page
                            .lines()
                            .filter(|l| l.starts_with("ryzanstein_admission_"))
                            .collect();
                        panic!(
                            "closed loop: status {} {:?}\n{}",
                            o.status,
                            o.refusal,
                            admission.join("\n")
                        );
                    }
                }
            });
        }
        w.join().unwrap()
    })
}

/// Poisson arrival offsets at `rate` per second over `seconds`.
fn arrivals(rate: f64, seconds: f64, seed: u64) -> Vec<Duration> {
    let mut rng = common::Rng(seed);
    let mut t = 0.0f64;
    let mut out = Vec::new();
    loop {
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        t += -(1.0 - u).ln() / rate;
        if t >= seconds {
            return out;
        }
        out.push(Duration::from_secs_f64(t));
    }
}

/// What one open-loop phase saw.
struct OpenLoop {
    outcomes: Vec<Outcome>,
    /// How late the latest send was.
    late: Duration,
    window: Window,
}

/// Sends one request at each arrival time, spread over `SENDERS` threads, each with its own
/// keep-alive connection, over `seconds`.
fn open_loop(addr: SocketAddr, load: &Load, due: &[Duration], seconds: f64) -> OpenLoop {
    let next = AtomicUsize::new(0);
    let outcomes = Mutex::new(Vec::with_capacity(due.len()));
    let late = Mutex::new(Duration::ZERO);
    let t0 = Instant::now();
    let window = std::thread::scope(|s| {
        let w = s.spawn(|| window(addr, load, t0, seconds));
        for _ in 0..SENDERS {
            s.spawn(|| {
                let mut c: Option<Conn> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(at) = due.get(i) else { break };
                    let now = t0.elapsed();
                    match at.checked_sub(now) {
                        Some(wait) => std::thread::sleep(wait),
                        None => {
                            let mut l = late.lock().unwrap();
                            *l = (*l).max(now - *at);
                        }
                    }
                    let conn = c.get_or_insert_with(|| Conn::open(addr));
                    let o = send(conn, load);
                    if o.status == 503 {
                        // Arrivals are independent clients: the next one must not inherit
                        // this refusal (the server holds a resend on a refused connection
                        // until its Retry-After).
                        c = None;
                    }
                    outcomes.lock().unwrap().push(o);
                }
            });
        }
        w.join().unwrap()
    });
    OpenLoop {
        outcomes: outcomes.into_inner().unwrap(),
        late: late.into_inner().unwrap(),
        window,
    }
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the alternating phases against `server`, checks every answer, prints the figures;
/// returns (peak, goodput) in requests per second.
fn overload(server: &Server, name: &str, mut load: Load) -> (f64, f64) {
    let addr = server.local_addr();
    load.expected = {
        let r = post(addr, "/v1/completions", &load.body);
        assert_eq!(r.status, 200);
        r.json()["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let load = &load;
    // Warm-up; then an open-loop warm-up, which (like a real server's first burst) starts the
    // connection threads.
    let first = closed_loop(addr, load, PEAK_CLIENTS, load.phase_s).rate();
    open_loop(addr, load, &arrivals(OVERLOAD_FACTOR * first, 1.0, 1), 1.0);

    let (mut peak, mut over) = (Window::default(), Window::default());
    let mut outcomes = Vec::new();
    let mut late = Duration::ZERO;
    let mut sent_rate = 0.0;
    for round in 0..load.rounds {
        let p = closed_loop(addr, load, PEAK_CLIENTS, load.phase_s);
        peak += p;
        // Four times the peak as measured so far.
        let rate = OVERLOAD_FACTOR * peak.rate();
        sent_rate += rate / load.rounds as f64;
        let due = arrivals(rate, load.phase_s, 7 + round);
        let o = open_loop(addr, load, &due, load.phase_s);
        assert_eq!(o.outcomes.len(), due.len());
        eprintln!(
            "{name} round {round}: peak {:.1} req/s, goodput {:.1} req/s",
            p.rate(),
            o.window.rate()
        );
        over += o.window;
        outcomes.extend(o.outcomes);
        late = late.max(o.late);
    }
    let (peak, goodput) = (peak.rate(), over.rate());

    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 200).collect();
    let refused: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 503).collect();
    let other = outcomes.len() - ok.len() - refused.len();
    let wrong = ok.iter().filter(|o| !o.correct).count();
    let refused_ms: Vec<f64> = refused.iter().map(|o| ms(o.latency)).collect();
    let ok_ms: Vec<f64> = ok.iter().map(|o| ms(o.latency)).collect();
    let (p50, p99, max) = (
        quantile(refused_ms.clone(), 0.5),
        quantile(refused_ms.clone(), 0.99),
        quantile(refused_ms, 1.0),
    );
    eprintln!(
        "{name}: peak {peak:.1} req/s (closed loop, {PEAK_CLIENTS} clients, {} tokens each); \
         open loop at {sent_rate:.1} req/s ({:.1}x the peak), {} x {} s: {} sent (latest send \
         {:.1} ms late), {} ok, {} refused 503, {other} other, {wrong} wrong; goodput \
         {goodput:.1} req/s = {:.0}% of the peak (both from the engine's token counter, {} \
         phases each, counted from {} s into each); 503 at the client p50 {p50:.2} ms p99 \
         {p99:.2} ms max {max:.2} ms; admitted p50 {:.0} ms p99 {:.0} ms",
        load.max_tokens,
        sent_rate / peak,
        load.rounds,
        load.phase_s,
        outcomes.len(),
        ms(late),
        ok.len(),
        refused.len(),
        100.0 * goodput / peak,
        load.rounds,
        load.edge_s,
        quantile(ok_ms.clone(), 0.5),
        quantile(ok_ms, 0.99),
    );
    assert_eq!(other, 0, "only 200s and 503s");
    assert_eq!(wrong, 0, "every admitted request is answered correctly");
    // Each open-loop phase starts drained, so it admits a full house of
    // `max_concurrent_requests`, what the peak serves in the phase and a queue of
    // `max_queue_wait` at the peak; the rest of what it is sent should be refused (at least
    // three quarters of that, to allow for noise).
    let cap = ServeConfig::default().limits.max_concurrent_requests as f64;
    let queue_s = max_queue_wait_ms(load) as f64 / 1e3;
    let admissible = load.rounds as f64 * (cap + peak * (load.phase_s + queue_s));
    let expected_refused = (outcomes.len() as f64 - admissible).max(0.0);
    assert!(
        refused.len() as f64 >= 0.75 * expected_refused && !refused.is_empty(),
        "an overload is refused: {} refused of {} sent, about {expected_refused:.0} expected",
        refused.len(),
        outcomes.len()
    );
    // Retry-After: when the wait would fit again, in whole seconds.
    assert!(refused.iter().all(|o| o
        .retry_after
        .as_deref()
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|s| (1..=60).contains(&s))));
    assert!(p99 < 10.0, "503s p99 {p99:.2} ms");
    // Nothing is left running, and the server still serves.
    let page = get(addr, "/metrics").text();
    assert_eq!(metric(&page, "ryzanstein_requests_in_flight"), Some(0.0));
    assert_eq!(metric(&page, "ryzanstein_handler_panics_total"), Some(0.0));
    assert!(closed_loop(addr, load, 4, 1.0).rate() > 0.0);
    (peak, goodput)
}

/// The queue-wait limit of a load's server (`Load::max_queue_wait_ms`).
fn max_queue_wait_ms(load: &Load) -> u64 {
    load.max_queue_wait_ms
}

/// The two tests share the machine's two cores: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn tiny_load() -> Load {
    Load {
        body: json!({"prompt": [1000, 870, 897, 124, 390, 897, 832, 285], "max_tokens": 128,
                     "ignore_eos": true, "temperature": 0}),
        max_tokens: 128,
        expected: String::new(),
        rounds: 6,
        phase_s: 2.0,
        max_queue_wait_ms: 500,
        edge_s: 0.3,
    }
}

/// Runs the tiny model's overload with `compute_threads` and asserts goodput of at least
/// `floor` times the peak.
fn goodput_holds(compute_threads: usize, floor: f64) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cfg = test_config();
    cfg.engine.n_ctx = 256;
    cfg.engine.max_queue_wait_ms = max_queue_wait_ms(&tiny_load());
    cfg.threads = compute_threads;
    let server = start_tiny(cfg);
    let name = format!("{compute_threads} compute thread(s)");
    let (peak, goodput) = overload(&server, &name, tiny_load());
    assert!(
        goodput >= floor * peak,
        "goodput {goodput:.1} req/s < {:.0}% of the peak {peak:.1}",
        floor * 100.0
    );
    server.shutdown();
}

/// The default model (Gemma 3 270M): 20-token prompts of word pieces, 16 new tokens. Its
/// steps last tens of milliseconds, so refusals are a small share of the work, as on a
/// production model. A request lasts seconds here, so phases are long enough to hold several:
/// otherwise the closed loop's window holds only its first wave decoding, with no prompt in
/// it, and overstates the peak.
fn gemma_load() -> Load {
    let prompt: Vec<u32> = (0..20).map(|i| 1000 + 1237 * i).collect();
    Load {
        body: json!({"prompt": prompt, "max_tokens": 16, "ignore_eos": true, "temperature": 0}),
        max_tokens: 16,
        expected: String::new(),
        rounds: 3,
        phase_s: 10.0,
        max_queue_wait_ms: 15_000,
        edge_s: 3.0,
    }
}

#[test]
fn on_the_default_model_with_every_core_computing_goodput_holds_90_percent_at_four_times_the_peak()
{
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cfg = test_config();
    cfg.engine.n_ctx = 256;
    cfg.engine.max_queue_wait_ms = max_queue_wait_ms(&gemma_load());
    cfg.threads = 2;
    let server = start(cfg, false);
    let (peak, goodput) = overload(&server, "default model, 2 compute threads", gemma_load());
    assert!(
        goodput >= 0.9 * peak,
        "goodput {goodput:.1} req/s < 90% of the peak {peak:.1}"
    );
    server.shutdown();
}

#[test]
fn with_a_core_left_to_the_http_edge_goodput_holds_90_percent_at_four_times_the_peak() {
    goodput_holds(1, 0.9);
}

#[test]
fn with_every_core_computing_four_times_the_peak_is_refused_fast_and_goodput_does_not_collapse() {
    // 80-95% on the 2-core machine: see the module's documentation.
    goodput_holds(2, 0.7);
}
