//! Scalar reference dot products, one per weight type against its vec_dot_type.
//!
//! Quantized kernels sum exactly in integers inside a block (or K-quant sub-block, weighted
//! by the integer sub-block scales) and do one float multiply-add per block, so their only
//! rounding is in the per-block float steps. Each is a pure function of its two rows.
//! Callers (`vec_dot`, `matmul`) have already checked that the row lengths match `n`.

use super::blocks::{
    as_blocks, f16_le, unpack_k4_scales, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0,
    BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1,
};
use super::dequant::{q5_values, q6_values};
use super::types::GgmlType;
use super::DotFn;

/// The scalar kernel for weight type `wty`. Panics for activation-only types.
pub fn kernel(wty: GgmlType) -> DotFn {
    match wty {
        GgmlType::F32 => vec_dot_f32,
        GgmlType::F16 => vec_dot_f16,
        GgmlType::BF16 => vec_dot_bf16,
        GgmlType::Q4_0 => vec_dot_q4_0,
        GgmlType::Q4_1 => vec_dot_q4_1,
        GgmlType::Q5_0 => vec_dot_q5_0,
        GgmlType::Q5_1 => vec_dot_q5_1,
        GgmlType::Q8_0 => vec_dot_q8_0,
        GgmlType::Q4_K => vec_dot_q4_k,
        GgmlType::Q5_K => vec_dot_q5_k,
        GgmlType::Q6_K => vec_dot_q6_k,
        GgmlType::Q8_1 | GgmlType::Q8_K => panic!("{wty} is not a weight type"),
    }
}

/// Scalar `vec_dot` (lengths checked).
pub fn vec_dot(wty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    super::check_rows(wty, n, w, a);
    kernel(wty)(n, w, a)
}

#[inline(always)]
fn f32_at(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[inline(always)]
fn bf16_at(b: &[u8]) -> f32 {
    f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)
}

/// F32 · F32.
pub fn vec_dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let it = w.chunks_exact(4).zip(a.chunks_exact(4)).take(n);
    it.fold(0.0, |s, (x, y)| s + f32_at(x) * f32_at(y))
}

/// F16 · F16, accumulated in f32.
pub fn vec_dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let it = w.chunks_exact(2).zip(a.chunks_exact(2)).take(n);
    it.fold(0.0, |s, (x, y)| {
        s + f16_le([x[0], x[1]]) * f16_le([y[0], y[1]])
    })
}

/// BF16 · BF16, accumulated in f32.
pub fn vec_dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let it = w.chunks_exact(2).zip(a.chunks_exact(2)).take(n);
    it.fold(0.0, |s, (x, y)| s + bf16_at(x) * bf16_at(y))
}

/// Q4_0 · Q8_0.
pub fn vec_dot_q4_0(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (xs, ys) = (as_blocks::<BlockQ4_0>(w), as_blocks::<BlockQ8_0>(a));
    let mut acc = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += ((x.qs[j] & 0xF) as i32 - 8) * y.qs[j] as i32;
            sumi += ((x.qs[j] >> 4) as i32 - 8) * y.qs[j + 16] as i32;
        }
        acc += f16_le(x.d) * f16_le(y.d) * sumi as f32;
    }
    acc
}

/// Q4_1 · Q8_1: d_x d_y Σq·q8 + m_x s_y.
pub fn vec_dot_q4_1(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (xs, ys) = (as_blocks::<BlockQ4_1>(w), as_blocks::<BlockQ8_1>(a));
    let mut acc = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += (x.qs[j] & 0xF) as i32 * y.qs[j] as i32;
            sumi += (x.qs[j] >> 4) as i32 * y.qs[j + 16] as i32;
        }
        acc += f16_le(x.d) * f16_le(y.d) * sumi as f32 + f16_le(x.m) * f16_le(y.s);
    }
    acc
}

/// Q5_0 · Q8_0.
pub fn vec_dot_q5_0(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (xs, ys) = (as_blocks::<BlockQ5_0>(w), as_blocks::<BlockQ8_0>(a));
    let mut acc = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let q = q5_values(x.qh, &x.qs);
        let sumi: i32 = q
            .iter()
            .zip(&y.qs)
            .map(|(&q, &v)| (q as i32 - 16) * v as i32)
            .sum();
        acc += f16_le(x.d) * f16_le(y.d) * sumi as f32;
    }
    acc
}

/// Q5_1 · Q8_1.
pub fn vec_dot_q5_1(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (xs, ys) = (as_blocks::<BlockQ5_1>(w), as_blocks::<BlockQ8_1>(a));
    let mut acc = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let q = q5_values(x.qh, &x.qs);
        let sumi: i32 = q
            .iter()
            .zip(&y.qs)
            .map(|(&q, &v)| q as i32 * v as i32)
            .sum();
        acc += f16_le(x.d) * f16_le(y.d) * sumi as f32 + f16_le(x.m) * f16_le(y.s);
    }
    acc
}

/// Q8_0 · Q8_0.
pub fn vec_dot_q8_0(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (xs, ys) = (as_blocks::<BlockQ8_0>(w), as_blocks::<BlockQ8_0>(a));
    let mut acc = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let sumi: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        acc += f16_le(x.d) * f16_le(y.d) * sumi as f32;
    }
    acc
}

/// Σ_k mn[k] · (sum of the 32 q8 of sub-block k), from the Q8_K group sums.
#[inline(always)]
fn k4_min_sum(mn: &[u8; 8], y: &BlockQ8K) -> i32 {
    (0..8)
        .map(|k| mn[k] as i32 * (y.bsum(2 * k) as i32 + y.bsum(2 * k + 1) as i32))
        .sum()
}

/// One Q4_K/Q5_K super-block against its Q8_K block: d Σ_k sc_k Σ q·q8 − dmin Σ_k mn_k Σ q8,
/// with d = d_x d_y and dmin = dmin_x d_y. `value(c, l)` gives the (low, high) unsigned values
/// at position l of 64-value chunk c.
fn k4_block(
    d: [u8; 2],
    dmin: [u8; 2],
    scales: &[u8; 12],
    y: &BlockQ8K,
    value: impl Fn(usize, usize) -> (u8, u8),
) -> f32 {
    let (sc, mn) = unpack_k4_scales(scales);
    let mut sumi = 0i32;
    for c in 0..4 {
        let (mut lo, mut hi) = (0i32, 0i32);
        for l in 0..32 {
            let (ql, qh) = value(c, l);
            lo += ql as i32 * y.qs[64 * c + l] as i32;
            hi += qh as i32 * y.qs[64 * c + 32 + l] as i32;
        }
        sumi += sc[2 * c] as i32 * lo + sc[2 * c + 1] as i32 * hi;
    }
    let dd = y.d() * f16_le(d);
    let ddmin = y.d() * f16_le(dmin);
    dd * sumi as f32 - ddmin * k4_min_sum(&mn, y) as f32
}

/// Q4_K · Q8_K.
pub fn vec_dot_q4_k(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (xs, ys) = (as_blocks::<BlockQ4K>(w), as_blocks::<BlockQ8K>(a));
    let mut acc = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        acc += k4_block(x.d, x.dmin, &x.scales, y, |c, l| {
            let q = x.qs[32 * c + l];
            (q & 0xF, q >> 4)
        });
    }
    acc
}

/// Q5_K · Q8_K: as Q4_K with a fifth bit per value from `qh`.
pub fn vec_dot_q5_k(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (xs, ys) = (as_blocks::<BlockQ5K>(w), as_blocks::<BlockQ8K>(a));
    let mut acc = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        acc += k4_block(x.d, x.dmin, &x.scales, y, |c, l| {
            let (q, h) = (x.qs[32 * c + l], x.qh[l]);
            let ql = (q & 0xF) | (((h >> (2 * c)) & 1) << 4);
            let qh = (q >> 4) | (((h >> (2 * c + 1)) & 1) << 4);
            (ql, qh)
        });
    }
    acc
}

/// Q6_K · Q8_K: d_x d_y Σ_k sc_k Σ (q−32)·q8 over 16 sub-blocks of 16.
pub fn vec_dot_q6_k(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (xs, ys) = (as_blocks::<BlockQ6K>(w), as_blocks::<BlockQ8K>(a));
    let mut acc = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let q = q6_values(x);
        let mut sumi = 0i32;
        for k in 0..16 {
            let s: i32 = (16 * k..16 * k + 16)
                .map(|i| q[i] as i32 * y.qs[i] as i32)
                .sum();
            sumi += x.scales[k] as i32 * s;
        }
        acc += f16_le(x.d) * y.d() * sumi as f32;
    }
    acc
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::random_rows::{random_acts, random_row, ref_dot, Rng};
    use super::super::{dequantize_row, quantize_row, GgmlType};

    /// Quantized activations and both dequantized rows for one random case.
    pub(crate) struct Case {
        pub w: Vec<u8>,
        pub qa: Vec<u8>,
        pub wf: Vec<f32>,
        pub x: Vec<f32>,
        pub xq: Vec<f32>,
    }

    pub(crate) fn make_case(ty: GgmlType, n: usize, seed: u64) -> Case {
        let mut rng = Rng::new(seed ^ (ty.id() as u64) << 32 ^ n as u64);
        let w = random_row(&mut rng, ty, n);
        let x = random_acts(&mut rng, n);
        let at = ty.vec_dot_type();
        let mut qa = vec![0u8; at.row_bytes(n).expect("whole blocks")];
        quantize_row(at, &x, &mut qa);
        let mut wf = vec![0f32; n];
        dequantize_row(ty, &w, &mut wf);
        let mut xq = vec![0f32; n];
        dequantize_row(at, &qa, &mut xq);
        Case { w, qa, wf, x, xq }
    }

    pub(crate) fn sizes(ty: GgmlType) -> Vec<usize> {
        match ty.block_elems() {
            1 => vec![1, 37, 512, 1001, 2560],
            32 => vec![32, 96, 512, 2560],
            _ => vec![256, 512, 2560],
        }
    }

    #[test]
    fn scalar_matches_dequantized_dot() {
        for ty in GgmlType::WEIGHT_TYPES {
            for n in sizes(ty) {
                for seed in 0..4 {
                    let c = make_case(ty, n, seed);
                    let got = super::vec_dot(ty, n, &c.w, &c.qa) as f64;
                    // (a) same math up to float order. Q4_1/Q5_1 use the f16-rounded
                    // s = d·Σq of Q8_1 (as ggml does), which costs ~2^-11 of the m·s term.
                    let rel = match ty {
                        GgmlType::Q4_1 | GgmlType::Q5_1 => 1e-3,
                        _ => 1e-4,
                    };
                    let (want, mag) = ref_dot(&c.wf, &c.xq);
                    assert!(
                        (got - want).abs() <= rel * mag + 1e-6,
                        "{ty} n={n} seed={seed}: {got} vs {want} (mag {mag})"
                    );
                    // (b) within the activation-quantization error of the exact f32 dot.
                    let (exact, mag) = ref_dot(&c.wf, &c.x);
                    assert!(
                        (got - exact).abs() <= 0.02 * mag + 1e-6,
                        "{ty} n={n} seed={seed}: {got} vs exact {exact} (mag {mag})"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic]
    fn rejects_wrong_row_length() {
        let w = vec![0u8; 34];
        let a = vec![0u8; 68];
        super::vec_dot(GgmlType::Q8_0, 32, &w, &a);
    }
}
