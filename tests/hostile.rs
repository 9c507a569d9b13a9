//! The hostile-input corpus (tests/data/hostile/, written by scripts/make-hostile-corpus.py)
//! replayed against the real binary on the tiny Llama fixture: every file's raw bytes go out
//! on a fresh TCP connection, every answer's status must be the one expect.tsv gives (in
//! order, for pipelined requests), every error must carry an OpenAI-style JSON body, and the
//! server must stay healthy throughout: `/health` between batches, and at the end no running
//! sequence, no request in flight, no KV memory in use, no handler panic, the process alive.

mod common;
mod server_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use server_support::*;

/// One answer waits at most this long: a hang fails the case instead of the whole run.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// `/health` is checked after every this many files.
const HEALTH_EVERY: usize = 20;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hostile")
}

/// (file name, expected statuses, description) from expect.tsv.
fn manifest() -> Vec<(String, Vec<u16>, String)> {
    let text = std::fs::read_to_string(corpus_dir().join("expect.tsv")).expect("expect.tsv");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            let (name, statuses, why) = (f.next(), f.next(), f.next());
            let statuses = match statuses.expect("statuses column") {
                "none" => Vec::new(),
                s => s.split(',').map(|x| x.parse().expect("a status")).collect(),
            };
            (
                name.expect("file").to_string(),
                statuses,
                why.unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// One answer read off the wire.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn read_line(r: &mut BufReader<TcpStream>) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    let n = r
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Ok(None);
    }
    let s = String::from_utf8(line).map_err(|_| "a non-UTF-8 head line".to_string())?;
    Ok(Some(s.trim_end_matches(['\r', '\n']).to_string()))
}

/// The next final answer (1xx interim answers are skipped); `None` at a clean end of stream.
fn read_answer(r: &mut BufReader<TcpStream>) -> Result<Option<Answer>, String> {
    loop {
        let Some(status_line) = read_line(r)? else {
            return Ok(None);
        };
        let status: u16 = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|s| s.get(2..5))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let l = read_line(r)?.ok_or("the head ends early")?;
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').ok_or(format!("bad header {l:?}"))?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        if (100..200).contains(&status) {
            continue;
        }
        let mut a = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        a.body = read_body(r, &a)?;
        return Ok(Some(a));
    }
}

fn read_body(r: &mut BufReader<TcpStream>, a: &Answer) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let io = |e: std::io::Error| format!("body: {e}");
    if a.header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let size = read_line(r)?.ok_or("chunked body ends early")?;
            let n = usize::from_str_radix(size.trim(), 16).map_err(|_| "bad chunk size")?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).map_err(io)?;
            if n == 0 {
                return Ok(body);
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    match a.header("content-length") {
        Some(n) => {
            body.resize(n.parse().map_err(|_| "bad content-length")?, 0);
            r.read_exact(&mut body).map_err(io)?;
        }
        None => {
            r.read_to_end(&mut body).map_err(io)?;
        }
    }
    Ok(body)
}

/// Sends one file's bytes on a fresh connection, half-closes, and reads every answer until
/// the server closes the connection.
fn replay(addr: SocketAddr, raw: &[u8]) -> (Vec<Answer>, Option<String>) {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    let mut w = s.try_clone().unwrap();
    // The server may answer and close before it has read everything (431): a failed write
    // is not a failure of the case, the answers say what happened.
    let _ = w.write_all(raw).and_then(|()| w.flush());
    let _ = s.shutdown(Shutdown::Write);
    let mut r = BufReader::new(s);
    let mut answers = Vec::new();
    loop {
        match read_answer(&mut r) {
            Ok(Some(a)) => answers.push(a),
            Ok(None) => return (answers, None),
            Err(e) => return (answers, Some(e)),
        }
    }
}

/// The answer's body must fit its status: an OpenAI-style error for 4xx/5xx, JSON or a
/// finished event stream for 200.
fn check_body(a: &Answer) -> Result<(), String> {
    let text = String::from_utf8_lossy(&a.body);
    if a.status >= 400 {
        if a.header("content-type") != Some("application/json") {
            return Err(format!(
                "error without a JSON content type: {:?}",
                a.headers
            ));
        }
        let v: Value = serde_json::from_slice(&a.body).map_err(|e| format!("{e}: {text}"))?;
        let e = &v["error"];
        let ok = e["message"].as_str().is_some_and(|m| !m.is_empty())
            && e["type"].is_string()
            && e.get("param").is_some()
            && e.get("code").is_some();
        return if ok {
            Ok(())
        } else {
            Err(format!("not an OpenAI-style error: {text}"))
        };
    }
    match a.header("content-type") {
        Some("application/json") => serde_json::from_slice::<Value>(&a.body)
            .map(|_| ())
            .map_err(|e| format!("{e}: {text}")),
        Some("text/event-stream") if text.trim_end().ends_with("data: [DONE]") => Ok(()),
        other => Err(format!("unexpected 200 answer ({other:?}): {text}")),
    }
}

/// Polls the metrics page until `f` holds (the engine frees a cancelled sequence at its next
/// step), giving up after a few seconds.
fn settled_metrics(addr: SocketAddr, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = get(addr, "/metrics").text();
        if f(&page) || Instant::now() > deadline {
            return page;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_hostile_corpus_gets_the_right_answers_and_the_server_stays_healthy() {
    let cases = manifest();
    assert!(cases.len() >= 200, "{} cases", cases.len());
    let listed: Vec<&str> = cases.iter().map(|(n, _, _)| n.as_str()).collect();
    for f in std::fs::read_dir(corpus_dir()).unwrap() {
        let name = f.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".http") {
            assert!(
                listed.contains(&name.as_str()),
                "{name} is not in expect.tsv"
            );
        }
    }
    let tiny = tiny_model_path();
    let mut server = Spawned::start(
        &["-m", tiny.to_str().unwrap(), "--n-ctx", "1024"],
        &[("RYZANSTEIN_LOG_LEVEL", "warn")],
    );
    server.wait_ready();
    let addr = server.addr;
    let t0 = Instant::now();
    let mut failures = Vec::new();
    let mut n_answers = 0;
    for (i, (name, expected, why)) in cases.iter().enumerate() {
        let raw = std::fs::read(corpus_dir().join(name)).expect("corpus file");
        let (answers, error) = replay(addr, &raw);
        n_answers += answers.len();
        let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        if &statuses != expected || error.is_some() {
            failures.push(format!(
                "{name} ({why}): got {statuses:?}, want {expected:?}{}",
                error.map(|e| format!("; then {e}")).unwrap_or_default()
            ));
        }
        for a in &answers {
            if let Err(e) = check_body(a) {
                failures.push(format!("{name}: {} answer: {e}", a.status));
            }
        }
        if (i + 1) % HEALTH_EVERY == 0 {
            let r = get(addr, "/health");
            assert_eq!(r.status, 200, "after {name}: {}", r.text());
        }
    }
    let took = t0.elapsed();
    eprintln!(
        "{} files, {n_answers} answers in {took:?}; {} failures",
        cases.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let clean = |page: &str| {
        metric(page, "ryzanstein_sequences_running{") == Some(0.0)
            && metric(page, "ryzanstein_kv_cache_bytes_used{") == Some(0.0)
            && metric(page, "ryzanstein_requests_in_flight") == Some(0.0)
    };
    let page = settled_metrics(addr, clean);
    assert!(clean(&page), "leaked sequences or requests:\n{page}");
    assert_eq!(
        metric(&page, "ryzanstein_handler_panics_total"),
        Some(0.0),
        "{page}"
    );
    assert_eq!(get(addr, "/health").status, 200);
    assert!(
        server.child.try_wait().expect("wait").is_none(),
        "the server exited; stderr:\n{}",
        server.stderr.lock().unwrap()
    );
    assert_eq!(server.terminate(), Some(0), "a clean exit on SIGTERM");
}
