//! Batched matrix multiply: every weight row dotted with every activation row, parallel over
//! chunks of output rows on the current rayon pool. Weight rows are read from memory once per
//! call: a task either takes each of its rows against the whole batch, or (the scaled
//! kernels) takes its rows against one group of 8 or 4 activation rows after another, the rows
//! staying in cache after the first group. Each output element is computed by the
//! same per-(row, activation) kernel whatever the batch size or chunking, so results are
//! batch- and thread-count-invariant. The only heap memory is the group kernel's tables, a
//! per-thread buffer reused from call to call (it allocates when a call needs more room).

use super::group::{GroupKernel, TableBuf, GROUP_MAX};
use super::types::GgmlType;

/// Output rows per rayon task: large enough to amortise task overhead, small enough to
/// balance the small (640-row) matrices across cores. 16 beat 64 in `benches/kernels.rs`
/// (Q8_0 640×32768 at B = 1 and 16, Q5_0 640×2048) on a 2-core machine.
const ROWS_PER_TASK: usize = 16;

/// Output rows per task. With the scaled kernels each task runs its weight rows once per
/// group of 8 (or 4) activation rows, and long runs of rows measured faster than 16-row tasks (the
/// hardware prefetcher streams them): about 8 tasks per thread, at most 1,024 rows (on 2
/// threads a 640-row matrix gets 40-row tasks, the 262,144-row output 1,024-row tasks).
fn rows_per_task(n_out: usize, n_rows: usize, scaled: bool) -> usize {
    if !scaled || n_rows < 4 {
        return ROWS_PER_TASK;
    }
    (n_out / (8 * rayon::current_num_threads())).clamp(ROWS_PER_TASK, 1024)
}

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
    let ops = Operands {
        w,
        wrb,
        n_in,
        n_out,
        acts,
        arb,
    };
    run(super::kernels_for_all(wty), ops, out);
}

/// Blocks per row up to which the scaled kernels run: their scale table lives on the stack
/// (16 KiB for 8 rows, 32 KiB for 16) and should stay in L1. Wider rows (n_in over 2048) use
/// the plain 8- and 4-row kernels, with the same results.
const SCALED_BLOCKS_MAX: usize = 64;
const TABLE_LEN: usize = 8 * 16 * SCALED_BLOCKS_MAX;

/// A scale table on the stack, cache-line aligned so no 32-byte load of it splits a line.
#[repr(align(64))]
struct ScaleTable([std::mem::MaybeUninit<f32>; TABLE_LEN]);

/// The correction table of the AVX-512 scaled kernels, likewise.
#[repr(align(64))]
struct CorrTable([std::mem::MaybeUninit<i32>; TABLE_LEN]);

/// A group's tables: scales, and corrections when the kernels need them (`shift`).
struct Tables {
    scales: ScaleTable,
    corr: CorrTable,
    shift: Option<u32>,
}

/// Fewest leftover rows (past the whole groups of 16) worth a padded group: the group kernel
/// spends 25 vector operations per weight block on up to 16 rows, the paired scaled kernels
/// 5 per 2 rows, so from 10 rows on the padded group is no slower.
const PADDED_GROUP_MIN: usize = 10;

/// Activation rows the group kernel (of `width` lanes) takes: the whole groups, plus the rest
/// in one padded group if there are enough of them.
fn grouped_rows(n_rows: usize, width: usize) -> usize {
    let whole = n_rows / width * width;
    if n_rows - whole >= PADDED_GROUP_MIN {
        n_rows
    } else {
        whole
    }
}

thread_local! {
    /// The group tables of the matmul this thread leads (kept to reuse the allocation).
    static TABLES: std::cell::RefCell<TableBuf> = std::cell::RefCell::default();
}

/// The group kernel, its tables and the activation rows it takes (the first ones).
#[derive(Clone, Copy)]
struct Grouped<'t> {
    kernel: GroupKernel,
    tables: &'t TableBuf,
    n_rows: usize,
}

/// A matmul's operands (sizes checked by `matmul`): weight rows of `wrb` bytes, activation
/// rows of `arb` bytes.
#[derive(Clone, Copy)]
struct Operands<'a> {
    w: &'a [u8],
    wrb: usize,
    n_in: usize,
    n_out: usize,
    acts: &'a [u8],
    arb: usize,
}

/// The parallel loop of [`matmul`] with its kernels chosen (and sizes checked) by the caller:
/// lays out the activation rows for the group kernel first, if it takes any.
fn run(k: super::Kernels, ops: Operands<'_>, out: &mut [f32]) {
    let Operands {
        acts, arb, n_in, ..
    } = ops;
    let n_rows = acts.len() / arb;
    let Some((g, n_grouped)) = k
        .group
        .map(|g| (g, grouped_rows(n_rows, g.width)))
        .filter(|&(_, n)| n > 0)
    else {
        return run_tasks(k, None, ops, out);
    };
    let mut with = |t: &mut TableBuf| {
        let nb = n_in / super::QK;
        t.fill(&acts[..n_grouped * arb], arb, nb, g.width, g.shift);
        let grouped = Grouped {
            kernel: g,
            tables: t,
            n_rows: n_grouped,
        };
        run_tasks(k, Some(grouped), ops, out)
    };
    // A rayon thread waiting in a plain (non-team) loop may run a task of another matmul that
    // holds this thread's tables: that call brings its own.
    TABLES.with(|cell| match cell.try_borrow_mut() {
        Ok(mut t) => with(&mut t),
        Err(_) => with(&mut TableBuf::default()),
    })
}

/// The tasks of [`run`]: each takes its weight rows against the grouped activation rows, then
/// the rest.
fn run_tasks(k: super::Kernels, grouped: Option<Grouped<'_>>, ops: Operands<'_>, out: &mut [f32]) {
    let Operands {
        w,
        wrb,
        n_in,
        n_out,
        acts,
        arb,
    } = ops;
    let n_rows = acts.len() / arb;
    // The SAFETY argument below rests on these; `matmul` checked them already.
    assert!(w.len() >= wrb * n_out && out.len() == n_rows * n_out);
    let ptr = OutPtr(out.as_mut_ptr());
    let nb = n_in / super::QK;
    // The scaled kernels, if this type has them and its rows fit their table.
    let scaled = k.scaled.filter(|_| nb <= SCALED_BLOCKS_MAX);
    let per_task = rows_per_task(n_out, n_rows, scaled.is_some());
    let n_tasks = n_out.div_ceil(per_task);
    crate::team::for_each(n_tasks, move |t| {
        let ptr = ptr;
        let rows = t * per_task..((t + 1) * per_task).min(n_out);
        let wr = |r: usize| &w[r * wrb..(r + 1) * wrb];
        let act = |b: usize| &acts[b * arb..(b + 1) * arb];
        let store = |b: usize, r: usize, v: f32| {
            debug_assert!(b < n_rows && r < n_out);
            // SAFETY: b < n_rows and r < n_out, so the index is in bounds of `out`
            // (length n_rows * n_out, asserted); only this task writes output row r.
            unsafe { *ptr.0.add(b * n_out + r) = v }
        };
        // Every kernel below is bit-identical per row to `one`, so how the batch splits into
        // groups never changes a result. First the group kernel's rows.
        let mut b0 = 0;
        if let Some(gr) = grouped {
            group_rows(gr, rows.clone(), wr, store);
            b0 = gr.n_rows;
        }
        // Then groups of 8 and 4, which share the weight decoding.
        // The tables are not zeroed (tens of KiB per task cost more than the kernels
        // saved): each group, or single row, fills the part it uses.
        let mut table = Tables {
            scales: ScaleTable([std::mem::MaybeUninit::<f32>::uninit(); TABLE_LEN]),
            corr: CorrTable([std::mem::MaybeUninit::<i32>::uninit(); TABLE_LEN]),
            shift: k.scaled_shift,
        };
        if let Some((dot8s, dot4s)) = scaled {
            // Activation groups outside, weight rows inside: each group's scales are decoded
            // once for the task's rows, which stay in cache across the groups.
            let store_from = |b0: usize| move |j: usize, r: usize, v: f32| store(b0 + j, r, v);
            if let Some(dot16s) = k.scaled16.filter(|_| scaled.is_some()) {
                while b0 + 16 <= n_rows {
                    let group = std::array::from_fn(|j| act(b0 + j));
                    let rows = rows.clone();
                    scaled_group(dot16s, group, &mut table, nb, rows, wr, store_from(b0));
                    b0 += 16;
                }
            }
            while b0 + 8 <= n_rows {
                let group = std::array::from_fn(|j| act(b0 + j));
                let rows = rows.clone();
                scaled_group(dot8s, group, &mut table, nb, rows, wr, store_from(b0));
                b0 += 8;
            }
            if b0 + 4 <= n_rows {
                let group = std::array::from_fn(|j| act(b0 + j));
                let rows = rows.clone();
                scaled_group(dot4s, group, &mut table, nb, rows, wr, store_from(b0));
                b0 += 4;
            }
        }
        // Activation rows left over from the groups of 8 and 4 (all of them when decoding
        // one sequence): from `singles` on.
        let singles = b0 + k.eight.map_or(0, |_| (n_rows - b0) / 8 * 8);
        let singles = singles + k.four.map_or(0, |_| (n_rows - singles) / 4 * 4);
        for r in rows.clone() {
            let mut b = b0;
            if let Some(dot8) = k.eight {
                while b + 8 <= n_rows {
                    let v = dot8(n_in, wr(r), std::array::from_fn(|j| act(b + j)));
                    v.into_iter()
                        .enumerate()
                        .for_each(|(j, v)| store(b + j, r, v));
                    b += 8;
                }
            }
            if let Some(dot4) = k.four {
                while b + 4 <= n_rows {
                    let v = dot4(n_in, wr(r), std::array::from_fn(|j| act(b + j)));
                    v.into_iter()
                        .enumerate()
                        .for_each(|(j, v)| store(b + j, r, v));
                    b += 4;
                }
            }
            debug_assert_eq!(b, singles);
        }
        for b in singles..n_rows {
            for r in rows.clone() {
                store(b, r, (k.one)(n_in, wr(r), act(b)));
            }
        }
    });
}

/// The group kernel's rows against a task's weight rows: group after group, the weight rows
/// staying in cache after the first.
fn group_rows<'a>(
    gr: Grouped<'_>,
    rows: std::ops::Range<usize>,
    wr: impl Fn(usize) -> &'a [u8],
    store: impl Fn(usize, usize, f32),
) {
    let width = gr.kernel.width;
    let mut v = [0f32; GROUP_MAX];
    for grp in 0..gr.n_rows.div_ceil(width) {
        let t = gr.tables.group(grp);
        let b0 = grp * width;
        let lanes = (gr.n_rows - b0).min(width);
        for r in rows.clone() {
            (gr.kernel.dot)(wr(r), t, &mut v);
            v[..lanes]
                .iter()
                .enumerate()
                .for_each(|(j, &x)| store(b0 + j, r, x));
        }
    }
}

/// One group of R activation rows against a task's weight rows with a scaled kernel: fills
/// the group's tables (in `tables`, which hold at least `8R × nb` lanes each), then hands
/// each output to `store(j, r, value)` for activation row j of the group and weight row r.
fn scaled_group<'a, const R: usize>(
    dot: super::DotScaledFn<R>,
    group: [&[u8]; R],
    tables: &mut Tables,
    nb: usize,
    rows: std::ops::Range<usize>,
    wr: impl Fn(usize) -> &'a [u8],
    store: impl Fn(usize, usize, f32),
) {
    let scales = super::q8_0_scale_table(group, &mut tables.scales.0[..8 * R * nb]);
    let corr = match tables.shift {
        Some(shift) => super::dot_avx2::corr_table(group, shift, &mut tables.corr.0[..8 * R * nb]),
        None => &[],
    };
    let t = super::GroupTables { scales, corr };
    let n_in = nb * super::QK;
    for r in rows {
        let v = dot(n_in, wr(r), group, t);
        v.into_iter().enumerate().for_each(|(j, v)| store(j, r, v));
    }
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
        // 31 rows: three groups of 8, one of 4 and three single rows.
        let (n_in, n_out, n_rows) = (512, 37, 31);
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

    /// Rows wider than the scaled kernels' table (n_in over 2048) take the plain kernels:
    /// still equal to `vec_dot` bit for bit.
    #[test]
    fn wide_rows_match_vec_dot() {
        let (n_in, n_out, n_rows) = (2048 + 32, 5, 9);
        for ty in [GgmlType::Q8_0, GgmlType::Q5_0] {
            let (w, acts) = setup(ty, n_in, n_out, n_rows);
            let (wrb, arb) = (w.len() / n_out, acts.len() / n_rows);
            let mut out = vec![0f32; n_rows * n_out];
            matmul(ty, &w, n_in, n_out, &acts, n_rows, &mut out);
            for b in 0..n_rows {
                for r in 0..n_out {
                    let a = &acts[b * arb..(b + 1) * arb];
                    let want = vec_dot(ty, n_in, &w[r * wrb..(r + 1) * wrb], a);
                    assert_eq!(out[b * n_out + r].to_bits(), want.to_bits(), "{ty} b={b}");
                }
            }
        }
    }

    #[test]
    fn matmul_is_thread_count_invariant() {
        for n_rows in [4, 12] {
            thread_count_invariant(512, 100, n_rows);
        }
    }

    fn thread_count_invariant(n_in: usize, n_out: usize, n_rows: usize) {
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
            assert_eq!(run(1), run(2), "{ty} B={n_rows}");
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
            let k = super::super::Kernels {
                one: dot,
                four: None,
                eight: None,
                scaled: None,
                scaled16: None,
                scaled_shift: None,
                group: None,
            };
            let ops = super::Operands {
                w: &w,
                wrb,
                n_in,
                n_out,
                acts: &acts,
                arb,
            };
            super::run(k, ops, &mut out);
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
