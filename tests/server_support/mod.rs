//! Helpers for the server tests: start the server (in-process on 127.0.0.1:0, or the real
//! binary), and a minimal HTTP/1.1 client over one `TcpStream` so tests control connections,
//! framing and timing exactly.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ryzanstein::config::ServeConfig;
use ryzanstein::server::{Server, ServerOptions};
use serde_json::Value;

/// Every read in these tests gives up after this long (no test can hang).
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// A small configuration for tests: 2 compute threads, short context.
pub fn test_config() -> ServeConfig {
    let mut c = ServeConfig {
        listen: "127.0.0.1:0".into(),
        threads: 2,
        ..ServeConfig::default()
    };
    c.engine.n_ctx = 1024;
    c
}

/// Starts the server in-process on the default model and waits until it is ready.
pub fn start(config: ServeConfig, panic_route: bool) -> Server {
    start_model(config, super::common::default_model_path(), panic_route)
}

/// The tiny Llama fixture: for serving tests that need a real model but not real text (it
/// loads in milliseconds and decodes over a thousand tokens a second).
pub fn tiny_model_path() -> std::path::PathBuf {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/fixtures/tiny-llama.gguf"
    )
    .into()
}

/// Starts the server in-process on the model file `model_path` and waits until it is ready.
pub fn start_model(
    config: ServeConfig,
    model_path: std::path::PathBuf,
    panic_route: bool,
) -> Server {
    let s = Server::start(ServerOptions {
        config,
        model_path,
        catalog: None,
        panic_route,
    })
    .expect("server starts");
    assert!(
        s.wait_ready(Duration::from_secs(120)),
        "model loads: {:?}",
        s.load_error()
    );
    s
}

/// The tiny Llama fixture (random weights, 2 layers of 64): for tests of the serving machinery,
/// where the model's cost should be small.
pub fn tiny_llama_path() -> std::path::PathBuf {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/fixtures/tiny-llama.gguf"
    )
    .into()
}

/// Starts the server in-process on the tiny Llama and waits until it is ready.
pub fn start_tiny(config: ServeConfig) -> Server {
    let s = Server::start(ServerOptions {
        config,
        model_path: tiny_llama_path(),
        catalog: None,
        panic_route: false,
    })
    .expect("server starts");
    assert!(
        s.wait_ready(Duration::from_secs(60)),
        "model loads: {:?}",
        s.load_error()
    );
    s
}

/// Header (lowercase name, value) pairs.
pub type Headers = Vec<(String, String)>;
/// SSE events with the time each arrived.
pub type Events = Vec<(Instant, String)>;

/// An HTTP response read off the wire.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One client connection.
pub struct Conn {
    pub r: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            r: BufReader::new(s),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        self.r.get_ref()
    }

    /// Writes a request with a body and the given extra header lines.
    pub fn send(&mut self, method: &str, path: &str, extra: &[&str], body: &[u8]) {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for h in extra {
            head.push_str(h);
            head.push_str("\r\n");
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str("\r\n");
        let s = self.r.get_mut();
        s.write_all(head.as_bytes()).expect("write head");
        s.write_all(body).expect("write body");
        s.flush().unwrap();
    }

    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("read line");
        l.trim_end_matches(['\r', '\n']).to_string()
    }

    /// Status and headers.
    pub fn read_head(&mut self) -> (u16, Headers) {
        let status_line = self.line();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let l = self.line();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').expect("header line");
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        (status, headers)
    }

    /// One chunk of a chunked body; `None` at the last (empty) chunk.
    pub fn read_chunk(&mut self) -> Option<Vec<u8>> {
        let size = self.line();
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        let mut data = vec![0; n + 2];
        self.r.read_exact(&mut data).expect("chunk data");
        data.truncate(n);
        if n == 0 {
            None
        } else {
            Some(data)
        }
    }

    /// A whole response.
    pub fn read_response(&mut self) -> Response {
        let (status, headers) = self.read_head();
        let get = |k: &str| headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.clone());
        let body = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut b = Vec::new();
            while let Some(c) = self.read_chunk() {
                b.extend_from_slice(&c);
            }
            b
        } else if let Some(n) = get("content-length") {
            let mut b = vec![0; n.parse().expect("length")];
            self.r.read_exact(&mut b).expect("body");
            b
        } else {
            let mut b = Vec::new();
            self.r.read_to_end(&mut b).expect("body to EOF");
            b
        };
        Response {
            status,
            headers,
            body,
        }
    }

    pub fn request(&mut self, method: &str, path: &str, extra: &[&str], body: &[u8]) -> Response {
        self.send(method, path, extra, body);
        self.read_response()
    }

    pub fn post(&mut self, path: &str, body: &Value) -> Response {
        self.request("POST", path, &[], body.to_string().as_bytes())
    }

    /// Reads a streamed (chunked SSE) response: head, then every event with the time it
    /// arrived. Ends after the last chunk.
    pub fn read_sse(&mut self) -> (u16, Headers, Events) {
        let (status, headers) = self.read_head();
        let mut events = Vec::new();
        let mut pending = String::new();
        while let Some(c) = self.read_chunk() {
            let at = Instant::now();
            pending.push_str(&String::from_utf8_lossy(&c));
            while let Some(end) = pending.find("\n\n") {
                let ev: String = pending.drain(..end + 2).collect();
                events.push((at, ev.trim_end().to_string()));
            }
        }
        (status, headers, events)
    }
}

/// A one-shot request on a new connection.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Response {
    Conn::open(addr).request(method, path, &[], body)
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, b"")
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Response {
    Conn::open(addr).post(path, body)
}

/// The JSON payloads of `data:` events (without `[DONE]`), in order.
pub fn data_events(events: &[(Instant, String)]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|(_, e)| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("event JSON"))
        .collect()
}

/// The value of a metric line `name{labels} value` (first line starting with `prefix`).
pub fn metric(page: &str, prefix: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The real binary, started with `serve`; killed (by its own pid) when dropped.
pub struct Spawned {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything it wrote to stderr so far.
    pub stderr: Arc<Mutex<String>>,
}

impl Spawned {
    /// Starts `ryzanstein serve --listen 127.0.0.1:0 ARGS` and waits for its "listening" line.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Spawned {
        Spawned::start_wrapped(&[], args, envs)
    }

    /// As [`Spawned::start`], run through `wrapper` (a program and its arguments, given the
    /// binary and its arguments after them; e.g. `sh -c 'ulimit -n 64; exec "$@"' sh`).
    pub fn start_wrapped(wrapper: &[&str], args: &[&str], envs: &[(&str, &str)]) -> Spawned {
        let bin = env!("CARGO_BIN_EXE_ryzanstein");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--threads", "2"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the binary");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().expect("stderr");
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(a.parse::<SocketAddr>().expect("address"));
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no listening line; stderr:\n{}", stderr.lock().unwrap());
            }
        };
        Spawned {
            child,
            addr,
            stderr,
        }
    }

    /// Polls `/health/ready` until 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if get(self.addr, "/health/ready").status == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("not ready; stderr:\n{}", self.stderr.lock().unwrap());
    }

    /// Sends SIGTERM to this child only and waits (bounded) for its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
