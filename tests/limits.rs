//! Every per-request limit of docs/OPERATIONS.md ("Limits"), enforced over real sockets with
//! the right status and an OpenAI-style error, on the tiny Llama fixture: body bytes (by
//! `Content-Length` and chunked), prompt tokens, `max_tokens`, `n` and prompts × `n`, stop
//! strings (count and length), `logit_bias` entries, concurrent requests, and the request
//! deadline (504 whole, a final SSE error event streamed, the sequences cancelled and their KV
//! freed). The flag, environment variable and file key of the deadline are checked on the
//! binary.

mod common;
mod server_support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ryzanstein::config::ServeConfig;
use serde_json::{json, Value};
use server_support::*;

const BODY_BYTES_MAX: usize = 16 * 1024;
const PROMPT_TOKENS_MAX: usize = 32;
const MAX_TOKENS_CAP: usize = 64;
const N_MAX: usize = 2;
const CHOICES_MAX: usize = 4;
const STOP_MAX: usize = 2;
const STOP_BYTES_MAX: usize = 8;
const LOGIT_BIAS_MAX: usize = 3;
const CONCURRENT_MAX: usize = 2;
/// Long enough that two streams are surely running when a third request comes (the 503
/// comes within milliseconds), short next to the time 4000 tokens of the tiny model take:
/// 0.95 s on 2026-12-04 (`curl` against `serve --model tests/data/fixtures/tiny-llama.gguf
/// --n-ctx 4096`), 3 s and more before the forward pass ran as a team. At 1.5 s, a whole
/// 4000-token request finished before its deadline.
const DEADLINE_MS: u64 = 300;

/// A server with small request limits (the tests run in parallel against it).
fn small_limits() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let mut c = test_config();
        let l = &mut c.limits;
        l.body_bytes_max = BODY_BYTES_MAX;
        l.prompt_tokens_max = PROMPT_TOKENS_MAX;
        l.max_tokens_cap = MAX_TOKENS_CAP;
        l.max_tokens_default = 16;
        l.n_max = N_MAX;
        l.choices_max = CHOICES_MAX;
        l.stop_max = STOP_MAX;
        l.stop_bytes_max = STOP_BYTES_MAX;
        l.logit_bias_max = LOGIT_BIAS_MAX;
        let s = start_model(c, tiny_model_path(), false);
        Box::leak(Box::new(s)).local_addr()
    })
}

/// A server with a short deadline, two engine slots and a short queue wait; its own, so no
/// other test's requests take its slots.
fn deadline_server() -> (ryzanstein::server::Server, SocketAddr) {
    let mut c: ServeConfig = test_config();
    c.engine.n_ctx = 4096;
    c.engine.max_batch_size = CONCURRENT_MAX;
    c.engine.max_queue_wait_ms = 50;
    c.limits.max_concurrent_requests = CONCURRENT_MAX;
    c.http_workers = CONCURRENT_MAX + 4;
    c.limits.request_deadline_ms = DEADLINE_MS;
    let s = start_model(c, tiny_model_path(), false);
    let a = s.local_addr();
    (s, a)
}

/// Checks status, the OpenAI error shape, and `param` / `code` where given.
fn expect_error(r: &Response, status: u16, param: Option<&str>, code: Option<&str>) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{}",
        r.text()
    );
    let e = r.json()["error"].clone();
    for k in ["message", "type", "param", "code"] {
        assert!(e.get(k).is_some(), "error.{k} missing: {e}");
    }
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    assert_eq!(e["param"].as_str(), param, "{e}");
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{e}");
    }
    e
}

fn complete(extra: Value) -> Response {
    let mut b = json!({"prompt": "hello", "max_tokens": 2});
    for (k, v) in extra.as_object().expect("object") {
        b[k] = v.clone();
    }
    post(small_limits(), "/v1/completions", &b)
}

#[test]
fn body_bytes_are_capped_by_length_and_when_chunked() {
    let a = small_limits();
    // Just under the cap is read (and answered on its merits).
    let pad = " ".repeat(BODY_BYTES_MAX - 40);
    let ok = format!("{{\"prompt\":\"hi\",\"max_tokens\":1}}{pad}");
    assert!(ok.len() <= BODY_BYTES_MAX);
    let r = request(a, "POST", "/v1/completions", ok.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    // One byte over: 413 from Content-Length, before the body is read.
    let big = vec![b' '; BODY_BYTES_MAX + 1];
    for path in ["/v1/completions", "/v1/chat/completions", "/tokenize"] {
        let r = request(a, "POST", path, &big);
        expect_error(&r, 413, None, Some("body_too_large"));
    }
    // Chunked: no length to check first, so the read stops one byte past the cap.
    let mut c = Conn::open(a);
    let mut raw = Vec::new();
    for chunk in big.chunks(4000) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let head = "POST /v1/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\
                Content-Type: application/json\r\n\r\n";
    std::io::Write::write_all(&mut c.r.get_mut(), head.as_bytes()).unwrap();
    std::io::Write::write_all(&mut c.r.get_mut(), &raw).unwrap();
    expect_error(&c.read_response(), 413, None, Some("body_too_large"));
    assert_eq!(get(a, "/health").status, 200);
}

#[test]
fn prompt_tokens_are_capped() {
    let ok: Vec<u32> = vec![100; PROMPT_TOKENS_MAX];
    let r = complete(json!({ "prompt": ok }));
    assert_eq!(r.status, 200, "{}", r.text());
    let long: Vec<u32> = vec![100; PROMPT_TOKENS_MAX + 1];
    let r = complete(json!({ "prompt": long }));
    expect_error(&r, 400, Some("prompt"), Some("context_length_exceeded"));
    // As text, and as a chat whose template makes it long.
    let text = "word ".repeat(4 * PROMPT_TOKENS_MAX);
    let r = complete(json!({ "prompt": text }));
    expect_error(&r, 400, Some("prompt"), Some("context_length_exceeded"));
    let r = post(
        small_limits(),
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": text}], "max_tokens": 2}),
    );
    expect_error(&r, 400, Some("prompt"), Some("context_length_exceeded"));
}

#[test]
fn max_tokens_n_and_choices_are_capped() {
    let r = complete(json!({ "max_tokens": MAX_TOKENS_CAP }));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = complete(json!({ "max_tokens": MAX_TOKENS_CAP + 1 }));
    expect_error(&r, 400, Some("max_tokens"), Some("invalid_value"));
    let r = post(
        small_limits(),
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}],
                "max_completion_tokens": MAX_TOKENS_CAP + 1}),
    );
    expect_error(
        &r,
        400,
        Some("max_completion_tokens"),
        Some("invalid_value"),
    );
    let r = complete(json!({ "n": N_MAX }));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"].as_array().unwrap().len(), N_MAX);
    let r = complete(json!({ "n": N_MAX + 1 }));
    expect_error(&r, 400, Some("n"), Some("invalid_value"));
    // prompts × n over choices_max.
    let prompts = vec!["a"; CHOICES_MAX / N_MAX + 1];
    let r = complete(json!({ "prompt": prompts, "n": N_MAX }));
    expect_error(&r, 400, Some("n"), Some("invalid_value"));
}

#[test]
fn stop_strings_are_capped_in_number_and_length() {
    let r = complete(json!({ "stop": vec!["x"; STOP_MAX] }));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = complete(json!({ "stop": vec!["x"; STOP_MAX + 1] }));
    expect_error(&r, 400, Some("stop"), Some("invalid_value"));
    let r = complete(json!({ "stop": "y".repeat(STOP_BYTES_MAX) }));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = complete(json!({ "stop": "y".repeat(STOP_BYTES_MAX + 1) }));
    expect_error(&r, 400, Some("stop"), Some("invalid_value"));
    // Bytes, not characters: three 3-byte characters are 9 bytes.
    let r = complete(json!({ "stop": "€€€" }));
    expect_error(&r, 400, Some("stop"), Some("invalid_value"));
    let r = complete(json!({ "stop": [""] }));
    expect_error(&r, 400, Some("stop"), Some("invalid_value"));
}

#[test]
fn logit_bias_entries_are_capped() {
    let bias = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("{}", 10 + i), json!(1.0)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let r = complete(json!({ "logit_bias": bias(LOGIT_BIAS_MAX) }));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = complete(json!({ "logit_bias": bias(LOGIT_BIAS_MAX + 1) }));
    expect_error(&r, 400, Some("logit_bias"), Some("invalid_value"));
}

fn long_generation(stream: bool) -> Value {
    json!({"prompt": "hello", "max_tokens": 4000, "ignore_eos": true, "stream": stream})
}

/// Two long streams fill the two slots: a third request, which would wait for one far longer
/// than `max_queue_wait_ms`, gets 503 + a computed Retry-After at once. At
/// the deadline both streams end with an error event and `[DONE]`; a whole request past it
/// gets 504; each one's sequences are cancelled and their KV memory freed.
#[test]
fn concurrency_cap_and_request_deadline() {
    let (_server, a) = deadline_server();
    let t0 = Instant::now();
    let mut streams: Vec<Conn> = (0..CONCURRENT_MAX)
        .map(|_| {
            let mut c = Conn::open(a);
            let body = long_generation(true).to_string();
            c.send("POST", "/v1/completions", &[], body.as_bytes());
            c
        })
        .collect();
    // A stream's status line is written once its sequences are submitted: both hold a slot.
    let heads: Vec<u16> = streams.iter_mut().map(|c| c.read_head().0).collect();
    assert_eq!(heads, vec![200; CONCURRENT_MAX]);
    // A few steps, so the engine has measured what one costs.
    std::thread::sleep(Duration::from_millis(50));
    let r = post(a, "/v1/completions", &long_generation(false));
    let busy_at = t0.elapsed();
    expect_error(&r, 503, None, Some("service_unavailable"));
    let retry_after: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(
        busy_at < Duration::from_millis(DEADLINE_MS),
        "the 503 came after the streams' deadline ({busy_at:?}): the test proves nothing"
    );
    for c in &mut streams {
        let mut payloads = Vec::new();
        while let Some(chunk) = c.read_chunk() {
            let text = String::from_utf8_lossy(&chunk).into_owned();
            if let Some(d) = text.trim_end().strip_prefix("data: ") {
                payloads.push(d.to_string());
            }
        }
        assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
        let last: Value = serde_json::from_str(&payloads[payloads.len() - 2]).expect("JSON");
        assert_eq!(last["error"]["type"], "timeout", "{last}");
        assert_eq!(last["error"]["code"], "deadline_exceeded", "{last}");
        for k in ["message", "param"] {
            assert!(last["error"].get(k).is_some(), "{last}");
        }
        assert!(payloads.len() > 3, "tokens streamed before the deadline");
    }
    let streamed_for = t0.elapsed();
    eprintln!("two streams cut at their deadline after {streamed_for:?}; 503 after {busy_at:?}");
    assert!(streamed_for >= Duration::from_millis(DEADLINE_MS));

    // The streams' sequences leave the engine at its next step; until then a request's
    // predicted wait counts them (and 50 ms is a short limit).
    wait_idle(a);
    let t1 = Instant::now();
    let r = post(a, "/v1/completions", &long_generation(false));
    let took = t1.elapsed();
    let e = expect_error(&r, 504, None, Some("deadline_exceeded"));
    assert_eq!(e["type"], "timeout");
    eprintln!("whole request answered 504 after {took:?} (deadline {DEADLINE_MS} ms)");
    assert!(took >= Duration::from_millis(DEADLINE_MS), "{took:?}");
    // Generous: the machine may be loaded, but the answer must not wait for the generation.
    assert!(took < Duration::from_millis(DEADLINE_MS) * 4, "{took:?}");
    // Its sequence leaves the engine at the next step; until then a request's predicted wait
    // counts it (and 50 ms is a short limit).
    wait_idle(a);
    let r = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000,
                "ignore_eos": true}),
    );
    expect_error(&r, 504, None, Some("deadline_exceeded"));

    // Cancelled in the engine: no sequence left running, every KV block back in the pool.
    let freed = (0..500).any(|_| {
        let page = get(a, "/metrics").text();
        let running = metric(&page, "ryzanstein_sequences_running{");
        let kv = metric(&page, "ryzanstein_kv_cache_bytes_used{");
        if running == Some(0.0) && kv == Some(0.0) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
        false
    });
    let page = get(a, "/metrics").text();
    assert!(freed, "sequences or KV left after the deadline:\n{page}");
    assert_eq!(
        metric(&page, "ryzanstein_request_deadline_exceeded_total"),
        Some(4.0)
    );
    assert_eq!(metric(&page, "ryzanstein_requests_in_flight"), Some(0.0));
    // A request that ends in time is not affected.
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": "hello", "max_tokens": 8}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Waits until the engine runs no sequence.
fn wait_idle(a: SocketAddr) {
    for _ in 0..500 {
        let page = get(a, "/metrics").text();
        if metric(&page, "ryzanstein_sequences_running{") == Some(0.0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `--request-deadline-ms`, `RYZANSTEIN_REQUEST_DEADLINE_MS` and the file key
/// `request_deadline_ms`, in that order of precedence; the default is ten minutes.
#[test]
fn request_deadline_setting_sources() {
    let dir = std::env::temp_dir().join(format!("ryz-deadline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("serve.toml");
    std::fs::write(&file, "request_deadline_ms = 111\n").unwrap();
    let f = file.to_str().unwrap();
    let printed = |args: &[&str], env: Option<&str>| -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ryzanstein"));
        cmd.args(["serve", "--print-config"]).args(args);
        cmd.env_remove("RYZANSTEIN_REQUEST_DEADLINE_MS");
        if let Some(v) = env {
            cmd.env("RYZANSTEIN_REQUEST_DEADLINE_MS", v);
        }
        let out = cmd.output().expect("run the binary");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let line = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("request_deadline_ms"))
            .map(str::to_string)
    };
    assert_eq!(
        line(&printed(&[], None)).as_deref(),
        Some("request_deadline_ms = 600000")
    );
    assert_eq!(
        line(&printed(&["--config", f], None)).as_deref(),
        Some("request_deadline_ms = 111")
    );
    assert_eq!(
        line(&printed(&["--config", f], Some("222"))).as_deref(),
        Some("request_deadline_ms = 222")
    );
    assert_eq!(
        line(&printed(
            &["--config", f, "--request-deadline-ms", "0"],
            Some("222")
        ))
        .as_deref(),
        Some("request_deadline_ms = 0")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
