//! Batched matrix multiply: every weight row dotted with every activation row, parallel over
//! chunks of output rows on the current rayon pool, with the batch as the inner loop so each
//! weight row is streamed from memory once per call. Each output element is computed by the
//! same per-(row, activation) kernel whatever the batch size or chunking, so results are
//! batch- and thread-count-invariant. No heap allocation.

use super::types::GgmlType;
use rayon::prelude::*;

/// Output rows per rayon task: large enough to amortise task overhead, small enough to
/// balance the small (640-row) matrices across cores. 16 beat 64 in `benches/kernels.rs`
/// (Q8_0 640×32768 at B = 1 and 16, Q5_0 640×2048) on a 2-core machine.
const ROWS_PER_TASK: usize = 16;

/// Raw output pointer shared by the tasks.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements (each owns a distinct set of output rows `r`, hence
// distinct indices `b * n_out + r`), and `out` outlives the parallel loop (borrowed mutably
// for the whole of `matmul`).
unsafe impl Send for OutPtr {}
// SAFETY: as above; the pointer is only used for disjoint writes.
unsafe impl Sync for OutPtr {}

/// See [`super::matmul()`].
pub fn matmul(
    wty: GgmlType,
    w: &[u8],
    n_in: usize,
    n_out: usize,
    acts: &[u8],
    n_rows: usize,
    out: &mut [f32],
) {
    assert!(wty.is_weight_type(), "{wty} is not a weight type");
    let wrb = wty
        .row_bytes(n_in)
        .expect("n_in is a whole number of weight blocks");
    let arb = wty
        .vec_dot_type()
        .row_bytes(n_in)
        .expect("activation row size");
    assert_eq!(Some(w.len()), wrb.checked_mul(n_out), "weight matrix size");
    assert_eq!(Some(acts.len()), arb.checked_mul(n_rows), "activation size");
    assert_eq!(Some(out.len()), n_rows.checked_mul(n_out), "output size");
    if n_out == 0 || n_rows == 0 {
        return;
    }
    if n_in == 0 {
        out.fill(0.0);
        return;
    }
    let (dot, dot4, dot8) = super::kernels_for_all(wty);
    run(dot, dot4, dot8, w, wrb, n_in, n_out, acts, arb, out);
}

/// The parallel loop of [`matmul`] with its kernels chosen (and sizes checked) by the caller.
#[allow(clippy::too_many_arguments)]
fn run(
    dot: super::DotFn,
    dot4: Option<super::Dot4Fn>,
    dot8: Option<super::Dot8Fn>,
    w: &[u8],
    wrb: usize,
    n_in: usize,
    n_out: usize,
    acts: &[u8],
    arb: usize,
    out: &mut [f32],
) {
    let n_rows = acts.len() / arb;
    // The SAFETY argument below rests on these; `matmul` checked them already.
    assert!(w.len() >= wrb * n_out && out.len() == n_rows * n_out);
    let ptr = OutPtr(out.as_mut_ptr());
    let n_tasks = n_out.div_ceil(ROWS_PER_TASK);
    (0..n_tasks).into_par_iter().for_each(move |t| {
        let ptr = ptr;
        let r_end = ((t + 1) * ROWS_PER_TASK).min(n_out);
        for r in t * ROWS_PER_TASK..r_end {
            let wr = &w[r * wrb..(r + 1) * wrb];
            let act = |b: usize| &acts[b * arb..(b + 1) * arb];
            let store = |b: usize, v: f32| {
                debug_assert!(b < n_rows);
                // SAFETY: b < n_rows and r < n_out, so the index is in bounds of `out`
                // (length n_rows * n_out, asserted); only this task writes output row r.
                unsafe { *ptr.0.add(b * n_out + r) = v }
            };
            let mut b = 0;
            // Groups of 8 and 4 share the weight decoding; those kernels are bit-identical per
            // row to `dot`, so how the batch splits into groups never changes a result.
            if let Some(dot8) = dot8 {
                while b + 8 <= n_rows {
                    let v = dot8(n_in, wr, std::array::from_fn(|k| act(b + k)));
                    for (k, v) in v.into_iter().enumerate() {
                        store(b + k, v);
                    }
                    b += 8;
                }
            }
            if let Some(dot4) = dot4 {
                while b + 4 <= n_rows {
                    let v = dot4(n_in, wr, [act(b), act(b + 1), act(b + 2), act(b + 3)]);
                    for (k, v) in v.into_iter().enumerate() {
                        store(b + k, v);
                    }
                    b += 4;
                }
            }
            while b < n_rows {
                store(b, dot(n_in, wr, act(b)));
                b += 1;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::random_rows::{random_acts, random_row, Rng};
    use super::super::{quantize_row, vec_dot, GgmlType};
    use super::matmul;

    fn setup(ty: GgmlType, n_in: usize, n_out: usize, n_rows: usize) -> (Vec<u8>, Vec<u8>) {
        let mut rng = Rng::new(ty.id() as u64 * 31 + 5);
        let w = random_row(&mut rng, ty, n_in * n_out);
        let at = ty.vec_dot_type();
        let arb = at.row_bytes(n_in).expect("whole blocks");
        let mut acts = vec![0u8; arb * n_rows];
        for row in acts.chunks_exact_mut(arb) {
            quantize_row(at, &random_acts(&mut rng, n_in), row);
        }
        (w, acts)
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn matmul_equals_vec_dot_and_is_batch_invariant() {
        let (n_in, n_out, n_rows) = (512, 37, 32);
        for ty in GgmlType::WEIGHT_TYPES {
            let (w, acts) = setup(ty, n_in, n_out, n_rows);
            let (wrb, arb) = (w.len() / n_out, acts.len() / n_rows);
            let mut out = vec![0f32; n_rows * n_out];
            matmul(ty, &w, n_in, n_out, &acts, n_rows, &mut out);
            for b in 0..n_rows {
                let a = &acts[b * arb..(b + 1) * arb];
                for r in 0..n_out {
                    let want = vec_dot(ty, n_in, &w[r * wrb..(r + 1) * wrb], a);
                    assert_eq!(
                        out[b * n_out + r].to_bits(),
                        want.to_bits(),
                        "{ty} b={b} r={r}"
                    );
                }
                // The same activation row alone gives bit-identical outputs.
                let mut one = vec![0f32; n_out];
                matmul(ty, &w, n_in, n_out, a, 1, &mut one);
                assert_eq!(
                    bits(&one),
                    bits(&out[b * n_out..(b + 1) * n_out]),
                    "{ty} b={b}"
                );
            }
        }
    }

    #[test]
    fn matmul_is_thread_count_invariant() {
        let (n_in, n_out, n_rows) = (512, 100, 4);
        for ty in GgmlType::WEIGHT_TYPES {
            let (w, acts) = setup(ty, n_in, n_out, n_rows);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("thread pool");
                let mut out = vec![0f32; n_rows * n_out];
                pool.install(|| matmul(ty, &w, n_in, n_out, &acts, n_rows, &mut out));
                bits(&out)
            };
            assert_eq!(run(1), run(2), "{ty}");
        }
    }

    /// The scalar kernels through the same parallel loop (the dispatched run above uses AVX2
    /// on capable CPUs): equal to scalar vec_dot bit for bit, so batch-invariant too.
    #[test]
    fn scalar_matmul_matches_scalar_vec_dot() {
        let (n_in, n_out, n_rows) = (512, 21, 6);
        for ty in GgmlType::WEIGHT_TYPES {
            let (w, acts) = setup(ty, n_in, n_out, n_rows);
            let (wrb, arb) = (w.len() / n_out, acts.len() / n_rows);
            let mut out = vec![0f32; n_rows * n_out];
            let dot = super::super::dot_scalar::kernel(ty);
            super::run(dot, None, None, &w, wrb, n_in, n_out, &acts, arb, &mut out);
            for b in 0..n_rows {
                for r in 0..n_out {
                    let want = dot(
                        n_in,
                        &w[r * wrb..(r + 1) * wrb],
                        &acts[b * arb..(b + 1) * arb],
                    );
                    assert_eq!(
                        out[b * n_out + r].to_bits(),
                        want.to_bits(),
                        "{ty} b={b} r={r}"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic]
    fn matmul_rejects_short_output() {
        let (w, acts) = setup(GgmlType::Q8_0, 32, 2, 1);
        let mut out = vec![0f32; 1];
        matmul(GgmlType::Q8_0, &w, 32, 2, &acts, 1, &mut out);
    }
}
