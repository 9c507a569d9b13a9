//! The server under concurrency, over real sockets: 32 concurrent streams give exactly what
//! each request gives alone (batch invariance over HTTP), a client that disconnects frees its
//! KV memory, overload is a fast 503, keep-alive reuse is counted.

mod common;
mod server_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server_support::*;

/// Everything that must not depend on the batch: text, finish, usage and log-probs, per choice.
fn outcome(events: &[Value]) -> Value {
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut finish = Value::Null;
    let mut usage = Value::Null;
    for e in events {
        if let Some(u) = e.get("usage") {
            usage = u.clone();
        }
        let Some(c) = e["choices"].get(0) else {
            continue;
        };
        text.push_str(c["text"].as_str().unwrap_or(""));
        if let Some(l) = c["logprobs"].as_object() {
            for (i, t) in l["tokens"].as_array().unwrap().iter().enumerate() {
                tokens.push(json!([t, l["token_logprobs"][i], l["top_logprobs"][i]]));
            }
        }
        if !c["finish_reason"].is_null() {
            finish = c["finish_reason"].clone();
        }
    }
    json!({"text": text, "tokens": tokens, "finish": finish, "usage": usage})
}

fn stream_outcome(addr: SocketAddr, body: &Value) -> Value {
    let mut c = Conn::open(addr);
    c.send("POST", "/v1/completions", &[], body.to_string().as_bytes());
    let (status, _, events) = c.read_sse();
    assert_eq!(status, 200);
    outcome(&data_events(&events))
}

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Once upon a time, in a quiet forest, a little fox",
    "def fibonacci(n):",
    "List three colours:",
    "In 1969, the first humans",
    "The quick brown fox jumps over",
    "My favourite food is",
    "Water boils at",
];

fn body(i: usize) -> Value {
    let mut b = json!({"prompt": PROMPTS[i % 8], "max_tokens": 16, "stream": true,
                       "stream_options": {"include_usage": true}, "logprobs": 2});
    if i.is_multiple_of(2) {
        b["temperature"] = json!(0);
    } else {
        b["temperature"] = json!(0.9);
        b["top_k"] = json!(40);
        b["seed"] = json!(1000 + i as u64 % 8);
    }
    b
}

#[test]
fn thirty_two_concurrent_streams_match_each_request_alone() {
    let mut cfg = test_config();
    cfg.engine.max_batch_size = 32;
    let server = start(cfg, false);
    let addr = server.local_addr();
    let alone: Vec<Value> = (0..8).map(|i| stream_outcome(addr, &body(i))).collect();
    let t0 = Instant::now();
    let handles: Vec<_> = (0..32)
        .map(|i| std::thread::spawn(move || (i, stream_outcome(addr, &body(i)))))
        .collect();
    for h in handles {
        let (i, got) = h.join().expect("client thread");
        assert_eq!(
            got,
            alone[i % 8],
            "request {i} differs from the same request alone"
        );
    }
    let page = get(addr, "/metrics").text();
    let steps = metric(&page, "ryzanstein_batch_size_sequences_count{").unwrap();
    let small = metric(
        &page,
        "ryzanstein_batch_size_sequences_bucket{model=\"gemma-3-270m-q4_k_m\",le=\"4\"}",
    )
    .unwrap();
    eprintln!(
        "32 concurrent streams in {:?}; {} of {steps} steps carried more than 4 sequences",
        t0.elapsed(),
        steps - small
    );
    assert!(
        small < steps,
        "no step batched more than 4 sequences:\n{page}"
    );
    server.shutdown();
}

fn kv_used(addr: SocketAddr) -> (f64, f64) {
    let page = get(addr, "/metrics").text();
    (
        metric(&page, "ryzanstein_kv_cache_bytes_used{").unwrap(),
        metric(&page, "ryzanstein_sequences_running{").unwrap(),
    )
}

#[test]
fn a_client_that_disconnects_frees_its_sequence() {
    let server = start(test_config(), false);
    let addr = server.local_addr();
    let mut c = Conn::open(addr);
    let b = json!({"prompt": "Tell me a very long story.", "max_tokens": 400, "stream": true,
                   "temperature": 0, "logit_bias": {"1": -100, "106": -100}});
    c.send("POST", "/v1/completions", &[], b.to_string().as_bytes());
    let _ = c.read_head();
    for _ in 0..3 {
        c.read_chunk().expect("an event");
    }
    let (used, running) = kv_used(addr);
    assert!(
        used > 0.0 && running == 1.0,
        "generating: {used} bytes, {running} running"
    );
    let t0 = Instant::now();
    drop(c);
    loop {
        let (used, running) = kv_used(addr);
        if used == 0.0 && running == 0.0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "KV not freed after a disconnect: {used} bytes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("KV freed {:?} after the disconnect", t0.elapsed());
    let page = get(addr, "/metrics").text();
    assert_eq!(
        metric(&page, "ryzanstein_client_disconnects_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&page, "ryzanstein_sequences_cancelled_total{"),
        Some(1.0)
    );
    assert!(metric(&page, "ryzanstein_generation_tokens_total").unwrap() < 400.0);
    server.shutdown();
}

/// Two long streams fill the two slots of an engine whose queue wait is capped at 200 ms: a
/// third request would wait seconds, and is refused on its connection's thread at once with
/// the Retry-After of when it would fit. Resent at once on the same connection, it is held
/// until then.
#[test]
fn overload_is_a_fast_503_with_retry_after() {
    let mut cfg = test_config();
    cfg.engine.max_batch_size = 2;
    cfg.engine.max_queue_wait_ms = 200;
    cfg.api_key = Some("k-cap".into());
    let server = start(cfg, false);
    let addr = server.local_addr();
    let key = "Authorization: Bearer k-cap";
    let long = json!({"prompt": "Tell me a story.", "max_tokens": 300, "stream": true,
                      "temperature": 0, "logit_bias": {"1": -100, "106": -100}});
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut c = Conn::open(addr);
        c.send(
            "POST",
            "/v1/completions",
            &[key],
            long.to_string().as_bytes(),
        );
        let _ = c.read_head();
        busy.push(c);
    }
    // A few steps, so the engine has measured what one costs.
    std::thread::sleep(Duration::from_millis(300));
    // A refusal is answered on the connection's own thread (routes::early), through the same
    // checks as on a worker: a missing key is still a 401, not a 503.
    let hi = json!({"prompt": "Hi", "max_tokens": 1}).to_string();
    let mut c = Conn::open(addr);
    let r = c.request("POST", "/v1/completions", &[], hi.as_bytes());
    assert_eq!(r.status, 401, "{}", r.text());
    let t0 = Instant::now();
    let r = c.request("POST", "/v1/completions", &[key], hi.as_bytes());
    let took = t0.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    let retry_after: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(r.json()["error"]["type"], "server_error");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("would wait about"), "{message}");
    assert!(took < Duration::from_millis(500), "503 took {took:?}");
    let page = get(addr, "/metrics").text();
    assert!(
        page.contains(
            "ryzanstein_requests_refused_total{reason=\"wait\",model=\"gemma-3-270m-q4_k_m\"} 1"
        ),
        "{page}"
    );
    // Resent at once on the same connection: held until the Retry-After, then answered 503
    // without a decision ("resend now"); the resend after that is decided afresh.
    let t1 = Instant::now();
    let again = c.request("POST", "/v1/completions", &[key], hi.as_bytes());
    let held = t1.elapsed();
    assert_eq!(again.status, 503, "{}", again.text());
    assert!(again.text().contains("resend now"), "{}", again.text());
    assert!(
        held >= Duration::from_secs(retry_after) - Duration::from_millis(100),
        "held {held:?}, Retry-After {retry_after} s"
    );
    // That resend is decided as a new arrival (at once: refused again, the streams still run).
    let t2 = Instant::now();
    let third = c.request("POST", "/v1/completions", &[key], hi.as_bytes());
    assert_eq!(third.status, 503, "{}", third.text());
    assert!(
        third.text().contains("would wait about"),
        "{}",
        third.text()
    );
    assert!(t2.elapsed() < Duration::from_millis(500));
    let page = get(addr, "/metrics").text();
    assert!(
        page.contains("ryzanstein_requests_held_retries_total 1"),
        "{page}"
    );
    // The connection stays usable, and health and metrics still answer meanwhile.
    assert_eq!(c.request("GET", "/health", &[], b"").status, 200);
    assert_eq!(get(addr, "/health").status, 200);
    eprintln!("503 in {took:?}, Retry-After {retry_after} s; the early retry held {held:?}");
    drop(busy);
    server.shutdown();
}

#[test]
fn a_full_engine_queue_is_a_fast_503() {
    let mut cfg = test_config();
    cfg.engine.max_batch_size = 1;
    cfg.engine.queue_depth = 1;
    // No wait limit and workers enough for the queue to fill.
    cfg.engine.max_queue_wait_ms = 0;
    cfg.limits.max_concurrent_requests = 4;
    cfg.http_workers = 8;
    let server = start(cfg, false);
    let addr = server.local_addr();
    let long = json!({"prompt": "Tell me a story.", "max_tokens": 300, "stream": true,
                      "temperature": 0, "logit_bias": {"1": -100, "106": -100}});
    let mut held = Vec::new();
    let mut rejected = None;
    // One runs, one is held by the dispatcher, one waits in the queue: the next is refused.
    for _ in 0..6 {
        let mut c = Conn::open(addr);
        let t0 = Instant::now();
        c.send("POST", "/v1/completions", &[], long.to_string().as_bytes());
        let (status, headers) = c.read_head();
        if status == 503 {
            rejected = Some((t0.elapsed(), headers));
            break;
        }
        held.push(c);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (took, headers) = rejected.expect("a 503 once the queue is full");
    // When the queue ahead will have drained: seconds of 300-token answers.
    let retry_after: u64 = headers
        .iter()
        .find(|(k, _)| k == "retry-after")
        .and_then(|(_, v)| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(took < Duration::from_millis(500), "503 took {took:?}");
    drop(held);
    server.shutdown();
}

#[test]
fn keep_alive_reuse_is_counted() {
    let server = start(test_config(), false);
    let addr = server.local_addr();
    let mut c = Conn::open(addr);
    for _ in 0..3 {
        let r = c.post("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 2}));
        assert_eq!(r.status, 200);
    }
    let page = c.request("GET", "/metrics", &[], b"").text();
    assert_eq!(
        metric(&page, "ryzanstein_http_connections_accepted_total"),
        Some(1.0),
        "one connection for four requests"
    );
    assert_eq!(
        metric(
            &page,
            "ryzanstein_http_requests_total{route=\"/v1/completions\",status=\"200\"}"
        ),
        Some(3.0)
    );
    assert_eq!(metric(&page, "ryzanstein_http_connections_open"), Some(1.0));
    server.shutdown();
}
