//! Metric primitives shared by the engine and the server: lock-free counters and fixed-bucket
//! histograms, rendered in the Prometheus text format (version 0.0.4).
//!
//! Layer 0: no dependencies inside the crate. Recording is a few relaxed atomic adds, so the
//! dispatcher can record on its hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram over fixed upper bounds (`le`), Prometheus-style (cumulative when rendered).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound plus the `+Inf` bucket; not cumulative.
    counts: Vec<AtomicU64>,
    /// Sum of observations, as f64 bits updated by compare-and-swap.
    sum_bits: AtomicU64,
    count: AtomicU64,
}

/// Bounds in seconds for latencies from 1 ms to 60 s.
pub const LATENCY_BOUNDS_S: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];

/// Bounds for counts such as batch sizes (tokens or sequences per step).
pub const SIZE_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum_bits.load(Ordering::Relaxed))
    }

    /// Appends `name_bucket{labels,le=..}`, `name_sum` and `name_count` lines. `labels` is
    /// either empty or `key="value",...` without braces.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0u64;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum());
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), cum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inclusive() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        let mut s = String::new();
        h.render(&mut s, "x", "");
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"2\"} 3\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 4\n"), "{s}");
        assert!(s.contains("x_sum 6\n"), "{s}");
        assert!(s.contains("x_count 4\n"), "{s}");
    }
}
