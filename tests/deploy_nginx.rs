//! Scale-out behind nginx: the shipped `deploy/nginx.conf`, with this test's ports put in
//! place of its replica and listen addresses, runs as this test's child in front of two real
//! `ryzanstein serve` replicas on the tiny fixture model.
//!
//! - SIGKILL one replica under load: no non-streaming request fails at the client (nginx
//!   passes the requests that got no answer to the other replica).
//! - A replica still loading its model answers 503 and nginx keeps the traffic on the ready
//!   one; once that replica has loaded, it gets traffic again.
//! - Sticky sessions (for the replicas' prefix cache): every request with the same
//!   `X-Session-Id` lands on the same replica, different ids spread over both, and requests
//!   without the header go round-robin. SIGKILL of a session's replica moves the session to
//!   the other one without failing a request.
//!
//! Skipped (with a message) only when nginx is not installed; `scripts/test.sh` installs it.

mod common;
mod server_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server_support::*;

/// The addresses in `deploy/nginx.conf` that the test replaces: replica A, replica B, the
/// proxy's own.
const CONF_REPLICA_A: &str = "server 127.0.0.1:8081 ";
const CONF_REPLICA_B: &str = "server 127.0.0.1:8082 ";
const CONF_LISTEN: &str = "listen 127.0.0.1:8080;";
/// `fail_timeout` in deploy/nginx.conf: how long a replica that failed is left out.
const FAIL_TIMEOUT: Duration = Duration::from_secs(2);
/// The request header deploy/nginx.conf hashes on to keep a conversation on one replica.
const SESSION_HEADER: &str = "X-Session-Id";

fn tiny_model() -> PathBuf {
    common::fixtures_dir().join("tiny-llama.gguf")
}

/// The nginx binary, or `None` (the caller skips) when it is not installed.
fn nginx_binary() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("nginx"))
            .find(|f| f.is_file())
    });
    from_path.or_else(|| {
        let sbin = PathBuf::from("/usr/sbin/nginx");
        sbin.is_file().then_some(sbin)
    })
}

macro_rules! nginx_or_skip {
    () => {
        match nginx_binary() {
            Some(n) => n,
            None => {
                eprintln!(
                    "SKIPPED: nginx is not installed (scripts/test.sh installs the Debian \
                     package nginx-light)"
                );
                return;
            }
        }
    };
}

/// A directory under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "ryz-nginx-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create a temp dir");
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// deploy/nginx.conf with the test's addresses: each placeholder must be there exactly once,
/// so the shipped file cannot drift from the tested one.
fn templated_conf(a: SocketAddr, b: SocketAddr, listen: u16) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf");
    let mut text = std::fs::read_to_string(path).expect("deploy/nginx.conf");
    for (from, to) in [
        (CONF_REPLICA_A, format!("server {a} ")),
        (CONF_REPLICA_B, format!("server {b} ")),
        (CONF_LISTEN, format!("listen 127.0.0.1:{listen};")),
    ] {
        assert_eq!(
            text.matches(from).count(),
            1,
            "{from:?} in deploy/nginx.conf"
        );
        text = text.replace(from, &to);
    }
    text
}

/// nginx in the foreground, with its pid file, logs and temp files in its own directory.
/// Dropped: SIGTERM to its master (which stops its workers), SIGKILL if it lingers.
struct Nginx {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx on a free port in front of replicas `a` and `b`; retries with another
    /// port if the one picked was taken in between.
    fn start(bin: &Path, a: SocketAddr, b: SocketAddr) -> Nginx {
        for _ in 0..3 {
            let port = free_port();
            let dir = TempDir::new("proxy");
            for sub in ["logs", "temp"] {
                std::fs::create_dir_all(dir.0.join(sub)).expect("mkdir");
            }
            let conf = dir.0.join("nginx.conf");
            std::fs::write(&conf, templated_conf(a, b, port)).expect("write the conf");
            let child = Command::new(bin)
                .arg("-p")
                .arg(&dir.0)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(dir.0.join("logs/error.log"))
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx");
            let mut n = Nginx { child, port, dir };
            if n.wait_listening() {
                return n;
            }
            eprintln!("nginx did not start on {port}:\n{}", n.error_log());
        }
        panic!("nginx would not start");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if TcpStream::connect(self.addr()).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(&self.child, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `sig` to this one child process, by its pid.
fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One request over a keep-alive connection to the proxy; any I/O error or malformed answer
/// is an `Err` (counted as a failed request), never a panic.
struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client { addr, conn: None }
    }

    fn post(&mut self, path: &str, body: &Value) -> Result<(u16, Vec<u8>), String> {
        self.post_in(None, path, body)
    }

    /// A POST that carries `X-Session-Id: session` when `session` is given.
    fn post_in(
        &mut self,
        session: Option<&str>,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Vec<u8>), String> {
        let body = body.to_string();
        let session = session
            .map(|id| format!("{SESSION_HEADER}: {id}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n\
             {session}Content-Length: {}\r\n\r\n",
            body.len()
        );
        let r = self.exchange(head.as_bytes(), body.as_bytes());
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn exchange(&mut self, head: &[u8], body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(IO_TIMEOUT))
                .map_err(|e| e.to_string())?;
            self.conn = Some(BufReader::new(s));
        }
        let r = self.conn.as_mut().expect("connected");
        let w = r.get_mut();
        w.write_all(head)
            .and_then(|_| w.write_all(body))
            .map_err(|e| format!("write: {e}"))?;
        read_response(r)
    }
}

fn read_line(r: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut l = String::new();
    match r.read_line(&mut l) {
        Ok(0) => Err("connection closed".into()),
        Ok(_) => Ok(l.trim_end_matches(['\r', '\n']).to_string()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Status and body of one response (Content-Length or chunked).
fn read_response(r: &mut BufReader<TcpStream>) -> Result<(u16, Vec<u8>), String> {
    let status_line = read_line(r)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        let l = read_line(r)?;
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or("bad header")?;
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse::<usize>().ok(),
            "transfer-encoding" => chunked = v.contains("chunked"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let n = usize::from_str_radix(read_line(r)?.trim(), 16).map_err(|e| e.to_string())?;
            let mut data = vec![0; n + 2];
            r.read_exact(&mut data).map_err(|e| format!("chunk: {e}"))?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&data[..n]);
        }
    } else {
        body.resize(length.ok_or("no length")?, 0);
        r.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
    }
    Ok((status, body))
}

fn completion_body(stream: bool) -> Value {
    // 128 tokens whatever the model says (ignore_eos): long enough that a kill finds
    // requests in flight.
    json!({"model": "tiny-llama", "prompt": [1000, 870, 897, 124], "max_tokens": 128,
           "ignore_eos": true, "temperature": 0, "stream": stream})
}

/// The completion's text from a 200, else a description of what came back.
fn completion_text(r: Result<(u16, Vec<u8>), String>) -> Result<String, String> {
    let (status, body) = r?;
    let text = String::from_utf8_lossy(&body).into_owned();
    if status != 200 {
        return Err(format!("{status}: {text}"));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    v["choices"][0]["text"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no text: {text}"))
}

/// Completion requests to `replica` answered 200 and 503, from its request log.
fn served(replica: &Spawned) -> (usize, usize) {
    let log = replica.stderr.lock().unwrap();
    let count = |status: &str| {
        log.matches(&format!("route=\"/v1/completions\" status={status}"))
            .count()
    };
    (count("200"), count("503"))
}

/// Generation requests replica `addr` is serving now.
fn in_flight(addr: SocketAddr) -> f64 {
    let page = Conn::open(addr).request("GET", "/metrics", &[], b"").text();
    metric(&page, "ryzanstein_requests_in_flight").unwrap_or(0.0)
}

/// How much load one client thread sends: at least `requests`, and more until `time_min`
/// has passed (at most ten times `requests`).
#[derive(Clone, Copy)]
struct Amount {
    requests: usize,
    time_min: Duration,
}

impl Amount {
    fn count(requests: usize) -> Amount {
        Amount {
            requests,
            time_min: Duration::ZERO,
        }
    }

    fn more(&self, sent: usize, t0: Instant) -> bool {
        sent < self.requests || (t0.elapsed() < self.time_min && sent < 10 * self.requests)
    }
}

/// `threads` clients send `amount` requests each through `proxy`, all in `session` if one is
/// given; every text must equal `expected`. Returns the failures (a description each). `done`
/// counts finished requests.
fn load(
    proxy: SocketAddr,
    threads: usize,
    amount: Amount,
    session: Option<&str>,
    expected: &str,
    done: &Arc<AtomicUsize>,
) -> Vec<std::thread::JoinHandle<Vec<String>>> {
    let t0 = Instant::now();
    (0..threads)
        .map(|_| {
            let (done, expected) = (done.clone(), expected.to_string());
            let session = session.map(str::to_string);
            std::thread::spawn(move || {
                let mut c = Client::new(proxy);
                let mut failures = Vec::new();
                let mut sent = 0;
                while amount.more(sent, t0) {
                    sent += 1;
                    let body = completion_body(false);
                    match completion_text(c.post_in(session.as_deref(), "/v1/completions", &body)) {
                        Ok(t) if t == expected => {}
                        Ok(t) => failures.push(format!("wrong text {t:?}")),
                        Err(e) => failures.push(e),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        })
        .collect()
}

fn join_all(handles: Vec<std::thread::JoinHandle<Vec<String>>>) -> Vec<String> {
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect()
}

fn tiny_replica() -> Spawned {
    let model = tiny_model();
    let s = Spawned::start(&["-m", model.to_str().unwrap(), "--load-wait-ms", "0"], &[]);
    s.wait_ready();
    s
}

/// The text of the test prompt, straight from a replica (no proxy).
fn direct_text(replica: &Spawned) -> String {
    completion_text(Client::new(replica.addr).post("/v1/completions", &completion_body(false)))
        .expect("the replica answers")
}

#[test]
fn sigkill_of_a_replica_under_load_loses_no_request() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 60;
    let bin = nginx_or_skip!();
    let mut a = tiny_replica();
    let b = tiny_replica();
    let expected = direct_text(&a);
    let proxy = Nginx::start(&bin, a.addr, b.addr);

    // Streaming passes through unbuffered and whole: the same text as the JSON answer.
    let mut c = Conn::open(proxy.addr());
    let (status, headers, events) = {
        c.send(
            "POST",
            "/v1/completions",
            &[],
            completion_body(true).to_string().as_bytes(),
        );
        c.read_sse()
    };
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream")));
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("data: [DONE]"));
    let streamed: String = data_events(&events)
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(streamed, expected, "streamed through nginx");

    let done = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let clients = load(
        proxy.addr(),
        THREADS,
        Amount::count(PER_THREAD),
        None,
        &expected,
        &done,
    );
    // Kill A a third of the way in, while it has requests in flight.
    let third = THREADS * PER_THREAD / 3;
    while (done.load(Ordering::Relaxed) < third || in_flight(a.addr) < 1.0)
        && t0.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (a_before, _) = served(&a);
    let (b_before, _) = served(&b);
    a.child.kill().expect("SIGKILL replica A");
    let _ = a.child.wait();
    let at_kill = done.load(Ordering::Relaxed);
    let failures = join_all(clients);
    let elapsed = t0.elapsed();
    let (b_after, _) = served(&b);
    let nginx_log = proxy.error_log();
    // nginx's words for a request in flight when its replica died, and for the connections
    // it then tried: each one was passed to B.
    let cut = nginx_log.matches("prematurely closed").count()
        + nginx_log.matches("reset by peer").count();
    let refused = nginx_log.matches("Connection refused").count();
    eprintln!(
        "{} requests in {:.1} s through nginx; A killed after {at_kill} (A had served {a_before}, \
         B {b_before}); B served {} after; nginx retried {cut} requests cut by the kill and \
         {refused} refused connections; failures: {}",
        THREADS * PER_THREAD,
        elapsed.as_secs_f64(),
        b_after - b_before,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}\nnginx error log:\n{}",
        failures.len(),
        THREADS * PER_THREAD,
        &failures[..failures.len().min(5)],
        proxy.error_log()
    );
    assert!(
        a_before > 0 && b_before > 0,
        "both replicas served before the kill"
    );
    assert!(at_kill < THREADS * PER_THREAD, "A was killed mid-run");
    assert!(
        cut > 0,
        "a request in flight on A was passed to B:\n{nginx_log}"
    );
    assert!(b_after > b_before, "B took the load after the kill");

    // Both replicas gone: nginx answers a JSON 503 with Retry-After, not an HTML 502.
    drop(b);
    let mut c = Conn::open(proxy.addr());
    let r = c.post("/v1/completions", &completion_body(false));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"]["code"], "service_unavailable");
}

/// A models directory whose `tiny-llama.gguf` is a symlink to a FIFO: its load blocks in
/// open() until the test writes to the FIFO, so the replica stays `loading` exactly as long
/// as the test wants — a model load that takes a while.
fn slow_models_dir(dir: &TempDir) -> (PathBuf, PathBuf) {
    let fifo = dir.0.join("blocked.fifo");
    let ok = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success();
    assert!(ok);
    let models = dir.0.join("models");
    std::fs::create_dir_all(&models).unwrap();
    let link = models.join("tiny-llama.gguf");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    std::fs::write(
        models.join("models.toml"),
        "[[model]]\nid = \"tiny-llama\"\npath = \"tiny-llama.gguf\"\npreload = true\n",
    )
    .unwrap();
    (models, fifo)
}

#[test]
fn a_replica_still_loading_gets_no_traffic_until_it_is_ready() {
    const THREADS: usize = 2;
    const PER_THREAD: usize = 20;
    let bin = nginx_or_skip!();
    let a = tiny_replica();
    let expected = direct_text(&a);
    let dir = TempDir::new("slow");
    let (models, fifo) = slow_models_dir(&dir);
    let b = Spawned::start(
        &[
            "--models-dir",
            models.to_str().unwrap(),
            "--load-wait-ms",
            "0",
        ],
        &[],
    );
    let r = get(b.addr, "/health/ready");
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (503, json!("loading"))
    );
    let proxy = Nginx::start(&bin, a.addr, b.addr);

    // B is loading: every request succeeds (through A), for long enough that nginx tries B
    // again after each fail_timeout.
    let done = Arc::new(AtomicUsize::new(0));
    let amount = Amount {
        requests: PER_THREAD,
        time_min: FAIL_TIMEOUT * 3,
    };
    let failures = join_all(load(proxy.addr(), THREADS, amount, None, &expected, &done));
    let (b_ok, b_turned_away) = served(&b);
    eprintln!(
        "B loading: {} requests through nginx, {} failed; B answered {b_turned_away} with 503 \
         (nginx passed them to A), 200 to {b_ok}",
        done.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}\n{}", proxy.error_log());
    assert_eq!(b_ok, 0);
    assert!(b_turned_away > 0, "nginx tried B and was turned away");
    assert_eq!(
        get(b.addr, "/health/ready").json()["status"],
        "loading",
        "B was loading the whole time"
    );

    // B's load ends (a non-GGUF byte string: it fails), the file becomes the real model and
    // B loads it; once ready, B serves its share again.
    let _ = std::fs::write(&fifo, b"not a gguf file");
    let link = models.join("tiny-llama.gguf");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(tiny_model(), &link).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(b.addr, "/health/ready").status != 200 && Instant::now() < deadline {
        // A failed model is tried again by the admin load route.
        let mut c = Conn::open(b.addr);
        let _ = c.request("POST", "/v1/models/tiny-llama/load", &[], b"");
        std::thread::sleep(Duration::from_millis(100));
    }
    b.wait_ready();
    std::thread::sleep(FAIL_TIMEOUT + Duration::from_millis(500));
    let amount = Amount::count(PER_THREAD);
    let failures = join_all(load(proxy.addr(), THREADS, amount, None, &expected, &done));
    let (b_ok, _) = served(&b);
    eprintln!("B ready: B served {b_ok} of {}", THREADS * PER_THREAD);
    assert!(failures.is_empty(), "{failures:?}\n{}", proxy.error_log());
    assert!(b_ok > 0, "B gets traffic once it is ready");
}

/// What nginx answers itself keeps the API's error shape: a body over the replicas' limit
/// and the admin routes, which the proxy does not pass on.
#[test]
fn the_proxy_answers_its_own_errors_as_json() {
    let bin = nginx_or_skip!();
    let a = tiny_replica();
    let b = tiny_replica();
    let proxy = Nginx::start(&bin, a.addr, b.addr);
    let mut c = Conn::open(proxy.addr());
    c.stream()
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n\
              Content-Length: 2000000\r\n\r\n",
        )
        .unwrap();
    let r = c.read_response();
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "body_too_large");
    let r = Conn::open(proxy.addr()).request("POST", "/v1/models/tiny-llama/unload", &[], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = get(proxy.addr(), "/v1/models");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"][0]["id"], "tiny-llama");
}

/// Which replica served each request, for requests sent one at a time: the completions each
/// replica logged (`served`), waited on until the one new line shows up (a replica may log a
/// request just after its answer has left).
struct Tally<'a> {
    replicas: [&'a Spawned; 2],
    seen: [usize; 2],
}

impl<'a> Tally<'a> {
    /// Starts from what the replicas have logged once `total` completions are in.
    fn new(replicas: [&'a Spawned; 2], total: usize) -> Tally<'a> {
        let mut t = Tally {
            replicas,
            seen: [0, 0],
        };
        t.seen = t.settle(total);
        t
    }

    fn counts(&self) -> [usize; 2] {
        self.replicas.map(|r| served(r).0)
    }

    /// The counts once they add up to `total` (panics after 10 s).
    fn settle(&self, total: usize) -> [usize; 2] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.counts();
            if c[0] + c[1] >= total {
                assert_eq!(c[0] + c[1], total, "completions logged by the replicas");
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "the replicas logged {c:?} completions, not {total}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The replica (0 or 1) that served the one request answered since the last call.
    fn next(&mut self) -> usize {
        let c = self.settle(self.seen[0] + self.seen[1] + 1);
        let i = usize::from(c[1] > self.seen[1]);
        self.seen = c;
        i
    }
}

/// `replica`'s completions once it has logged at least `n` (panics after 10 s).
fn wait_served(replica: &Spawned, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, _) = served(replica);
        if ok >= n {
            return ok;
        }
        assert!(
            Instant::now() < deadline,
            "the replica logged {ok} completions, not {n}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One completion through the proxy, in `session` if given; panics unless it is a 200 with
/// `expected`.
fn turn(c: &mut Client, session: Option<&str>, expected: &str) {
    let text = completion_text(c.post_in(session, "/v1/completions", &completion_body(false)));
    assert_eq!(text.as_deref(), Ok(expected), "session {session:?}");
}

/// The prefix cache pays only if a conversation's turns reach the same replica: nginx hashes
/// `X-Session-Id` (consistently) to pick it. Requests without the header are not all sent to
/// one replica (nginx falls back to round-robin on an empty hash key), and stickiness holds
/// with both kinds interleaved.
#[test]
fn a_session_sticks_to_one_replica_and_requests_without_one_go_round_robin() {
    const SESSIONS_MIN: usize = 8;
    const SESSIONS_MAX: usize = 64;
    const TURNS: usize = 4;
    let bin = nginx_or_skip!();
    let a = tiny_replica();
    let b = tiny_replica();
    let expected = direct_text(&a);
    let proxy = Nginx::start(&bin, a.addr, b.addr);
    let mut tally = Tally::new([&a, &b], 1);
    let mut c = Client::new(proxy.addr());

    // First turns: sessions until both replicas have some (at least SESSIONS_MIN). Where a
    // session lands depends on the replicas' addresses (the hash ring is built from them),
    // which are the test's ephemeral ports.
    let mut home: Vec<(String, usize)> = Vec::new();
    while home.len() < SESSIONS_MIN
        || (home.len() < SESSIONS_MAX
            && !(home.iter().any(|h| h.1 == 0) && home.iter().any(|h| h.1 == 1)))
    {
        let id = format!("conv-{}", home.len());
        turn(&mut c, Some(&id), &expected);
        home.push((id, tally.next()));
    }

    // Later turns, each followed by a request without the header: every turn of a session
    // lands where its first did.
    let mut plain = [0usize; 2];
    let mut plain_order = String::new();
    let mut moved = Vec::new();
    for t in 1..TURNS {
        for (id, replica) in &home {
            turn(&mut c, Some(id), &expected);
            let got = tally.next();
            if got != *replica {
                moved.push(format!(
                    "{id} turn {t}: replica {got}, first turn on {replica}"
                ));
            }
            turn(&mut c, None, &expected);
            let got = tally.next();
            plain[got] += 1;
            plain_order.push(if got == 0 { 'A' } else { 'B' });
        }
    }
    let per_replica = [0, 1].map(|i| home.iter().filter(|h| h.1 == i).count());
    eprintln!(
        "{} sessions × {TURNS} turns: {} on A, {} on B, none moved: {}; {} requests without \
         {SESSION_HEADER}: A {}, B {} ({plain_order})",
        home.len(),
        per_replica[0],
        per_replica[1],
        moved.is_empty(),
        plain[0] + plain[1],
        plain[0],
        plain[1],
    );
    assert!(moved.is_empty(), "sessions moved: {moved:?}");
    assert!(
        per_replica[0] > 0 && per_replica[1] > 0,
        "sessions spread over both replicas: {home:?}"
    );
    let total = plain[0] + plain[1];
    assert!(
        plain[0] >= total / 4 && plain[1] >= total / 4,
        "requests without {SESSION_HEADER} spread over both replicas: {plain:?} ({plain_order})"
    );
}

/// SIGKILL of the replica a session sticks to, with that session's requests in flight: none
/// fails (nginx passes those that got no answer to the next replica on the hash ring), the
/// other replica serves the session from then on, and still does once nginx tries the dead
/// replica again after fail_timeout.
#[test]
fn a_session_moves_to_the_other_replica_when_its_replica_dies() {
    const THREADS: usize = 2;
    const PER_THREAD: usize = 40;
    const SESSION: &str = "conv-failover";
    let bin = nginx_or_skip!();
    let mut replicas = [tiny_replica(), tiny_replica()];
    let expected = direct_text(&replicas[0]);
    let proxy = Nginx::start(&bin, replicas[0].addr, replicas[1].addr);

    // Where the session lives.
    let mut c = Client::new(proxy.addr());
    let (home, before) = {
        let mut tally = Tally::new([&replicas[0], &replicas[1]], 1);
        let homes: Vec<usize> = (0..3)
            .map(|_| {
                turn(&mut c, Some(SESSION), &expected);
                tally.next()
            })
            .collect();
        assert!(homes.iter().all(|h| *h == homes[0]), "sticky: {homes:?}");
        (homes[0], tally.seen)
    };
    let other = 1 - home;

    // The session under load from two clients; its replica is killed with requests in flight.
    let done = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let clients = load(
        proxy.addr(),
        THREADS,
        Amount::count(PER_THREAD),
        Some(SESSION),
        &expected,
        &done,
    );
    let home_addr = replicas[home].addr;
    while (done.load(Ordering::Relaxed) < THREADS * PER_THREAD / 4 || in_flight(home_addr) < 1.0)
        && t0.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let other_at_kill = served(&replicas[other]).0;
    replicas[home]
        .child
        .kill()
        .expect("SIGKILL the session's replica");
    let _ = replicas[home].child.wait();
    let at_kill = done.load(Ordering::Relaxed);
    let failures = join_all(clients);
    // Every request answered after the kill was served by the other replica (less one per
    // client: a request answered by the session's replica just before the kill may be
    // counted as done just after it).
    let other_after = wait_served(
        &replicas[other],
        other_at_kill + (THREADS * PER_THREAD - at_kill).saturating_sub(THREADS),
    );
    let nginx_log = proxy.error_log();
    let cut = nginx_log.matches("prematurely closed").count()
        + nginx_log.matches("reset by peer").count();
    eprintln!(
        "session {SESSION} on replica {home}: killed after {at_kill} of {} requests; the other \
         replica served {} of them after the kill ({cut} cut in flight and passed on); \
         failures: {}",
        THREADS * PER_THREAD,
        other_after - other_at_kill,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}\nnginx error log:\n{nginx_log}",
        failures.len(),
        THREADS * PER_THREAD,
        &failures[..failures.len().min(5)]
    );
    assert_eq!(
        other_at_kill, before[other],
        "before the kill the session's requests all went to its replica"
    );
    assert!(at_kill < THREADS * PER_THREAD, "killed mid-run");
    assert!(cut > 0, "a request in flight was passed on:\n{nginx_log}");

    // Once fail_timeout has passed nginx tries the session's dead replica again, is refused,
    // and passes the request on to the other: still no failure.
    std::thread::sleep(FAIL_TIMEOUT + Duration::from_millis(500));
    let mut c = Client::new(proxy.addr());
    let mut other_count = served(&replicas[other]).0;
    for _ in 0..3 {
        turn(&mut c, Some(SESSION), &expected);
        other_count = wait_served(&replicas[other], other_count + 1);
    }
    let refused = proxy.error_log().matches("Connection refused").count();
    assert!(refused > 0, "nginx tried the dead replica again");
}
