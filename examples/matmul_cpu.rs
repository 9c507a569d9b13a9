//! CPU time per batched matmul on the Gemma 3 270M layer shapes, on a one-thread pool, measured
//! with the thread's CPU clock (CLOCK_THREAD_CPUTIME_ID) so that other processes on a shared
//! machine change the figures far less than wall-clock timing would. Prints nanoseconds per
//! call, per (weight row × activation row) pair, and GFLOP/s of CPU time, the minimum of several runs.
//!
//!   cargo run --release --example matmul_cpu [-- B...]   (default batch sizes: 1 8 16 20)

use ryzanstein::kernels::{matmul, GgmlType};

#[path = "../benches/support/inputs.rs"]
mod inputs;
use inputs::{acts, weights, Rng};

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    let batches: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("batch sizes are integers"))
        .collect();
    let batches = if batches.is_empty() {
        vec![1, 8, 16, 20]
    } else {
        batches
    };
    let shapes = [
        ("Q8_0 640x16384 (output)", GgmlType::Q8_0, 640, 16384),
        ("Q5_0 640x2048 (ffn_gate/up)", GgmlType::Q5_0, 640, 2048),
        ("Q4_K 2048x640 (ffn_down)", GgmlType::Q4_K, 2048, 640),
        ("Q6_K 2048x640 (ffn_down)", GgmlType::Q6_K, 2048, 640),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let mut rng = Rng(7);
    println!(
        "{:<30} {:>3} {:>12} {:>10} {:>8}",
        "shape", "B", "ns/call", "ns/pair", "GFLOP/s"
    );
    for (name, ty, n_in, n_out) in shapes {
        let w = weights(&mut rng, ty, n_in * n_out);
        for &b in &batches {
            let a = acts(&mut rng, ty, n_in, b);
            let mut out = vec![0f32; b * n_out];
            let reps = (2_000_000_000 / (n_in * n_out * b)).max(3);
            let best = (0..5)
                .map(|_| {
                    pool.install(|| {
                        let t0 = thread_cpu_ns();
                        for _ in 0..reps {
                            matmul(ty, &w, n_in, n_out, &a, b, &mut out);
                        }
                        (thread_cpu_ns() - t0) as f64 / reps as f64
                    })
                })
                .fold(f64::INFINITY, f64::min);
            let pairs = (n_out * b) as f64;
            let gflops = 2.0 * (n_in * n_out * b) as f64 / best;
            println!(
                "{name:<30} {b:>3} {best:>12.0} {:>10.1} {gflops:>8.1}",
                best / pairs
            );
        }
    }
}
