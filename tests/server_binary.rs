//! The real `ryzanstein serve` binary: start-up (health before readiness), the API key,
//! settings precedence, SIGTERM, and the official `openai` Python client against it.

mod common;
mod server_support;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use server_support::*;

#[test]
fn the_binary_serves_with_an_api_key_and_stops_on_sigterm() {
    let mut s = Spawned::start(&["--api-key", "sesame"], &[]);
    assert_eq!(get(s.addr, "/health").status, 200, "health answers at once");
    s.wait_ready();
    let body = json!({"prompt": "Hi", "max_tokens": 2}).to_string();
    let mut c = Conn::open(s.addr);
    let r = c.request("POST", "/v1/completions", &[], body.as_bytes());
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = c.request("GET", "/v1/models", &["Authorization: Bearer wrong"], b"");
    assert_eq!(r.status, 401);
    let r = c.request(
        "POST",
        "/v1/completions",
        &["Authorization: Bearer sesame"],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.request("GET", "/metrics", &[], b"").status, 200, "no key");
    assert_eq!(s.terminate(), Some(0), "exit 0 after SIGTERM");
    let log = s.stderr.lock().unwrap().clone();
    assert!(
        log.contains("route=\"/v1/completions\" status=200"),
        "{log}"
    );
    assert!(log.contains("signal received"), "{log}");
}

/// The official client, streaming and not, through the real binary.
#[test]
fn the_openai_python_package_works_against_the_server() {
    let Some(pythonpath) = std::env::var_os("RYZANSTEIN_OPENAI_PYTHONPATH") else {
        eprintln!(
            "SKIPPED: RYZANSTEIN_OPENAI_PYTHONPATH is unset (scripts/test.sh installs the \
             openai package and sets it)"
        );
        return;
    };
    let s = Spawned::start(&["--api-key", "k"], &[]);
    s.wait_ready();
    let chat_ready = post_with_key(s.addr, "k");
    let mut cmd = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/openai_client.py"
    ))
    .args(["--base-url", &format!("http://{}/v1", s.addr)])
    .args(["--model", "gemma-3-270m-q4_k_m", "--api-key", "k"])
    .env("PYTHONPATH", pythonpath);
    if !chat_ready {
        cmd.arg("--skip-chat");
    }
    let out = cmd.output().expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("openai client ok: models, completions"),
        "{stdout}"
    );
    eprintln!("{stdout}");
}

/// Whether this build serves chat (it answers 501 until chat templates are merged).
fn post_with_key(addr: std::net::SocketAddr, key: &str) -> bool {
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1});
    let r = Conn::open(addr).request(
        "POST",
        "/v1/chat/completions",
        &[&format!("Authorization: Bearer {key}")],
        body.to_string().as_bytes(),
    );
    r.status != 501
}

fn print_config(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ryzanstein"));
    cmd.args(["serve", "--print-config"]).args(args);
    for k in [
        "RYZANSTEIN_N_MAX",
        "RYZANSTEIN_LISTEN",
        "RYZANSTEIN_QUEUE_DEPTH",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run the binary")
}

#[test]
fn settings_precedence_is_flags_env_file_defaults() {
    let dir = std::env::temp_dir().join(format!("ryz-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("serve.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:9\"\nn_max = 3\nqueue_depth = 7\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = print_config(
        &["--config", f, "--n-max", "5"],
        &[("RYZANSTEIN_N_MAX", "4"), ("RYZANSTEIN_QUEUE_DEPTH", "9")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("n_max = 5"),
        "flag over env and file:\n{text}"
    );
    assert!(text.contains("queue_depth = 9"), "env over file:\n{text}");
    assert!(
        text.contains("listen = \"127.0.0.1:9\""),
        "file over default:\n{text}"
    );
    assert!(text.contains("max_batch_size = 32"), "default:\n{text}");

    std::fs::write(&file, "listen = \"x\"\nmax_batch_sise = 4\n").unwrap();
    let out = print_config(&["--config", f], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_batch_sise") && err.contains(f), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `/health` answers while the model loads and `/health/ready` says 503 until it is loaded.
/// The "model" is a FIFO, so loading blocks in open() until the test writes to it: the
/// loading state lasts exactly as long as the test wants.
#[test]
fn readiness_is_503_until_the_model_is_loaded() {
    let fifo = std::env::temp_dir().join(format!("ryz-fifo-{}.gguf", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let server = ryzanstein::server::Server::start(ryzanstein::server::ServerOptions {
        config: test_config(),
        model_path: fifo.clone(),
        catalog: None,
        panic_route: false,
    })
    .expect("listens");
    let addr = server.local_addr();
    assert_eq!(get(addr, "/health").status, 200);
    let r = get(addr, "/health/ready");
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (503, json!("loading"))
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = post(addr, "/v1/completions", &json!({"prompt": "Hi"}));
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    // Unblock the loader with a file that is not GGUF: the load fails and says so. The loader
    // may give up (and close the FIFO) before the bytes are written: a broken pipe is fine.
    let _ = std::fs::write(&fifo, b"not a gguf file");
    let mut status = json!(null);
    for _ in 0..500 {
        status = get(addr, "/health/ready").json()["status"].clone();
        if status != "loading" {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(status, "failed");
    assert!(server.load_error().is_some());
    server.shutdown();
    let _ = std::fs::remove_file(&fifo);
}
