//! Loading one model does not slow the streams of another: the inter-token latency of a
//! stream from model A, measured at the client, idle and while model B is loaded and unloaded
//! over and over on the `load-N` threads (both are the real default model, linked under two
//! names; B's file is in the page cache, so each load is the CPU side of a load: parsing,
//! the tokenizer, mapping and prefaulting ~250 MB).
//!
//! The bar: p99 within 1.5x of idle, asserted with 5 ms of slack (about one
//! scheduler tick), and the median within 1.25x. Three changes made it hold on 2 cores, where
//! it used to come out 1.1x to 2.1x (p99) and 1.35x to 1.62x (p50): a forward pass runs as a
//! team whose threads spin between its parallel loops (`src/team.rs`; rayon's idle workers
//! yielded, and every yield gave the core to the loader until the next tick), and the
//! loader's file work runs at `SCHED_IDLE` while the dispatchers it starts keep normal
//! priority (they used to inherit nice 19; checked here too). The third: every thread gets
//! a malloc arena of its own (`give_threads_their_own_malloc_arenas` in `src/server/mod.rs`).
//! glibc's 16 shared arenas let the `SCHED_IDLE` helper hold an arena lock while preempted,
//! and a thread sharing that arena (a stream's writer, or this test's own reader) waited for
//! the end of the forward pass: gaps of two passes, p99 ratios up to 1.95 in one run of five
//! (CI failed on 1.90); after it, 14 runs of 14 passed, with ratios of 0.85 to 1.19. The price of all this is
//! paid by the load, which gets the gaps between passes: 1.2 to 1.7 s while A streams
//! instead of 0.35 s. The figures are printed
//! (`cargo test --test models_itl -- --nocapture`).

mod common;
mod models_support;
mod server_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use models_support::*;
use serde_json::{json, Value};
use server_support::*;

const TOKENS: usize = 96;
const ROUNDS: usize = 2;

fn eog_bias(addr: SocketAddr) -> Value {
    let id = |text: &str| {
        let r = post(
            addr,
            "/tokenize",
            &json!({"model": "a", "prompt": text, "add_special_tokens": false}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["tokens"][0].as_u64().expect("id")
    };
    json!({ id("<eos>").to_string(): -100, id("<end_of_turn>").to_string(): -100 })
}

/// Gaps between consecutive token events of one stream from model `a`, in seconds.
fn stream_gaps(addr: SocketAddr, bias: &Value) -> Vec<f64> {
    let body = json!({
        "model": "a", "prompt": "Tell me a long story about the sea.", "max_tokens": TOKENS,
        "temperature": 0, "stream": true, "logit_bias": bias,
    });
    let mut c = Conn::open(addr);
    c.send("POST", "/v1/completions", &[], body.to_string().as_bytes());
    let (status, _, events) = c.read_sse();
    assert_eq!(status, 200);
    let times: Vec<Instant> = events
        .iter()
        .filter(|(_, e)| e.starts_with("data: {") && e.contains("\"text\""))
        .map(|(t, _)| *t)
        .collect();
    assert!(times.len() >= TOKENS / 2, "{} token events", times.len());
    // The first gap includes the prompt; skip it.
    times
        .windows(2)
        .skip(1)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect()
}

/// Nice value and scheduling policy (0: `SCHED_OTHER`) of each thread of this process
/// whose name starts with `prefix` (fields 19 and 41 of `/proc/self/task/N/stat`).
fn priorities_of_threads(prefix: &str) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        // Fields after the parenthesised name, which may hold spaces.
        let rest: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..]
            .split(' ')
            .collect();
        let field = |n: usize| rest[n - 3].parse::<i64>().expect("a number");
        out.push((comm.trim().to_string(), field(19), field(41)));
    }
    out
}

fn state_of(addr: SocketAddr, id: &str) -> String {
    let r = get(addr, &format!("/v1/models/{id}"));
    r.json()["state"].as_str().unwrap_or("").to_string()
}

#[test]
fn a_stream_keeps_its_pace_while_another_model_loads() {
    let d = TempDir::new("itl");
    d.link_default_model("a.gguf");
    d.link_default_model("b.gguf");
    let mut cfg = tiny_config();
    cfg.engine.n_ctx = 512;
    cfg.engine.max_batch_size = 4;
    cfg.engine.max_batch_tokens = 128;
    let s = serve_dir(d.path(), cfg);
    let addr = s.local_addr();
    assert_eq!(post(addr, "/v1/models/a/load", &json!({})).status, 202);
    assert!(eventually(Duration::from_secs(120), || state_of(addr, "a") == "loaded"));
    // The dispatcher is started by a loader thread; it must not inherit a loader's low
    // priority (it once ran at nice 19 and lost contended cores to its own compute threads).
    let dispatchers = priorities_of_threads("dispatch-a");
    assert_eq!(dispatchers.len(), 1, "{dispatchers:?}");
    assert_eq!(
        (dispatchers[0].1, dispatchers[0].2),
        (0, 0),
        "{dispatchers:?}"
    );
    let bias = eog_bias(addr);
    stream_gaps(addr, &bias); // warm-up

    let mut idle = Vec::new();
    let mut busy = Vec::new();
    let mut loads = 0;
    for _ in 0..ROUNDS {
        idle.extend(stream_gaps(addr, &bias));
        // B loads and unloads in a loop for as long as A's stream lasts.
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let churn = {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = post(addr, "/v1/models/b/load", &json!({}));
                    assert!(r.status == 202 || r.status == 200, "{}", r.text());
                    assert!(eventually(Duration::from_secs(60), || state_of(addr, "b") == "loaded"));
                    done.fetch_add(1, Ordering::Relaxed);
                    let r = post(addr, "/v1/models/b/unload", &json!({}));
                    assert!(r.status == 202 || r.status == 200, "{}", r.text());
                    assert!(eventually(Duration::from_secs(60), || state_of(addr, "b")
                        == "available"));
                }
            })
        };
        // Let the first load start before the stream.
        std::thread::sleep(Duration::from_millis(20));
        busy.extend(stream_gaps(addr, &bias));
        stop.store(true, Ordering::Relaxed);
        churn.join().expect("load loop");
        loads += done.load(Ordering::Relaxed);
    }
    let ms = |x: f64| x * 1e3;
    let (i50, i99) = (quantile(&idle, 0.5), quantile(&idle, 0.99));
    let (b50, b99) = (quantile(&busy, 0.5), quantile(&busy, 0.99));
    let page = get(addr, "/metrics").text();
    let load_s = metric(&page, "ryzanstein_model_load_seconds_sum").unwrap_or(0.0)
        / metric(&page, "ryzanstein_model_load_seconds_count").unwrap_or(1.0);
    eprintln!(
        "inter-token latency of model a (ms): idle p50 {:.1} p99 {:.1}; while b loads p50 {:.1} \
         p99 {:.1} (p99 ratio {:.2}); {loads} loads of b during {} streamed tokens, {:.0} ms \
         per load on average",
        ms(i50),
        ms(i99),
        ms(b50),
        ms(b99),
        b99 / i99,
        busy.len(),
        load_s * 1e3
    );
    assert!(loads >= ROUNDS, "b loaded during the streams: {loads}");
    let dispatchers = priorities_of_threads("dispatch-");
    assert!(
        dispatchers
            .iter()
            .all(|&(_, nice, policy)| nice == 0 && policy == 0),
        "{dispatchers:?}"
    );
    assert!(
        b50 <= i50 * 1.25 + 0.002,
        "p50 {:.1} ms while loading vs {:.1} ms idle",
        ms(b50),
        ms(i50)
    );
    assert!(
        b99 <= i99 * 1.5 + 0.005,
        "p99 {:.1} ms while loading vs {:.1} ms idle",
        ms(b99),
        ms(i99)
    );
    s.shutdown();
}
