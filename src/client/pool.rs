//! The connection bookkeeping under [`super::Client`]: the checkout semaphore that caps open
//! connections, and a ureq connector that counts every connection it opens and closes.
//!
//! ureq's `Agent` keeps idle keep-alive connections (bounded by count and age) and probes each
//! one before reuse, but it neither caps open connections nor reports anything. So:
//! - [`Semaphore`]: a request holds a [`Permit`] from before it checks a connection out of
//!   ureq's pool until its body is read to the end (when ureq returns the connection). With
//!   `max_connections` permits, at most that many connections are ever in use, and since a
//!   new connection is opened only when no idle one is left, at most that many are open.
//! - [`CountingConnector`]: wraps ureq's `TcpConnector`; each transport it makes is a
//!   [`Counted`] that bumps `opened` when made and `closed` when dropped, and marks the
//!   current thread so the caller knows whether its request got a fresh connection (ureq runs
//!   the connector on the calling thread). A probe that finds a pooled connection dead counts
//!   as `stale_dropped`.
//!
//! **Boundary:** this module uses ureq's `unversioned::transport` API, which is outside
//! semver; Cargo.toml pins ureq's exact version for that reason.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, NextTimeout, TcpConnector, Transport,
};

thread_local! {
    /// Connections opened by this thread since [`take_opened_here`] last ran.
    static OPENED_HERE: Cell<u32> = const { Cell::new(0) };
}

/// How many connections this thread opened since the last call (and resets the count).
pub(crate) fn take_opened_here() -> u32 {
    OPENED_HERE.with(|c| c.replace(0))
}

/// Counters shared by the connector, its transports and the client.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    pub requests: AtomicU64,
    pub reused: AtomicU64,
    pub stale_dropped: AtomicU64,
    pub stale_retries: AtomicU64,
    pub checkouts: AtomicU64,
    pub checkout_timeouts: AtomicU64,
    pub checkout_wait_ns_total: AtomicU64,
    pub checkout_wait_ns_max: AtomicU64,
}

/// A snapshot of the pool's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct PoolStats {
    /// TCP connections opened.
    pub opened: u64,
    /// TCP connections closed (idle ones evicted, dead ones dropped, abandoned streams).
    pub closed: u64,
    /// Requests sent (a transparent retry counts once more).
    pub requests: u64,
    /// Requests that went out on a pooled connection rather than a fresh one.
    pub reused: u64,
    /// Pooled connections found closed by the probe before reuse and dropped.
    pub stale_dropped: u64,
    /// Requests retried once on a fresh connection after a pooled one failed.
    pub stale_retries: u64,
    /// Permits handed out.
    pub checkouts: u64,
    /// Checkouts that gave up after `checkout_timeout`.
    pub checkout_timeouts: u64,
    /// Total and longest wait for a permit.
    pub checkout_wait_total: Duration,
    pub checkout_wait_max: Duration,
}

impl PoolStats {
    /// Connections open now (opened − closed).
    pub fn open(&self) -> u64 {
        self.opened.saturating_sub(self.closed)
    }

    /// Share of requests that reused a pooled connection (0 when none was sent).
    pub fn reuse_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.reused as f64 / self.requests as f64
        }
    }

    /// Mean wait for a permit.
    pub fn checkout_wait_mean(&self) -> Duration {
        if self.checkouts == 0 {
            Duration::ZERO
        } else {
            self.checkout_wait_total / self.checkouts as u32
        }
    }
}

impl Counters {
    pub fn snapshot(&self) -> PoolStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolStats {
            opened: get(&self.opened),
            closed: get(&self.closed),
            requests: get(&self.requests),
            reused: get(&self.reused),
            stale_dropped: get(&self.stale_dropped),
            stale_retries: get(&self.stale_retries),
            checkouts: get(&self.checkouts),
            checkout_timeouts: get(&self.checkout_timeouts),
            checkout_wait_total: Duration::from_nanos(get(&self.checkout_wait_ns_total)),
            checkout_wait_max: Duration::from_nanos(get(&self.checkout_wait_ns_max)),
        }
    }
}

/// A counting semaphore with a timed acquire.
#[derive(Debug)]
pub(crate) struct Semaphore {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Semaphore {
    pub fn new(permits: usize) -> Semaphore {
        Semaphore {
            free: Mutex::new(permits),
            freed: Condvar::new(),
        }
    }

    /// Takes a permit, waiting at most `timeout`; records the wait in `counters`.
    pub fn acquire(
        self: &Arc<Self>,
        timeout: Duration,
        counters: &Counters,
    ) -> Result<Permit, Duration> {
        let t0 = Instant::now();
        let deadline = t0 + timeout;
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            let now = Instant::now();
            if now >= deadline {
                counters.checkout_timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(now - t0);
            }
            free = self
                .freed
                .wait_timeout(free, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *free -= 1;
        drop(free);
        let waited = t0.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        counters.checkouts.fetch_add(1, Ordering::Relaxed);
        counters
            .checkout_wait_ns_total
            .fetch_add(waited, Ordering::Relaxed);
        counters
            .checkout_wait_ns_max
            .fetch_max(waited, Ordering::Relaxed);
        Ok(Permit { sem: self.clone() })
    }
}

/// The right to use one connection; given back when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    sem: Arc<Semaphore>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut free = self.sem.free.lock().unwrap_or_else(|e| e.into_inner());
        *free += 1;
        drop(free);
        self.sem.freed.notify_one();
    }
}

/// ureq's TCP connector, counting what it opens.
pub(crate) struct CountingConnector {
    tcp: TcpConnector,
    counters: Arc<Counters>,
}

impl CountingConnector {
    pub fn new(counters: Arc<Counters>) -> CountingConnector {
        CountingConnector {
            tcp: TcpConnector::default(),
            counters,
        }
    }
}

impl fmt::Debug for CountingConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingConnector").finish()
    }
}

impl Connector<()> for CountingConnector {
    type Out = Counted;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<()>,
    ) -> Result<Option<Counted>, ureq::Error> {
        let Some(inner) = Connector::<()>::connect(&self.tcp, details, chained)? else {
            return Ok(None);
        };
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
        OPENED_HERE.with(|c| c.set(c.get() + 1));
        Ok(Some(Counted {
            inner: Box::new(inner),
            counters: self.counters.clone(),
        }))
    }
}

/// One TCP connection; counts itself closed when ureq drops it.
pub(crate) struct Counted {
    inner: Box<dyn Transport>,
    counters: Arc<Counters>,
}

impl fmt::Debug for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.counters.closed.fetch_add(1, Ordering::Relaxed);
    }
}

impl Transport for Counted {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.inner.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.inner.await_input(timeout)
    }

    /// ureq asks before it pools a connection and before it reuses one: a non-blocking read
    /// that must find nothing to read (EOF or stray bytes mean the connection is dead).
    fn is_open(&mut self) -> bool {
        let open = self.inner.is_open();
        if !open {
            self.counters.stale_dropped.fetch_add(1, Ordering::Relaxed);
        }
        open
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semaphore_caps_and_times_out() {
        let c = Counters::default();
        let s = Arc::new(Semaphore::new(2));
        let a = s.acquire(Duration::from_millis(10), &c).unwrap();
        let _b = s.acquire(Duration::from_millis(10), &c).unwrap();
        let waited = s.acquire(Duration::from_millis(20), &c).unwrap_err();
        assert!(waited >= Duration::from_millis(20), "{waited:?}");
        drop(a);
        let _c = s.acquire(Duration::from_millis(10), &c).unwrap();
        let st = c.snapshot();
        assert_eq!((st.checkouts, st.checkout_timeouts), (3, 1));
    }

    #[test]
    fn a_waiting_checkout_wakes_when_a_permit_returns() {
        let c = Arc::new(Counters::default());
        let s = Arc::new(Semaphore::new(1));
        let held = s.acquire(Duration::from_millis(10), &c).unwrap();
        let (s2, c2) = (s.clone(), c.clone());
        let t = std::thread::spawn(move || s2.acquire(Duration::from_secs(10), &c2).is_ok());
        std::thread::sleep(Duration::from_millis(30));
        drop(held);
        assert!(t.join().unwrap());
        assert!(c.snapshot().checkout_wait_max >= Duration::from_millis(20));
    }

    #[test]
    fn stats_rates() {
        let st = PoolStats {
            opened: 3,
            closed: 1,
            requests: 100,
            reused: 97,
            checkouts: 4,
            checkout_wait_total: Duration::from_millis(8),
            ..PoolStats::default()
        };
        assert_eq!(st.open(), 2);
        assert!((st.reuse_rate() - 0.97).abs() < 1e-12);
        assert_eq!(st.checkout_wait_mean(), Duration::from_millis(2));
        assert_eq!(PoolStats::default().reuse_rate(), 0.0);
    }
}
