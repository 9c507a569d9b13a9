//! The real binary on a models directory: a bad manifest is one clear error line naming the
//! entry; a good one serves its models and stops on SIGTERM; in a terminal, a load draws a
//! progress bar.

mod common;
mod models_support;
mod server_support;

use std::process::Command;

use models_support::*;
use serde_json::json;
use server_support::*;

fn serve(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ryzanstein"))
        .arg("serve")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the binary")
}

#[test]
fn a_bad_manifest_is_one_error_line_naming_the_entry() {
    let d = TempDir::new("bin-bad");
    d.write("a.gguf", &tiny_model_bytes(0));
    let dir = d.path().to_str().unwrap();
    let cases = [
        (
            "[[model]]\nid = \"a\"\npath = \"a.gguf\"\npreload = yes\n",
            "model #1",
        ),
        (
            "[[model]]\nid = \"a\"\npath = \"a.gguf\"\npin = true\nwarmup = 3\n",
            "warmup",
        ),
        (
            "[[model]]\nid = \"x\"\npath = \"missing.gguf\"\n",
            "model 'x': file",
        ),
        (
            "[[model]]\nid = \"x\"\npath = \"a.gguf\"\ndepends_on = [\"y\"]\n\
             [[model]]\nid = \"y\"\npath = \"a.gguf\"\ndepends_on = [\"x\"]\n",
            "dependency cycle: x -> y -> x",
        ),
    ];
    for (manifest, want) in cases {
        d.manifest(manifest);
        let out = serve(&["--models-dir", dir, "--listen", "127.0.0.1:0"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{manifest}: {err}");
        assert!(
            err.contains(want) && err.contains("models.toml"),
            "{want}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn the_binary_serves_a_models_directory() {
    let d = TempDir::new("bin-dir");
    let bytes = tiny_model_bytes(0);
    d.write("a.gguf", &bytes);
    d.write("b.gguf", &bytes);
    d.manifest("default = \"a\"\n[[model]]\nid = \"a\"\npath = \"a.gguf\"\npreload = true\n");
    let dir = d.path().to_str().unwrap();
    let mut s = Spawned::start(
        &["--models-dir", dir, "--n-ctx", "128", "--models-max", "1"],
        &[],
    );
    s.wait_ready();
    let m = get(s.addr, "/v1/models").json();
    let ids: Vec<&str> = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    let body = json!({"model": "b", "prompt": [1, 2], "max_tokens": 2});
    let r = post(s.addr, "/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        get(s.addr, "/v1/models/a").json()["state"],
        "available",
        "evicted"
    );
    assert_eq!(s.terminate(), Some(0));
    let log = s.stderr.lock().unwrap().clone();
    assert!(log.contains("evicted"), "{log}");
}

/// Under a pseudo-terminal (`script`), loading draws an indicatif bar that ends "ready".
#[test]
fn a_load_in_a_terminal_draws_a_progress_bar() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no `script` command to provide a terminal");
        return;
    }
    let d = TempDir::new("bin-tty");
    d.write("a.gguf", &tiny_model_bytes(1 << 20));
    let cmd = format!(
        "timeout -s TERM 6 {} serve --models-dir {} --listen 127.0.0.1:0 --threads 1 \
         --n-ctx 128 --log-level warn",
        env!("CARGO_BIN_EXE_ryzanstein"),
        d.path().display()
    );
    let out = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .output()
        .expect("run script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("100%") && text.contains("ready") && text.contains("] "),
        "no progress bar in:\n{text}"
    );
}
