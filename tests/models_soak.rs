//! Soak: three models under a memory cap that fits two, loaded and evicted at least 200 times
//! while clients keep requesting all three. Every response is either the model's correct
//! answer or a 503 by design; resident memory comes back to within 10% of its level after
//! warm-up; threads and file descriptors do not grow.
//!
//! The models are tiny Gemma 3 files of ~4.5 MB each (different weights, so each has its own
//! answer), so 200 load/evict cycles take seconds; a leak of a model per cycle would be
//! hundreds of MB. The test runs alone in its binary, so the process's threads and
//! descriptors are the server's and the test's own.

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

const MODELS: [&str; 3] = ["a", "b", "c"];
const CYCLES: u64 = 200;
/// Evictions before the reference measurement: enough for the allocator to have made every
/// arena it will (each load starts a dispatcher thread; glibc gives threads up to 8 arenas
/// per core and keeps freed memory in them).
const WARM_UP: f64 = 100.0;
/// The whole soak gives up after this long (it takes well under a minute).
const TIME_MAX: Duration = Duration::from_secs(240);
/// Pad tensor per model: 1 Mi f32.
const PAD: usize = 1 << 20;

/// Tiny model number `k` (each answers differently).
fn model_bytes(k: usize) -> Vec<u8> {
    let mut m = tiny_model(PAD);
    // A strong, model-specific FFN: otherwise a random tiny model just repeats its last
    // prompt token, whatever its weights.
    for t in &mut m.tensors {
        if t.0.ends_with("post_ffw_norm.weight") {
            t.2.iter_mut().enumerate().for_each(|(i, x)| {
                *x = if i % 3 == k { -8.0 } else { 8.0 };
            });
        }
    }
    m.to_bytes()
}

fn body(model: &str) -> Value {
    json!({"model": model, "prompt": [3, 1, 4, 1, 5], "max_tokens": 6, "temperature": 0})
}

/// Outcome of one request: Ok(text) or Err(status) for a 503.
fn ask(c: &mut Conn, model: &str) -> Result<String, u16> {
    let r = c.post("/v1/completions", &body(model));
    match r.status {
        200 => Ok(r.json()["choices"][0]["text"].as_str().unwrap().to_string()),
        503 => {
            assert!(r.header("retry-after").is_some(), "503 without Retry-After");
            Err(503)
        }
        s => panic!("{model}: unexpected status {s}: {}", r.text()),
    }
}

fn evictions(addr: SocketAddr) -> f64 {
    metric(
        &get(addr, "/metrics").text(),
        "ryzanstein_model_evictions_total",
    )
    .unwrap_or(0.0)
}

#[test]
fn loads_and_evictions_under_a_memory_cap_do_not_leak() {
    let d = TempDir::new("soak");
    for (k, m) in MODELS.iter().enumerate() {
        d.write(&format!("{m}.gguf"), &model_bytes(k));
    }
    // What one model holds, from a first server without a cap.
    let (one, answers) = {
        let s = serve_dir(d.path(), tiny_config());
        let mut c = Conn::open(s.local_addr());
        let answers: Vec<String> = MODELS
            .iter()
            .map(|m| ask(&mut c, m).expect("loads"))
            .collect();
        let r = get(s.local_addr(), "/v1/models/a").json();
        s.shutdown();
        (r["loaded_bytes"].as_u64().expect("bytes"), answers)
    };
    assert!(
        answers[0] != answers[1] || answers[1] != answers[2],
        "the models should not all answer alike: {answers:?}"
    );
    let mut cfg = tiny_config();
    cfg.models.memory_max_bytes = one * 5 / 2;
    cfg.models.load_wait_ms = 2_000;
    let s = serve_dir(d.path(), cfg);
    let addr = s.local_addr();
    let (ok, unavailable) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let t0 = Instant::now();
    // Two clients: one cycles a, b, c; the other c, b, a — so loads meet leases and some
    // requests wait for room (503 by design when they wait too long). They run until the
    // registry has evicted `until` models in all, then stop, and the server goes idle.
    let run = |until: f64| {
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = [false, true]
            .into_iter()
            .map(|reverse| {
                let (stop, ok, unavailable) = (stop.clone(), ok.clone(), unavailable.clone());
                let answers = answers.clone();
                std::thread::spawn(move || {
                    let mut c = Conn::open(addr);
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let k = if reverse { 2 - n % 3 } else { n % 3 };
                        match ask(&mut c, MODELS[k]) {
                            Ok(text) => {
                                assert_eq!(text, answers[k], "model {} answered wrong", MODELS[k]);
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                unavailable.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        while evictions(addr) < until && t0.elapsed() < TIME_MAX {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().expect("client");
        }
        assert!(
            evictions(addr) >= until,
            "only {} evictions",
            evictions(addr)
        );
        // Idle again: the last two models used are loaded.
        std::thread::sleep(Duration::from_millis(300));
        (rss_bytes(), thread_count(), fd_count())
    };
    let (rss0, threads0, fds0) = run(WARM_UP);
    let (rss1, threads1, fds1) = run(WARM_UP + CYCLES as f64);
    let page = get(addr, "/metrics").text();
    let loads = metric(&page, "ryzanstein_model_loads_total{outcome=\"ok\"}").unwrap();
    let failed = metric(&page, "ryzanstein_model_loads_total{outcome=\"failed\"}").unwrap();
    let (bytes, n) = s.registry().loaded_bytes();
    eprintln!(
        "soak: {} evictions, {loads} loads in {:.1} s; {} answers correct, {} 503s; rss {:.1} -> \
         {:.1} MiB; threads {threads0} -> {threads1}; fds {fds0} -> {fds1}; {n} models hold \
         {bytes} bytes (cap {})",
        evictions(addr),
        t0.elapsed().as_secs_f64(),
        ok.load(Ordering::Relaxed),
        unavailable.load(Ordering::Relaxed),
        rss0 as f64 / (1 << 20) as f64,
        rss1 as f64 / (1 << 20) as f64,
        one * 5 / 2
    );
    assert_eq!(failed, 0.0);
    assert!(loads >= CYCLES as f64);
    assert!(ok.load(Ordering::Relaxed) as u64 >= CYCLES);
    assert!(n <= 2 && bytes <= one * 5 / 2, "{n} models, {bytes} bytes");
    assert!(
        (rss1 as f64) <= rss0 as f64 * 1.10,
        "resident memory grew from {rss0} to {rss1}"
    );
    assert!(
        threads1 <= threads0,
        "threads grew: {threads0} -> {threads1}"
    );
    assert!(fds1 <= fds0, "file descriptors grew: {fds0} -> {fds1}");
    s.shutdown();
}
