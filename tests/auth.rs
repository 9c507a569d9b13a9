//! API-key authentication over real HTTP, mostly against the real binary: the key from the
//! flag, the environment or a file; 401s in OpenAI's shape with `WWW-Authenticate: Bearer`;
//! `/health*` always open; `/metrics` open unless `--metrics-require-key`; admin routes
//! behind the key, and without a key open only on a loopback listen address.

mod common;
mod models_support;
mod server_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use models_support::TempDir;
use serde_json::json;
use server_support::{Conn, Response, Spawned};

fn tiny_llama() -> String {
    common::fixtures_dir()
        .join("tiny-llama.gguf")
        .display()
        .to_string()
}

fn call(addr: SocketAddr, method: &str, path: &str, headers: &[&str]) -> Response {
    let body = match path {
        "/v1/completions" => json!({"prompt": "Hello", "max_tokens": 2}).to_string(),
        "/tokenize" => json!({"prompt": "Hello"}).to_string(),
        "/detokenize" => json!({"tokens": [1, 2]}).to_string(),
        _ => String::new(),
    };
    Conn::open(addr).request(method, path, headers, body.as_bytes())
}

/// A 401 as OpenAI answers one, with the challenge header.
fn assert_401(r: &Response, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
    let e = &r.json()["error"];
    assert_eq!(e["type"], "invalid_request_error", "{what}");
    assert_eq!(e["code"], "invalid_api_key", "{what}");
    assert!(e["param"].is_null() && e["message"].is_string(), "{what}");
}

/// Every guarded route refuses a missing or wrong key and serves the right one; health and
/// (unless asked) metrics stay open.
fn check_guarded(addr: SocketAddr, key: &str, metrics_guarded: bool) {
    let good = format!("Authorization: Bearer {key}");
    let routes = [
        ("GET", "/v1/models"),
        ("GET", "/v1/models/tiny-llama"),
        ("POST", "/v1/completions"),
        ("POST", "/tokenize"),
        ("POST", "/detokenize"),
        ("POST", "/v1/models/tiny-llama/load"),
        ("POST", "/v1/models/tiny-llama/unload"),
        ("GET", "/v1/nothing-here"),
    ];
    let wrong = [
        String::new(),
        "Authorization: Bearer wrong".into(),
        format!("Authorization: Bearer {key}x"),
        format!("Authorization: Bearer {}", &key[..key.len() - 1]),
        format!("Authorization: Basic {key}"),
        format!("Authorization: {key}"),
        "x-api-key: wrong".into(),
    ];
    for (method, path) in routes {
        for h in &wrong {
            let headers: Vec<&str> = Some(h.as_str())
                .filter(|h| !h.is_empty())
                .into_iter()
                .collect();
            assert_401(
                &call(addr, method, path, &headers),
                &format!("{path} with {h:?}"),
            );
        }
    }
    // Unload before load, so the model is loaded at the end.
    for (method, path) in routes
        .iter()
        .filter(|(_, p)| *p != "/v1/models/tiny-llama/load")
    {
        let r = call(addr, method, path, &[&good]);
        assert!(r.status != 401 && r.status != 403, "{path}: {}", r.text());
    }
    let r = call(addr, "POST", "/v1/models/tiny-llama/load", &[&good]);
    assert!(r.status == 200 || r.status == 202, "{}", r.text());
    let ok = models_support::eventually(std::time::Duration::from_secs(60), || {
        call(addr, "POST", "/v1/completions", &[&good]).status == 200
    });
    assert!(ok, "serves again after the reload");
    // Other spellings of the same key.
    for h in [
        format!("authorization: bearer {key}"),
        format!("Authorization: BEARER  {key} "),
        format!("x-api-key: {key}"),
    ] {
        let r = call(addr, "POST", "/v1/completions", &[&h]);
        assert_eq!(r.status, 200, "{h}: {}", r.text());
    }
    for path in ["/health", "/health/ready"] {
        assert_eq!(call(addr, "GET", path, &[]).status, 200, "{path}");
    }
    let r = call(addr, "GET", "/metrics", &[]);
    if metrics_guarded {
        assert_401(&r, "/metrics");
        assert_eq!(call(addr, "GET", "/metrics", &[&good]).status, 200);
    } else {
        assert_eq!(r.status, 200, "/metrics is open");
    }
}

#[test]
fn a_key_from_the_flag_guards_the_api_and_admin_routes_not_health_or_metrics() {
    let s = Spawned::start(&["-m", &tiny_llama(), "--api-key", "sesame-123"], &[]);
    s.wait_ready();
    check_guarded(s.addr, "sesame-123", false);
    let log = s.stderr.lock().unwrap().clone();
    assert!(
        !log.contains("sesame-123"),
        "the key is never logged:\n{log}"
    );
}

#[test]
fn a_key_from_the_environment_with_metrics_behind_it() {
    let s = Spawned::start(
        &["-m", &tiny_llama(), "--metrics-require-key", "true"],
        &[("RYZANSTEIN_API_KEY", "env-key-9")],
    );
    s.wait_ready();
    check_guarded(s.addr, "env-key-9", true);
}

fn key_file(dir: &TempDir, text: &str) -> PathBuf {
    let p = dir.path().join("key");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_key_from_a_file_is_its_first_line_trimmed() {
    let dir = TempDir::new("keyfile");
    let file = key_file(&dir, "  file-key-7 \nnot this line\n");
    let f = file.to_str().unwrap();
    let s = Spawned::start(&["-m", &tiny_llama(), "--api-key-file", f], &[]);
    s.wait_ready();
    check_guarded(s.addr, "file-key-7", false);
    // --print-config names the file, never the key.
    let out = Command::new(env!("CARGO_BIN_EXE_ryzanstein"))
        .args(["serve", "--print-config", "--api-key-file", f])
        .env_remove("RYZANSTEIN_API_KEY")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("api_key_file = \"{f}\"")), "{text}");
    assert!(
        !text.contains("file-key-7") && !text.contains("api_key ="),
        "{text}"
    );
}

/// `serve ARGS` ends at once with one error line naming `needle`.
fn assert_startup_error(args: &[&str], needle: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_ryzanstein"))
        .args(["serve", "--listen", "127.0.0.1:0", "-m", &tiny_llama()])
        .args(args)
        .env_remove("RYZANSTEIN_API_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "{err}");
}

#[test]
fn an_unreadable_empty_or_doubled_key_file_is_a_one_line_startup_error() {
    let dir = TempDir::new("badkey");
    let missing = dir.path().join("missing");
    let m = missing.to_str().unwrap();
    assert_startup_error(&["--api-key-file", m], m);
    let empty = key_file(&dir, "\n  \nsecret-on-line-3\n");
    let e = empty.to_str().unwrap();
    assert_startup_error(&["--api-key-file", e], "first line is empty");
    let f = key_file(&dir, "k\n");
    assert_startup_error(
        &["--api-key-file", f.to_str().unwrap(), "--api-key", "k"],
        "api_key is set too",
    );
}

/// Without a key the API is open; admin routes are open on loopback only. (The non-loopback
/// server listens on 0.0.0.0 and is reached through 127.0.0.1: no traffic leaves the host.)
#[test]
fn without_a_key_admin_routes_are_open_on_loopback_only() {
    let s = Spawned::start(&["-m", &tiny_llama()], &[("RYZANSTEIN_API_KEY", "")]);
    s.wait_ready();
    let r = call(s.addr, "POST", "/v1/models/tiny-llama/unload", &[]);
    assert_eq!(r.status, 202, "{}", r.text());
    let r = call(s.addr, "POST", "/v1/models/tiny-llama/load", &[]);
    assert!(r.status == 200 || r.status == 202, "{}", r.text());
    drop(s);

    let mut cfg = models_support::tiny_config();
    cfg.listen = "0.0.0.0:0".into();
    let server = ryzanstein::server::Server::start(ryzanstein::server::ServerOptions {
        config: cfg,
        model_path: common::fixtures_dir().join("tiny-llama.gguf"),
        catalog: None,
        panic_route: false,
    })
    .expect("listens");
    let addr = SocketAddr::from(([127, 0, 0, 1], server.local_addr().port()));
    for action in ["load", "unload"] {
        let r = call(
            addr,
            "POST",
            &format!("/v1/models/tiny-llama/{action}"),
            &[],
        );
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "admin_requires_key");
    }
    assert_eq!(call(addr, "GET", "/v1/models", &[]).status, 200);
    assert_eq!(call(addr, "GET", "/health", &[]).status, 200);
    server.shutdown();
}
