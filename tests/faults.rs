//! Faults against the real `ryzanstein serve` binary: corrupt, truncated, removed and replaced
//! model files; panics in a request handler, a dispatcher and a loader; SIGTERM with 32
//! streams in flight (new connections refused, streams finished or ended with an error event
//! within the drain deadline, exit 0).
//!
//! The panic tests need the hooks of the `fault-injection` feature (`src/faults.rs`;
//! `scripts/test.sh` builds the tests with it); without it they are ignored.

mod common;
mod models_support;
mod server_support;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use models_support::{eventually, tiny_model_bytes, TempDir};
use serde_json::{json, Value};
use server_support::{get, Conn, Spawned};

/// Every wait in these tests gives up after this long.
const WAIT: Duration = Duration::from_secs(60);

fn tiny_llama() -> PathBuf {
    common::fixtures_dir().join("tiny-llama.gguf")
}

fn tiny_llama_bytes() -> Vec<u8> {
    std::fs::read(tiny_llama()).expect("read the tiny Llama fixture")
}

/// Runs `ryzanstein serve ARGS` until it exits by itself (killed after `WAIT`): exit code and
/// stderr.
fn serve_to_exit(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = TempDir::new("exit");
    let log = dir.path().join("stderr.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ryzanstein"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--threads", "2"])
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the binary");
    let deadline = Instant::now() + WAIT;
    let code = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}

/// The last stderr line is one `error: ...` line containing `needle`; nothing panicked.
fn assert_one_line_error(code: Option<i32>, stderr: &str, needle: &str) {
    assert_eq!(code, Some(1), "exit code; stderr:\n{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains(needle),
        "last line should be one error naming {needle:?}:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "no panic:\n{stderr}"
    );
}

/// Writes `value` at the byte position of the offset field of the file's first tensor.
fn with_first_tensor_offset(bytes: &[u8], value: u64) -> Vec<u8> {
    let f = ryzanstein::gguf::GgufFile::from_bytes("fixture.gguf", bytes.to_vec()).unwrap();
    let t = &f.tensors()[0];
    let mut key = (t.name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(t.name.as_bytes());
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the tensor's name");
    // name length, name, n_dims (u32), dims (u64 each), type (u32), then the offset.
    let pos = at + key.len() + 4 + 8 * t.dims.len() + 4;
    let mut out = bytes.to_vec();
    out[pos..pos + 8].copy_from_slice(&value.to_le_bytes());
    out
}

/// Broken variants of the tiny Llama fixture, each with a phrase its error must contain.
fn broken_files() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = tiny_llama_bytes();
    let patch = |at: usize, v: &[u8]| {
        let mut b = good.clone();
        b[at..at + v.len()].copy_from_slice(v);
        b
    };
    let past_eof = (good.len() as u64 * 4).next_multiple_of(32);
    vec![
        ("truncated", good[..good.len() / 2].to_vec(), "past the end"),
        ("bad-magic", patch(0, b"NOPE"), "magic"),
        (
            "absurd-tensor-count",
            patch(8, &u64::MAX.to_le_bytes()),
            "tensor_count",
        ),
        (
            "absurd-kv-count",
            patch(16, &(1u64 << 40).to_le_bytes()),
            "metadata_kv_count",
        ),
        (
            "offset-past-eof",
            with_first_tensor_offset(&good, past_eof),
            ".offset",
        ),
        ("empty", Vec::new(), ""),
    ]
}

#[test]
fn a_corrupt_or_truncated_model_is_a_one_line_startup_error_naming_the_file() {
    let dir = TempDir::new("broken");
    for (name, bytes, phrase) in broken_files() {
        let path = dir.write(&format!("{name}.gguf"), &bytes);
        let p = path.to_str().unwrap();
        let (code, stderr) = serve_to_exit(&["-m", p], &[]);
        assert_one_line_error(code, &stderr, p);
        let last = stderr.lines().last().unwrap();
        assert!(last.contains(phrase), "{name}: {last}");
        eprintln!("{name}: {last}");
    }
}

/// Starts the binary on `dir` and returns it once `/health` answers.
fn serve_dir(dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Spawned {
    let mut args = vec!["--models-dir", dir.to_str().unwrap(), "--n-ctx", "128"];
    args.extend_from_slice(extra);
    let s = Spawned::start(&args, envs);
    assert_eq!(get(s.addr, "/health").status, 200);
    s
}

fn model(addr: SocketAddr, id: &str) -> Value {
    get(addr, &format!("/v1/models/{id}")).json()
}

fn admin(addr: SocketAddr, id: &str, action: &str) -> u16 {
    let path = format!("/v1/models/{id}/{action}");
    Conn::open(addr).request("POST", &path, &[], b"").status
}

/// A short greedy completion from `model`: (status, body).
fn complete(addr: SocketAddr, model: &str) -> (u16, Value) {
    let body = json!({"model": model, "prompt": "Hello", "max_tokens": 8, "temperature": 0});
    let r = Conn::open(addr).post("/v1/completions", &body);
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

fn wait_state(addr: SocketAddr, id: &str, state: &str) -> Value {
    let mut last = Value::Null;
    let ok = eventually(WAIT, || {
        last = model(addr, id);
        last["state"] == state
    });
    assert!(ok, "{id} never became {state}: {last}");
    last
}

#[test]
fn corrupt_models_in_a_models_dir_are_failed_with_the_reason_and_the_server_lives() {
    let dir = TempDir::new("dir-broken");
    std::fs::copy(tiny_llama(), dir.path().join("good.gguf")).unwrap();
    let broken = broken_files();
    for (name, bytes, _) in &broken {
        dir.write(&format!("{name}.gguf"), bytes);
    }
    let s = serve_dir(dir.path(), &[], &[]);
    for (name, _, phrase) in &broken {
        // Through a request, and through the admin route (which tries again).
        let (status, body) = complete(s.addr, name);
        assert_eq!(status, 500, "{name}: {body}");
        assert_eq!(body["error"]["code"], "model_load_failed", "{body}");
        let file = dir.path().join(format!("{name}.gguf"));
        let m = wait_state(s.addr, name, "failed");
        let why = m["error"].as_str().unwrap();
        assert!(
            why.contains(file.to_str().unwrap()) && why.contains(phrase),
            "{why}"
        );
        assert_eq!(admin(s.addr, name, "load"), 202);
        wait_state(s.addr, name, "failed");
        let (status, body) = complete(s.addr, "good");
        assert_eq!(status, 200, "the others serve on: {body}");
    }
    // Fixed by a rename, the model loads on the next admin load.
    let fixed = dir.path().join("fixed.tmp");
    std::fs::copy(tiny_llama(), &fixed).unwrap();
    std::fs::rename(&fixed, dir.path().join("truncated.gguf")).unwrap();
    assert_eq!(admin(s.addr, "truncated", "load"), 202);
    wait_state(s.addr, "truncated", "loaded");
    assert_eq!(complete(s.addr, "truncated").0, 200);
    let log = s.stderr.lock().unwrap().clone();
    assert!(!log.contains("panicked"), "{log}");
}

/// Linux keeps an unlinked file's pages while it is mapped, so a loaded model whose file is
/// removed, or replaced by a rename, keeps serving from the old file; the next load reads
/// whatever the path names then.
#[test]
fn a_model_file_removed_or_replaced_by_rename_while_loaded_keeps_serving() {
    let dir = TempDir::new("unlink");
    let path = dir.path().join("m.gguf");
    std::fs::copy(tiny_llama(), &path).unwrap();
    let s = serve_dir(dir.path(), &[], &[]);
    let (status, first) = complete(s.addr, "m");
    assert_eq!(status, 200, "{first}");
    let text = first["choices"][0]["text"].clone();

    std::fs::remove_file(&path).unwrap();
    for _ in 0..3 {
        let (status, again) = complete(s.addr, "m");
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["choices"][0]["text"], text, "same weights");
    }
    // A different model renamed into place: the loaded one is unchanged...
    let new = dir.write("m.gguf.tmp", &tiny_model_bytes(0));
    std::fs::rename(&new, &path).unwrap();
    let (status, again) = complete(s.addr, "m");
    assert_eq!((status, &again["choices"][0]["text"]), (200, &text));
    assert_eq!(model(s.addr, "m")["architecture"], "llama");
    // ... until it is loaded again.
    assert_eq!(admin(s.addr, "m", "unload"), 202);
    wait_state(s.addr, "m", "available");
    assert_eq!(admin(s.addr, "m", "load"), 202);
    let m = wait_state(s.addr, "m", "loaded");
    assert_eq!(m["architecture"], "gemma3", "{m}");
    assert_eq!(complete(s.addr, "m").0, 200);
    // Removed and then loaded: failed, naming the file.
    assert_eq!(admin(s.addr, "m", "unload"), 202);
    wait_state(s.addr, "m", "available");
    std::fs::remove_file(&path).unwrap();
    assert_eq!(admin(s.addr, "m", "load"), 202);
    let m = wait_state(s.addr, "m", "failed");
    assert!(
        m["error"]
            .as_str()
            .unwrap()
            .contains(path.to_str().unwrap()),
        "{m}"
    );
    assert_eq!(get(s.addr, "/health").status, 200);
}

/// A streamed completion read to its end: the `data:` payloads (without `[DONE]`), whether
/// `[DONE]` came, and when the stream ended.
struct StreamEnd {
    events: Vec<Value>,
    done: bool,
    ended_at: Instant,
}

impl StreamEnd {
    /// "finished" (a finish_reason, no error), "error" (a final error event), or why not.
    fn outcome(&self) -> String {
        let last = self.events.last().cloned().unwrap_or(Value::Null);
        if !self.done {
            return format!("no [DONE] after {last}");
        }
        if last.get("error").is_some() {
            return "error".into();
        }
        let finished = self
            .events
            .iter()
            .any(|e| e["choices"][0]["finish_reason"].is_string());
        if finished && self.events.iter().all(|e| e.get("error").is_none()) {
            "finished".into()
        } else {
            format!("unexpected end {last}")
        }
    }
}

/// Starts a streamed completion on its own connection and thread; `started` hears once its
/// first event arrived.
fn spawn_stream(
    addr: SocketAddr,
    body: Value,
    started: mpsc::Sender<()>,
) -> std::thread::JoinHandle<StreamEnd> {
    std::thread::spawn(move || {
        let mut c = Conn::open(addr);
        c.send("POST", "/v1/completions", &[], body.to_string().as_bytes());
        let (status, _) = c.read_head();
        assert_eq!(status, 200);
        let (mut events, mut done, mut pending) = (Vec::new(), false, String::new());
        let mut first = Some(started);
        while let Some(chunk) = c.read_chunk() {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find("\n\n") {
                let ev: String = pending.drain(..end + 2).collect();
                match ev.trim_end().strip_prefix("data: ") {
                    Some("[DONE]") => done = true,
                    Some(d) => events.push(serde_json::from_str(d).expect("event JSON")),
                    None => continue, // a ping
                }
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            }
        }
        StreamEnd {
            events,
            done,
            ended_at: Instant::now(),
        }
    })
}

/// Sends SIGTERM to the child (by its pid only).
fn sigterm(s: &Spawned) {
    let ok = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

/// Polls until a new connection to `addr` is refused; how long that took.
fn time_until_refused(addr: SocketAddr) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < WAIT {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return t0.elapsed(),
            Err(e) => panic!("connect: {e}"),
            // Accepted: the signal is not handled yet (the main loop looks every 50 ms).
            Ok(c) => drop(c),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("new connections were still accepted after {WAIT:?}");
}

/// Waits (bounded) for the child's exit code.
fn exit_code(s: &mut Spawned) -> Option<i32> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(st) = s.child.try_wait().expect("wait") {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// 32 streams of `max_tokens` tokens on the tiny Llama, SIGTERM once every one has its first
/// event: new connections are refused, every stream ends with `[DONE]`, the binary exits 0.
/// Returns each stream's outcome, the time from SIGTERM to the refusal, to the last stream's
/// end and to the exit.
fn sigterm_with_32_streams(
    max_tokens: usize,
    drain_ms: u64,
) -> (Vec<String>, Duration, Duration, Duration) {
    let drain = drain_ms.to_string();
    let model = tiny_llama();
    let mut s = Spawned::start(
        &["-m", model.to_str().unwrap(), "--drain-timeout-ms", &drain],
        &[],
    );
    s.wait_ready();
    let (tx, rx) = mpsc::channel();
    let body = json!({"prompt": "Hello", "max_tokens": max_tokens, "temperature": 0,
                      "ignore_eos": true, "stream": true});
    let streams: Vec<_> = (0..32)
        .map(|_| spawn_stream(s.addr, body.clone(), tx.clone()))
        .collect();
    for _ in 0..32 {
        rx.recv_timeout(WAIT).expect("every stream starts");
    }
    let t0 = Instant::now();
    sigterm(&s);
    let refused = time_until_refused(s.addr);
    let ends: Vec<StreamEnd> = streams.into_iter().map(|h| h.join().unwrap()).collect();
    let last_end = ends.iter().map(|e| e.ended_at - t0).max().unwrap();
    let code = exit_code(&mut s);
    let exited = t0.elapsed();
    let log = s.stderr.lock().unwrap().clone();
    assert_eq!(code, Some(0), "exit code; stderr:\n{log}");
    assert!(log.contains("signal received: draining"), "{log}");
    (
        ends.iter().map(StreamEnd::outcome).collect(),
        refused,
        last_end,
        exited,
    )
}

#[test]
fn sigterm_with_32_streams_in_flight_lets_them_finish_and_exits_0() {
    let (outcomes, refused, last_end, exited) = sigterm_with_32_streams(300, 60_000);
    eprintln!(
        "refused after {refused:?}, last stream ended after {last_end:?}, exit after {exited:?}"
    );
    assert!(
        outcomes.iter().all(|o| o == "finished"),
        "every stream ends normally: {outcomes:?}"
    );
    assert!(
        refused < Duration::from_secs(5),
        "refused after {refused:?}"
    );
    assert!(
        last_end > refused,
        "streams were still in flight when the listener closed"
    );
    assert!(
        last_end < Duration::from_secs(60),
        "within the drain deadline"
    );
}

#[test]
fn sigterm_with_32_endless_streams_ends_them_with_an_error_event_at_the_drain_deadline() {
    let drain = Duration::from_millis(2000);
    let (outcomes, refused, last_end, exited) = sigterm_with_32_streams(4000, 2000);
    eprintln!(
        "refused after {refused:?}, last stream ended after {last_end:?}, exit after {exited:?}"
    );
    assert!(
        outcomes.iter().all(|o| o == "error"),
        "every stream ends with an error event and [DONE]: {outcomes:?}"
    );
    assert!(
        refused < Duration::from_secs(5),
        "refused after {refused:?}"
    );
    // The deadline, plus a step and the writes; generous on a loaded machine.
    assert!(
        last_end >= drain - Duration::from_millis(200),
        "{last_end:?}"
    );
    assert!(last_end < drain + Duration::from_secs(8), "{last_end:?}");
}

/// The variable the `fault-injection` build reads its faults from (`src/faults.rs`).
const FAULTS: &str = "RYZANSTEIN_FAULT_INJECTION";

/// A build without the feature ignores the variable: nothing to trigger from outside.
#[test]
#[cfg_attr(
    feature = "fault-injection",
    ignore = "a build without fault-injection"
)]
fn without_the_feature_the_fault_variable_does_nothing() {
    let model = tiny_llama();
    let s = Spawned::start(
        &["-m", model.to_str().unwrap()],
        &[(FAULTS, "handler_panic,loader_panic=tiny-llama")],
    );
    s.wait_ready();
    let r = Conn::open(s.addr).request("POST", "/debug/panic", &[], b"{}");
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection"
)]
fn a_handler_panic_is_a_500_for_that_request_and_the_server_lives() {
    let model = tiny_llama();
    // RUST_BACKTRACE=0: the panic hook's one line, not the default hook's backtrace.
    let s = Spawned::start(
        &["-m", model.to_str().unwrap()],
        &[(FAULTS, "handler_panic"), ("RUST_BACKTRACE", "0")],
    );
    s.wait_ready();
    let mut c = Conn::open(s.addr);
    let r = c.request("POST", "/debug/panic", &[], b"{}");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "server_error");
    // The same connection and worker go on.
    let r = c.post(
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 4}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let page = get(s.addr, "/metrics").text();
    assert_eq!(
        server_support::metric(&page, "ryzanstein_handler_panics_total"),
        Some(1.0)
    );
    let log = s.stderr.lock().unwrap().clone();
    let panic_line = log
        .lines()
        .find(|l| l.contains("panic: a panic requested through /debug/panic"))
        .unwrap_or_else(|| panic!("no panic line:\n{log}"));
    assert!(panic_line.contains("thread=\"http-"), "{panic_line}");
    assert!(log.contains("note=\"handler panicked\""), "{log}");
}

/// Two copies of the tiny Llama, `a` and `b`, served from a directory with `faults`.
fn two_models(faults: &str, extra: &[&str]) -> (TempDir, Spawned) {
    let dir = TempDir::new("panic");
    for id in ["a", "b"] {
        std::fs::copy(tiny_llama(), dir.path().join(format!("{id}.gguf"))).unwrap();
    }
    let s = serve_dir(dir.path(), extra, &[(FAULTS, faults)]);
    (dir, s)
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection"
)]
fn a_dispatcher_panic_ends_its_streams_with_an_error_and_fails_the_model_until_reloaded() {
    // The batch window puts the four streams into the same first step.
    let (_dir, s) = two_models("dispatcher_panic=a@5", &["--batch-window-ms", "1000"]);
    assert_eq!(admin(s.addr, "a", "load"), 202);
    wait_state(s.addr, "a", "loaded");
    let (tx, _rx) = mpsc::channel();
    let body = json!({"model": "a", "prompt": "Hello", "max_tokens": 100, "ignore_eos": true,
                      "stream": true});
    let streams: Vec<_> = (0..4)
        .map(|_| spawn_stream(s.addr, body.clone(), tx.clone()))
        .collect();
    for h in streams {
        let end = h.join().unwrap();
        assert_eq!(end.outcome(), "error");
        let msg = end.events.last().unwrap()["error"]["message"].clone();
        assert!(
            msg.as_str().unwrap().contains("the dispatcher panicked"),
            "{msg}"
        );
        assert!(end.events.len() > 1, "tokens came before the panic");
    }
    let m = wait_state(s.addr, "a", "failed");
    let why = m["error"].as_str().unwrap();
    assert!(why.contains("injected fault: dispatcher_panic"), "{why}");
    let (status, body) = complete(s.addr, "a");
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "model_load_failed");
    assert_eq!(complete(s.addr, "b").0, 200, "the other model serves on");
    // Loaded again, it serves (the fault fires once).
    assert_eq!(admin(s.addr, "a", "load"), 202);
    wait_state(s.addr, "a", "loaded");
    assert_eq!(complete(s.addr, "a").0, 200);
    let log = s.stderr.lock().unwrap().clone();
    assert!(
        log.contains("the dispatcher panicked: injected fault"),
        "{log}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection"
)]
fn a_dispatcher_panic_with_one_model_file_stops_the_binary_with_exit_1() {
    let model = tiny_llama();
    let mut s = Spawned::start(
        &["-m", model.to_str().unwrap()],
        &[(FAULTS, "dispatcher_panic=tiny-llama@3")],
    );
    s.wait_ready();
    let (tx, _rx) = mpsc::channel();
    let body = json!({"prompt": "Hello", "max_tokens": 100, "ignore_eos": true, "stream": true});
    let end = spawn_stream(s.addr, body, tx).join().unwrap();
    assert_eq!(end.outcome(), "error");
    let code = exit_code(&mut s);
    let log = s.stderr.lock().unwrap().clone();
    assert_eq!(code, Some(1), "{log}");
    let last = log.lines().last().unwrap();
    assert!(
        last.starts_with("error: ") && last.contains("the dispatcher panicked"),
        "{log}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection"
)]
fn a_loader_panic_fails_the_model_with_the_reason_and_a_new_load_succeeds() {
    let (_dir, s) = two_models("loader_panic=a", &[]);
    let (status, body) = complete(s.addr, "a");
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "model_load_failed");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("the loader panicked: injected fault: loader_panic"),
        "{msg}"
    );
    assert_eq!(model(s.addr, "a")["state"], "failed");
    assert_eq!(complete(s.addr, "b").0, 200, "the other model serves on");
    assert_eq!(admin(s.addr, "a", "load"), 202);
    wait_state(s.addr, "a", "loaded");
    assert_eq!(complete(s.addr, "a").0, 200);
    drop(s);
    // With one model file, the binary stops: one error line, exit 1.
    let model = tiny_llama();
    let (code, log) = serve_to_exit(
        &["-m", model.to_str().unwrap()],
        &[(FAULTS, "loader_panic=tiny-llama")],
    );
    assert_eq!(code, Some(1), "{log}");
    let last = log.lines().last().unwrap();
    assert!(
        last.starts_with("error: ") && last.contains("the loader panicked"),
        "{log}"
    );
    assert!(log.contains("load failed: the loader panicked"), "{log}");
}
