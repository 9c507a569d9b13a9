//! The pool under load: 10,000 requests from 64 threads through a client capped at 32
//! connections. The server runs as a separate process (the real binary) so that this
//! process's file descriptors are the client's alone; the connection counts come from the
//! server's own `/metrics`. Alone in its test binary so no other test opens descriptors.
//!
//! Regression: the 32 connections opened in a burst at the start once left some of them
//! accepted but never served (tiny_http's task pool queued them behind threads held by
//! keep-alive connections; `vendor/tiny_http/PATCHES.md` #4). The requests sent on them
//! waited for the 600 s response timeout.

mod common;
mod server_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ryzanstein::client::{Client, ClientConfig};
use server_support::{metric, Spawned};

const REQUESTS: usize = 10_000;
const THREADS: usize = 64;
const CONNECTIONS_MAX: usize = 32;

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

fn scrape(c: &Client) -> (f64, f64) {
    let page = c.get_text("/metrics").expect("metrics");
    let accepted = metric(&page, "ryzanstein_http_connections_accepted_total").expect("accepted");
    let open = metric(&page, "ryzanstein_http_connections_open").expect("open");
    (accepted, open)
}

#[test]
fn ten_thousand_requests_from_64_threads_use_at_most_32_connections() {
    let server = Spawned::start(&[], &[]);
    server.wait_ready();
    let base = format!("http://{}", server.addr);
    // The sampler has its own one-connection client, so it adds exactly one connection.
    let sampler = Client::new(ClientConfig::new(&base).with_max_connections(1)).unwrap();
    let (accepted_before, _) = scrape(&sampler);
    let fds_before = open_fds();

    let mut cfg = ClientConfig::new(&base).with_max_connections(CONNECTIONS_MAX);
    // Bounded: a request the server never answers fails the test instead of hanging it.
    cfg.response_timeout = Duration::from_secs(30);
    let pool = Client::new(cfg).unwrap();
    let next = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let mut open_max = 0.0f64;
    std::thread::scope(|sc| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                sc.spawn(|| {
                    // Stops the watcher even if this worker panics.
                    let _stop = StopOnDrop(&done);
                    while next.fetch_add(1, Ordering::Relaxed) < REQUESTS as u64 {
                        assert_eq!(pool.tokenize("Hello world").expect("tokenize").len(), 3);
                    }
                })
            })
            .collect();
        let watcher = sc.spawn(|| {
            let mut max = 0.0f64;
            while !done.load(Ordering::Relaxed) {
                max = max.max(scrape(&sampler).1);
                std::thread::sleep(Duration::from_millis(50));
            }
            max
        });
        for w in workers {
            w.join().expect("worker");
        }
        done.store(true, Ordering::Relaxed);
        open_max = watcher.join().expect("watcher");
    });
    let st = pool.stats();
    let (accepted_after, _) = scrape(&sampler);
    drop(pool);
    drop(sampler);
    let fds_after = open_fds();

    let server_side = accepted_after - accepted_before;
    eprintln!(
        "{st:?}\nserver: {server_side} connections accepted for the pool, at most {open_max} open \
         (sampler's included); client fds {fds_before} → {fds_after}"
    );
    assert_eq!(st.requests, REQUESTS as u64, "no retries needed");
    assert!(st.opened <= CONNECTIONS_MAX as u64, "{st:?}");
    assert!(
        server_side <= CONNECTIONS_MAX as f64,
        "server counted {server_side} connections"
    );
    assert!(open_max <= (CONNECTIONS_MAX + 1) as f64, "{open_max} open");
    assert!(st.reuse_rate() >= 0.99, "reuse {:.4}", st.reuse_rate());
    assert!(st.checkouts == REQUESTS as u64 && st.checkout_timeouts == 0);
    assert!(
        fds_after <= fds_before,
        "file descriptors grew: {fds_before} → {fds_after}"
    );
}
