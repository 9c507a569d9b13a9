//! What a refusal at the concurrency cap costs: `cargo run --release --example refusal_cost --
//! [CLIENTS...]` (default 1 4 16). Starts the server in-process on the tiny Llama fixture with
//! `max_concurrent_requests = 0`, so every generation request is refused (503), then lets each
//! number of keep-alive clients send requests for two seconds. Prints refusals per second and
//! the process's CPU time per refusal (server and clients together, over loopback).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ryzanstein::config::ServeConfig;
use ryzanstein::server::{Server, ServerOptions};

const BODY: &str = r#"{"prompt": [1000, 870, 897, 124], "max_tokens": 16}"#;
const SECONDS_PER_LEVEL: f64 = 2.0;

fn main() -> anyhow::Result<()> {
    let parsed: Result<Vec<usize>, _> = std::env::args().skip(1).map(|a| a.parse()).collect();
    let levels = match parsed {
        Ok(v) if !v.is_empty() => v,
        Ok(_) => vec![1, 4, 16],
        Err(e) => anyhow::bail!("CLIENTS must be numbers: {e}"),
    };
    let mut config = ServeConfig {
        listen: "127.0.0.1:0".into(),
        threads: 2,
        ..ServeConfig::default()
    };
    config.limits.max_concurrent_requests = 0;
    let server = Server::start(ServerOptions {
        config,
        model_path: concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/fixtures/tiny-llama.gguf"
        )
        .into(),
        catalog: None,
        panic_route: false,
    })?;
    anyhow::ensure!(
        server.wait_ready(Duration::from_secs(60)),
        "the model did not load"
    );
    let addr = server.local_addr();
    for clients in levels {
        let refused = AtomicU64::new(0);
        let (cpu0, t0) = (process_cpu_s()?, Instant::now());
        std::thread::scope(|s| {
            for _ in 0..clients {
                s.spawn(|| refuse_until(addr, t0, &refused));
            }
        });
        let (cpu_s, wall_s) = (process_cpu_s()? - cpu0, t0.elapsed().as_secs_f64());
        let n = refused.into_inner() as f64;
        println!(
            "{clients} clients: {:.0} refusals/s, {:.1} µs of CPU each (server and clients)",
            n / wall_s,
            cpu_s / n * 1e6
        );
    }
    server.shutdown();
    Ok(())
}

/// Sends requests on one keep-alive connection until the level's time is up; each must be
/// a 503.
fn refuse_until(addr: SocketAddr, t0: Instant, refused: &AtomicU64) {
    let mut conn = BufReader::new(TcpStream::connect(addr).expect("connect"));
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    while t0.elapsed().as_secs_f64() < SECONDS_PER_LEVEL {
        conn.get_mut().write_all(request.as_bytes()).expect("send");
        let status = read_response(&mut conn);
        assert_eq!(status, 503, "every request is over the cap");
        refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads one response with a `Content-Length` body; returns its status.
fn read_response(conn: &mut BufReader<TcpStream>) -> u16 {
    let mut line = String::new();
    conn.read_line(&mut line).expect("status line");
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0;
    loop {
        line.clear();
        conn.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).expect("body");
    status
}

/// User and system CPU seconds of this process so far.
fn process_cpu_s() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after_name = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks = |i: usize| -> anyhow::Result<f64> { Ok(fields[i].parse::<f64>()?) };
    // utime and stime are fields 14 and 15 of stat(5): 11 and 12 after the name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}
