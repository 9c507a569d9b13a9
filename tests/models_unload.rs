//! Unloading a model in use over HTTP: the stream in flight runs to its end, new requests get
//! 503 while it does, then the model is unloaded, and the next request loads it again.

mod common;
mod models_support;
mod server_support;

use std::time::Duration;

use models_support::*;
use serde_json::json;
use server_support::*;

#[test]
fn unloading_a_model_in_use_finishes_its_stream_first() {
    let d = TempDir::new("unload");
    d.link_default_model("a.gguf");
    d.write("z.gguf", &tiny_model_bytes(0));
    let mut cfg = tiny_config();
    cfg.engine.n_ctx = 256;
    cfg.models.load_wait_ms = 60_000;
    let s = serve_dir(d.path(), cfg);
    let addr = s.local_addr();
    let n = 48;
    let body = json!({
        "model": "a", "prompt": "Count from one to one hundred:", "max_tokens": n,
        "temperature": 0, "stream": true, "logit_bias": {"1": -100, "106": -100},
    });
    let mut c = Conn::open(addr);
    c.send("POST", "/v1/completions", &[], body.to_string().as_bytes());
    let (status, _) = c.read_head();
    assert_eq!(status, 200);
    let first = c.read_chunk().expect("a first event");
    assert!(String::from_utf8_lossy(&first).starts_with("data: {"));
    let r = post(addr, "/v1/models/a/unload", &json!({}));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["state"], "unloading");
    assert_eq!(r.json()["in_flight"], 1);
    let r = post(
        addr,
        "/v1/completions",
        &json!({"model": "a", "prompt": "Hi"}),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("being unloaded"), "{}", r.text());
    let mut texts = 1;
    let mut finish = None;
    let mut done = false;
    while let Some(chunk) = c.read_chunk() {
        let ev = String::from_utf8_lossy(&chunk).to_string();
        if ev.contains("[DONE]") {
            done = true;
        } else if let Some(j) = ev.strip_prefix("data: ") {
            let v: serde_json::Value = serde_json::from_str(j.trim()).expect("event");
            texts += 1;
            if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
    }
    assert!(done, "the stream ran to [DONE]");
    assert_eq!(finish.as_deref(), Some("length"), "all {n} tokens");
    assert!(texts >= n / 2, "{texts} events");
    let state = || get(addr, "/v1/models/a").json()["state"].clone();
    assert!(eventually(Duration::from_secs(30), || state() == "available"));
    let r = post(
        addr,
        "/v1/completions",
        &json!({"model": "a", "prompt": "Hi", "max_tokens": 2}),
    );
    assert_eq!(r.status, 200, "loaded again on demand: {}", r.text());
    s.shutdown();
}
