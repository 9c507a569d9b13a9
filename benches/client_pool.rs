//! The client's pool (`ryzanstein::client`): taking a connection permit and giving it back,
//! which every request does, and a whole pooled request (checkout, ureq's pool lookup with its
//! liveness probe, one small keep-alive exchange with a local responder, return).
//!
//! Budget: checkout + return ≤ 1 µs uncontended (a mutex and a condvar notify); a pooled
//! round trip on loopback ≤ 200 µs, almost all of it the two socket writes and reads — the
//! pool must never be what a load generator measures.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use criterion::{criterion_group, criterion_main, Criterion};
use ryzanstein::client::{Client, ClientConfig};

const RESPONSE: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"object\":\"list\",\"data\":[]}";

/// A keep-alive server answering every request with a tiny JSON body, one thread per
/// connection; it lives until the bench process ends.
fn responder() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut r = BufReader::new(s);
                let mut line = String::new();
                loop {
                    let mut len = 0usize;
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end().to_ascii_lowercase();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    if r.get_mut().write_all(RESPONSE.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

fn pool(c: &mut Criterion) {
    let client = Client::new(ClientConfig::new(&responder()).with_max_connections(4)).unwrap();
    let mut g = c.benchmark_group("client_pool");
    g.bench_function("checkout_return", |b| {
        b.iter(|| client.checkout_and_return().unwrap())
    });
    client.models().expect("responder answers");
    g.bench_function("pooled_round_trip", |b| b.iter(|| client.models().unwrap()));
    g.finish();
    assert!(client.stats().opened <= 1, "{:?}", client.stats());
}

criterion_group!(benches, pool);
criterion_main!(benches);
