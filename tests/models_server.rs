//! The model manager over HTTP, on a models directory of tiny models: `/v1/models` with
//! states, sizes, architecture and quantization; the admin routes behind the API key; the
//! events stream; a request that waits for its model's load and gets 503 + Retry-After;
//! requests for a loaded model unaffected by another's load; single-flight; failures with
//! their reason; readiness waiting for preloads; ids that look like paths.

mod common;
mod models_support;
mod server_support;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use models_support::*;
use serde_json::{json, Value};
use server_support::*;

const WAIT: Duration = Duration::from_secs(60);
const KEY: &str = "Authorization: Bearer sesame";

fn completion(model: &str) -> Value {
    json!({"model": model, "prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0})
}

fn models(addr: SocketAddr) -> Vec<Value> {
    let r = Conn::open(addr).request("GET", "/v1/models", &[KEY], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"].as_array().expect("data").clone()
}

fn model(addr: SocketAddr, id: &str) -> Value {
    models(addr)
        .into_iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no model {id}"))
}

fn post_key(addr: SocketAddr, path: &str, body: &Value) -> Response {
    Conn::open(addr).request("POST", path, &[KEY], body.to_string().as_bytes())
}

/// Unblocks a loader stuck opening a FIFO (and ends that load) when dropped.
struct FifoRelease(PathBuf);

impl Drop for FifoRelease {
    fn drop(&mut self) {
        // Non-blocking: fails at once if no loader has it open for reading.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.0)
        {
            let _ = f.write_all(b"not a gguf file");
        }
    }
}

#[test]
fn models_list_states_admin_routes_and_failures() {
    let d = TempDir::new("list");
    let bytes = tiny_model_bytes(1 << 16);
    d.write("a.gguf", &bytes);
    d.write("b.gguf", &bytes);
    d.write("broken.gguf", &bytes[..bytes.len() - 1000]);
    std::os::unix::fs::symlink(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/fixtures/tiny-llama.gguf"
        ),
        d.path().join("llama.gguf"),
    )
    .expect("link the tiny Llama");
    d.manifest(
        "default = \"a\"\n[[model]]\nid = \"a\"\npath = \"a.gguf\"\npreload = true\n\
         aliases = [\"alpha\"]\n[[model]]\nid = \"top\"\npath = \"b.gguf\"\n\
         depends_on = [\"a\"]\n",
    );
    let mut cfg = tiny_config();
    cfg.api_key = Some("sesame".into());
    let s = serve_dir(d.path(), cfg);
    let addr = s.local_addr();
    assert!(s.wait_ready(WAIT), "{:?}", s.load_error());
    let a = model(addr, "a");
    assert_eq!(a["state"], "loaded");
    assert_eq!(a["architecture"], "gemma3");
    assert_eq!(a["quantization"], "F32");
    assert_eq!(a["size_bytes"], bytes.len() as u64);
    assert!(a["loaded_bytes"].as_u64().unwrap() >= bytes.len() as u64);
    assert_eq!(a["aliases"], json!(["alpha"]));
    assert_eq!(a["default"], true);
    assert!(eventually(WAIT, || model(addr, "broken")["architecture"]
        == "gemma3"
        || model(addr, "top")["architecture"] == "gemma3"));
    assert_eq!(model(addr, "top")["state"], "available");
    // Another architecture in the same catalog.
    assert!(eventually(WAIT, || model(addr, "llama")["architecture"] == "llama"));
    assert_eq!(model(addr, "llama")["quantization"], "Q8_0");
    let r = post_key(addr, "/v1/completions", &completion("llama"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "llama");
    assert_eq!(model(addr, "top")["depends_on"], json!(["a"]));

    // The admin routes need the key.
    let r = Conn::open(addr).request("POST", "/v1/models/top/load", &[], b"");
    assert_eq!(r.status, 401);
    let r = post_key(addr, "/v1/models/top/load", &json!({}));
    assert!(r.status == 202 || r.status == 200, "{}", r.text());
    assert!(eventually(WAIT, || model(addr, "top")["state"] == "loaded"));
    let r = post_key(addr, "/v1/models/a/unload", &json!({}));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("'top' depends on it"));
    let r = post_key(addr, "/v1/models/top/unload", &json!({}));
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(eventually(WAIT, || model(addr, "top")["state"] == "available"));
    // An alias serves, and the answer names the model's id.
    let r = post_key(addr, "/v1/completions", &completion("alpha"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "a");

    // A truncated file fails its load with the reason; the others go on serving.
    let r = post_key(addr, "/v1/completions", &completion("broken"));
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_load_failed");
    let b = model(addr, "broken");
    assert_eq!(b["state"], "failed");
    assert!(
        b["error"].as_str().unwrap().contains("runs past the end"),
        "{b}"
    );
    let r = Conn::open(addr).request("GET", "/v1/models/broken/events", &[KEY], b"");
    let last = r.text();
    assert!(
        last.contains("\"phase\":\"failed\"") && last.contains("runs past the end"),
        "{last}"
    );
    assert_eq!(
        post_key(addr, "/v1/completions", &completion("a")).status,
        200
    );

    // Names that are not in the catalog are 404s, whatever they look like.
    for path in [
        "/v1/models/nope/load",
        "/v1/models/..%2F..%2Fetc%2Fpasswd/load",
        "/v1/models/../a/load",
        "/v1/models/a.gguf/load",
    ] {
        let r = Conn::open(addr).request("POST", path, &[KEY], b"");
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    let r = post_key(addr, "/v1/completions", &completion("../a.gguf"));
    assert_eq!(r.status, 404);
    let r = Conn::open(addr).request("GET", "/v1/models/a/load", &[KEY], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));

    let page = Conn::open(addr).request("GET", "/metrics", &[], b"").text();
    for name in [
        "ryzanstein_model_cache_hits_total",
        "ryzanstein_model_cache_misses_total",
        "ryzanstein_model_evictions_total",
        "ryzanstein_model_loads_total{outcome=\"ok\"} 3",
        "ryzanstein_model_loads_total{outcome=\"failed\"} 1",
        "ryzanstein_model_load_seconds_count 4",
        "ryzanstein_models_loaded_bytes",
        "ryzanstein_models{state=\"failed\"} 1",
        "ryzanstein_sequences_running{model=\"a\"}",
        "ryzanstein_http_requests_total{route=\"/v1/models/{id}/load\",status=\"401\"} 1",
    ] {
        assert!(page.contains(name), "{name} missing:\n{page}");
    }
    s.shutdown();
}

#[test]
fn events_stream_a_load_from_queued_to_ready() {
    let d = TempDir::new("events");
    d.write("a.gguf", &tiny_model_bytes(1 << 20));
    d.write("z.gguf", &tiny_model_bytes(0)); // two models, no manifest: no default to preload
    let s = serve_dir(d.path(), tiny_config());
    let addr = s.local_addr();
    let mut c = Conn::open(addr);
    c.send("GET", "/v1/models/a/events", &[], b"");
    let (status, headers) = c.read_head();
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "text/event-stream"));
    let r = post(addr, "/v1/models/a/load", &json!({}));
    assert_eq!(r.status, 202, "{}", r.text());
    let mut events = Vec::new();
    while let Some(chunk) = c.read_chunk() {
        let text = String::from_utf8(chunk).unwrap();
        if let Some(d) = text.strip_prefix("data: ") {
            if d.trim() != "[DONE]" {
                events.push(serde_json::from_str::<Value>(d.trim()).expect("event JSON"));
            }
        }
    }
    let mut phases: Vec<&str> = events
        .iter()
        .map(|e| e["phase"].as_str().unwrap())
        .collect();
    phases.dedup();
    assert_eq!(
        phases,
        ["unloaded", "queued", "open", "validate", "map", "prefault", "ready"],
        "{events:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["percent"], 100.0);
    assert_eq!(last["state"], "loaded");
    assert_eq!(last["bytes_done"], last["bytes_total"]);
    assert!(last["tensors_total"].as_u64().unwrap() > 20);
    s.shutdown();
}

/// A model whose load blocks (its file is a FIFO): requests for it wait `load_wait_ms`, then
/// get 503 + Retry-After; requests for a loaded model meanwhile are as fast as before.
#[test]
fn waiting_for_a_load_is_bounded_and_other_models_are_not_slowed() {
    let d = TempDir::new("wait");
    d.write("a.gguf", &tiny_model_bytes(0));
    let fifo = d.fifo("slow.gguf");
    let mut cfg = tiny_config();
    cfg.models.load_wait_ms = 400;
    let s = serve_dir(d.path(), cfg);
    let addr = s.local_addr();
    let _release = FifoRelease(fifo);
    assert_eq!(post(addr, "/v1/completions", &completion("a")).status, 200);
    let time_a = |n: usize| -> Vec<f64> {
        let mut c = Conn::open(addr);
        (0..n)
            .map(|_| {
                let t = Instant::now();
                let r = c.post("/v1/completions", &completion("a"));
                assert_eq!(r.status, 200, "{}", r.text());
                t.elapsed().as_secs_f64()
            })
            .collect()
    };
    let idle = time_a(20);
    // Three clients ask for the slow model at once: one load, three bounded waits.
    let barrier = Arc::new(Barrier::new(3));
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                let t = Instant::now();
                let r = post(addr, "/v1/completions", &completion("slow"));
                (
                    r.status,
                    r.header("retry-after").map(str::to_string),
                    t.elapsed(),
                    r.text(),
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let busy = time_a(20);
    for w in waiters {
        let (status, retry, took, text) = w.join().unwrap();
        assert_eq!(status, 503, "{text}");
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(text.contains("'slow' is loading"), "{text}");
        assert!(
            took >= Duration::from_millis(350) && took < Duration::from_secs(5),
            "waited {took:?}"
        );
    }
    let slow = model(addr, "slow");
    assert_eq!(slow["state"], "loading", "{slow}");
    assert_eq!(slow["phase"], "open");
    let page = get(addr, "/metrics").text();
    assert_eq!(
        metric(&page, "ryzanstein_model_loads_total{outcome=\"ok\"}"),
        Some(1.0),
        "only `a` has loaded: the slow model's load is still the one in open()"
    );
    let (p50_idle, p50_busy) = (quantile(&idle, 0.5), quantile(&busy, 0.5));
    let (p99_idle, p99_busy) = (quantile(&idle, 0.99), quantile(&busy, 0.99));
    eprintln!(
        "model a while another model loads: p50 {:.1} ms (idle {:.1} ms), max {:.1} ms (idle \
         {:.1} ms)",
        p50_busy * 1e3,
        p50_idle * 1e3,
        p99_busy * 1e3,
        p99_idle * 1e3
    );
    // The waiting requests hold HTTP workers, not the model: `a` answers as fast as idle
    // (a generous bound: this machine is shared).
    assert!(p50_busy < p50_idle * 3.0 + 0.02, "{p50_busy} vs {p50_idle}");
    drop(_release);
    assert!(eventually(WAIT, || model(addr, "slow")["state"] == "failed"));
    s.shutdown();
}

#[test]
fn concurrent_requests_for_an_unloaded_model_share_one_load() {
    let d = TempDir::new("flight");
    d.write("a.gguf", &tiny_model_bytes(1 << 20));
    d.write("z.gguf", &tiny_model_bytes(0)); // two models, no manifest: no default to preload
    let s = serve_dir(d.path(), tiny_config());
    let addr = s.local_addr();
    let n = 6;
    let barrier = Arc::new(Barrier::new(n));
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                post(addr, "/v1/completions", &completion("a"))
            })
        })
        .collect();
    let texts: Vec<String> = hs
        .into_iter()
        .map(|h| {
            let r = h.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["choices"][0]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(texts.windows(2).all(|w| w[0] == w[1]), "{texts:?}");
    let page = get(addr, "/metrics").text();
    assert_eq!(
        metric(&page, "ryzanstein_model_loads_total{outcome=\"ok\"}"),
        Some(1.0)
    );
    let misses = metric(&page, "ryzanstein_model_cache_misses_total").unwrap();
    let hits = metric(&page, "ryzanstein_model_cache_hits_total").unwrap();
    assert!(
        misses >= 1.0 && hits + misses == n as f64,
        "{hits} {misses}"
    );
    s.shutdown();
}

#[test]
fn readiness_waits_for_the_preload_models() {
    let d = TempDir::new("ready");
    let bytes = tiny_model_bytes(0);
    d.write("a.gguf", &bytes);
    let fifo = d.fifo("later.gguf");
    d.manifest(
        "default = \"a\"\n[[model]]\nid = \"a\"\npath = \"a.gguf\"\npreload = true\n\
         priority = 2\n[[model]]\nid = \"later\"\npath = \"later.gguf\"\npreload = true\n",
    );
    let s = serve_dir(d.path(), tiny_config());
    let addr = s.local_addr();
    let release = FifoRelease(fifo);
    assert!(eventually(WAIT, || model(addr, "a")["state"] == "loaded"));
    let r = get(addr, "/health/ready");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["status"], "loading");
    assert_eq!(post(addr, "/v1/completions", &completion("a")).status, 200);
    drop(release);
    assert!(eventually(WAIT, || get(addr, "/health/ready").json()
        ["status"]
        == "failed"));
    s.shutdown();

    // Not required: ready once the default model is.
    let mut cfg = tiny_config();
    cfg.models.ready_requires_preload = false;
    let d2 = TempDir::new("ready2");
    d2.write("a.gguf", &bytes);
    let fifo = d2.fifo("later.gguf");
    d2.manifest(
        "default = \"a\"\n[[model]]\nid = \"a\"\npath = \"a.gguf\"\npreload = true\n\
         priority = 2\n[[model]]\nid = \"later\"\npath = \"later.gguf\"\npreload = true\n",
    );
    let s = serve_dir(d2.path(), cfg);
    let release = FifoRelease(fifo);
    assert!(s.wait_ready(WAIT));
    assert_eq!(get(s.local_addr(), "/health/ready").status, 200);
    drop(release);
    s.shutdown();
}
