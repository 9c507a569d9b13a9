//! The dot and matmul kernels on real rows of every weight type of the default model: AVX2 vs
//! the scalar reference, the scalar kernel vs an f64 dot of the dequantized rows, the error of
//! activation quantization, and batch invariance of matmul on real weights.

mod common;

use std::collections::BTreeMap;

use ryzanstein::gguf::{GgufFile, TensorInfo};
use ryzanstein::kernels::{self, GgmlType};

/// One matmul weight tensor per ggml type (2-D, not a norm), by type id.
fn weights_by_type(f: &GgufFile) -> BTreeMap<u32, TensorInfo> {
    let mut by_type = BTreeMap::new();
    for t in f.tensors() {
        if t.dims.len() == 2 && t.dims[1] > 1 && !t.name.contains("norm") {
            by_type.entry(t.ty.id()).or_insert_with(|| t.clone());
        }
    }
    by_type
}

/// First, middle, last and one random row.
fn rows_of(t: &TensorInfo, rng: &mut common::Rng) -> [usize; 4] {
    let n = t.n_rows();
    [0, n / 2, n - 1, rng.below(n)]
}

fn row_bytes<'a>(f: &'a GgufFile, t: &TensorInfo, r: usize) -> &'a [u8] {
    let rb = t.ty.row_bytes(t.row_len()).expect("whole blocks");
    assert_eq!(rb as u64 * t.n_rows() as u64, t.n_bytes, "{}", t.name);
    &f.tensor_data(t)[r * rb..(r + 1) * rb]
}

/// f64 dot and Σ|a_i b_i|.
fn ref_dot(a: &[f32], b: &[f32]) -> (f64, f64) {
    let dot = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let mag = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 * y as f64).abs())
        .sum();
    (dot, mag)
}

/// Random activations: mostly small with a few large outliers, like real hidden states.
fn activations(rng: &mut common::Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let x = rng.f32();
            if rng.below(64) == 0 {
                x * 20.0
            } else {
                x
            }
        })
        .collect()
}

fn quantized(ty: GgmlType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let at = ty.vec_dot_type();
    let mut q = vec![0u8; at.row_bytes(x.len()).expect("activation row")];
    kernels::quantize_row(at, x, &mut q);
    let mut dq = vec![0f32; x.len()];
    kernels::dequantize_row(at, &q, &mut dq);
    (q, dq)
}

#[test]
fn the_model_has_the_expected_weight_types() {
    let f = GgufFile::open(common::default_model_path()).unwrap();
    let names: Vec<&str> = weights_by_type(&f).values().map(|t| t.ty.name()).collect();
    // Sorted by ggml id: Q5_0 (6), Q8_0 (8), Q4_K (12), Q6_K (14).
    assert_eq!(names, ["Q5_0", "Q8_0", "Q4_K", "Q6_K"]);
}

#[test]
fn scalar_dot_matches_dequantized_rows() {
    let f = GgufFile::open(common::default_model_path()).unwrap();
    let mut rng = common::Rng(0x5CA1A2);
    let mut checked = 0;
    for t in weights_by_type(&f).values() {
        let n = t.row_len();
        let mut w = vec![0f32; n];
        for r in rows_of(t, &mut rng) {
            let wb = row_bytes(&f, t, r);
            kernels::dequantize_row(t.ty, wb, &mut w);
            assert!(
                w.iter().all(|v| v.is_finite()),
                "{} row {r}: non-finite weights",
                t.name
            );
            let x = activations(&mut rng, n);
            let (q, xq) = quantized(t.ty, &x);
            let got = kernels::scalar::vec_dot(t.ty, n, wb, &q) as f64;
            // Against the dequantized activations: only float rounding separates them.
            let (want, mag) = ref_dot(&w, &xq);
            assert!(mag > 0.0, "{} row {r}: all-zero row", t.name);
            let err = (got - want).abs();
            assert!(
                err <= 1e-4 * mag,
                "{} ({}) row {r}: scalar {got} vs dequantized {want} (err {err:e}, Σ|w·x| {mag:e})",
                t.name,
                t.ty
            );
            // Against the f32 activations: the activation quantization error, a percent
            // of the magnitude at most.
            let (exact, mag_x) = ref_dot(&w, &x);
            let err_x = (got - exact).abs();
            assert!(
                err_x <= 0.01 * mag_x,
                "{} ({}) row {r}: scalar {got} vs unquantized {exact} (err {err_x:e}, Σ|w·x| {mag_x:e})",
                t.name,
                t.ty
            );
            // The dispatching entry point agrees with one of the two kernels exactly.
            let disp = kernels::vec_dot(t.ty, n, wb, &q);
            #[cfg(target_arch = "x86_64")]
            let simd = kernels::avx2::vec_dot(t.ty, n, wb, &q);
            #[cfg(not(target_arch = "x86_64"))]
            let simd: Option<f32> = None;
            assert!(
                disp.to_bits() == (got as f32).to_bits() || simd.map(f32::to_bits) == Some(disp.to_bits()),
                "{} row {r}: vec_dot {disp} is neither the scalar {got} nor the avx2 {simd:?} result",
                t.name
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 16);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_dot_matches_scalar_on_real_rows() {
    if !kernels::avx2::available() {
        println!("skipped: this CPU lacks avx2/fma/f16c");
        return;
    }
    let f = GgufFile::open(common::default_model_path()).unwrap();
    let mut rng = common::Rng(0xA1A2);
    let mut checked = 0;
    for t in weights_by_type(&f).values() {
        let n = t.row_len();
        let mut w = vec![0f32; n];
        for r in rows_of(t, &mut rng) {
            let wb = row_bytes(&f, t, r);
            kernels::dequantize_row(t.ty, wb, &mut w);
            for _ in 0..4 {
                let x = activations(&mut rng, n);
                let (q, xq) = quantized(t.ty, &x);
                let scalar = kernels::scalar::vec_dot(t.ty, n, wb, &q);
                let simd = kernels::avx2::vec_dot(t.ty, n, wb, &q).expect("avx2 kernel");
                let (_, mag) = ref_dot(&w, &xq);
                let err = (scalar as f64 - simd as f64).abs();
                assert!(
                    err <= 1e-4 * mag,
                    "{} ({}) row {r}: avx2 {simd} vs scalar {scalar} (err {err:e}, Σ|w·x| {mag:e})",
                    t.name,
                    t.ty
                );
                // The dispatcher picks the AVX2 kernel here (unless disabled by the env).
                if std::env::var("RYZANSTEIN_NO_SIMD").map_or(true, |v| v != "1") {
                    assert_eq!(
                        kernels::vec_dot(t.ty, n, wb, &q).to_bits(),
                        simd.to_bits(),
                        "{}",
                        t.name
                    );
                }
                // The 4-row kernel, where there is one, is bit-identical per row.
                if let Some(k4) = kernels::avx2::kernel4(t.ty) {
                    let others: Vec<(Vec<u8>, Vec<f32>)> = (0..3)
                        .map(|_| quantized(t.ty, &activations(&mut rng, n)))
                        .collect();
                    let rows = [q.as_slice(), &others[0].0, &others[1].0, &others[2].0];
                    let four = k4(n, wb, rows);
                    for (k, a) in rows.iter().enumerate() {
                        let one = kernels::avx2::vec_dot(t.ty, n, wb, a).expect("avx2 kernel");
                        assert_eq!(
                            four[k].to_bits(),
                            one.to_bits(),
                            "{} row {r} lane {k}",
                            t.name
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 64);
}

#[test]
fn matmul_on_real_rows_is_batch_invariant() {
    let f = GgufFile::open(common::default_model_path()).unwrap();
    let mut rng = common::Rng(0xBA7C);
    let (n_out, n_batch) = (16, 32);
    for t in weights_by_type(&f).values() {
        let n = t.row_len();
        let rb = t.ty.row_bytes(n).unwrap();
        // 16 consecutive real rows starting at a random row.
        let r0 = rng.below(t.n_rows() - n_out + 1);
        let w = &f.tensor_data(t)[r0 * rb..(r0 + n_out) * rb];
        let at = t.ty.vec_dot_type();
        let arb = at.row_bytes(n).unwrap();
        let mut acts = vec![0u8; arb * n_batch];
        for row in acts.chunks_exact_mut(arb) {
            kernels::quantize_row(at, &activations(&mut rng, n), row);
        }
        let mut big = vec![f32::NAN; n_batch * n_out];
        kernels::matmul(t.ty, w, n, n_out, &acts, n_batch, &mut big);
        assert!(
            big.iter().all(|v| v.is_finite()),
            "{}: non-finite output",
            t.name
        );
        for b in 0..n_batch {
            let a = &acts[b * arb..(b + 1) * arb];
            let mut one = vec![f32::NAN; n_out];
            kernels::matmul(t.ty, w, n, n_out, a, 1, &mut one);
            for r in 0..n_out {
                let got = big[b * n_out + r];
                assert_eq!(
                    got.to_bits(),
                    one[r].to_bits(),
                    "{} b={b} r={r}: B=32 {got} vs B=1 {}",
                    t.name,
                    one[r]
                );
                let vd = kernels::vec_dot(t.ty, n, &w[r * rb..(r + 1) * rb], a);
                assert_eq!(
                    got.to_bits(),
                    vd.to_bits(),
                    "{} b={b} r={r}: matmul {got} vs vec_dot {vd}",
                    t.name
                );
            }
        }
        // An odd batch size (groups of 4 plus a tail) gives the same bits too.
        let mut seven = vec![f32::NAN; 7 * n_out];
        kernels::matmul(t.ty, w, n, n_out, &acts[..7 * arb], 7, &mut seven);
        assert_eq!(
            seven.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            big[..7 * n_out]
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>(),
            "{}: B=7",
            t.name
        );
    }
}
