//! Activation quantization (scalar): f32 rows into the vec_dot types F32, F16, BF16, Q8_0,
//! Q8_1 and Q8_K, following the llama.cpp reference rounding so results match its kernels.

use super::blocks::{as_blocks_mut, f16_to_le, BlockQ8K, BlockQ8_0, BlockQ8_1};
use super::types::{QK, QK_K};
use half::{bf16, f16};

/// F32 row as little-endian bytes.
pub fn quantize_row_f32(src: &[f32], dst: &mut [u8]) {
    assert_eq!(dst.len(), src.len() * 4, "F32 row size");
    for (o, &x) in dst.chunks_exact_mut(4).zip(src) {
        o.copy_from_slice(&x.to_le_bytes());
    }
}

/// F16 row, round to nearest even.
pub fn quantize_row_f16(src: &[f32], dst: &mut [u8]) {
    assert_eq!(dst.len(), src.len() * 2, "F16 row size");
    for (o, &x) in dst.chunks_exact_mut(2).zip(src) {
        o.copy_from_slice(&f16::from_f32(x).to_bits().to_le_bytes());
    }
}

/// BF16 row: upper 16 bits of the f32, rounded to nearest even (NaN stays NaN).
pub fn quantize_row_bf16(src: &[f32], dst: &mut [u8]) {
    assert_eq!(dst.len(), src.len() * 2, "BF16 row size");
    for (o, &x) in dst.chunks_exact_mut(2).zip(src) {
        o.copy_from_slice(&bf16::from_f32(x).to_bits().to_le_bytes());
    }
}

/// Round half to even for |x| ≤ 2^22, by adding and removing 1.5·2^23 (the FPU rounds the sum
/// in the default mode). `f32::round_ties_even` compiles to a libm call on baseline x86-64,
/// which cost 6% of prefill time; this is two additions.
#[inline(always)]
fn round_half_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Shared Q8_0/Q8_1 body: d = max|x| / 127, q = round_half_even(x · 127 / max|x|).
///
/// This is what llama.cpp's AVX2 path computes (its scalar reference divides by d and rounds
/// half away from zero; the two differ in rare last-bit cases). We follow the AVX2 path because
/// that is what llama.cpp runs on the CPUs we compare against, and greedy tokens must match.
#[inline]
fn quantize_32(x: &[f32], qs: &mut [i8; 32]) -> (f32, i32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        // |v * id| <= 127 up to rounding, so the cast cannot saturate meaningfully.
        *q = round_half_even(v * id) as i8;
        sum += *q as i32;
    }
    (d, sum)
}

/// Q8_0: per 32 values, d = max|x| / 127, stored as f16.
pub fn quantize_row_q8_0(src: &[f32], dst: &mut [u8]) {
    assert!(src.len().is_multiple_of(QK), "Q8_0 row length");
    let blocks = as_blocks_mut::<BlockQ8_0>(dst);
    assert_eq!(blocks.len(), src.len() / QK, "Q8_0 row size");
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK)) {
        let (d, _) = quantize_32(x, &mut b.qs);
        b.d = f16_to_le(d);
    }
}

/// Q8_1: Q8_0 plus s = d * sum(q), both f16.
pub fn quantize_row_q8_1(src: &[f32], dst: &mut [u8]) {
    assert!(src.len().is_multiple_of(QK), "Q8_1 row length");
    let blocks = as_blocks_mut::<BlockQ8_1>(dst);
    assert_eq!(blocks.len(), src.len() / QK, "Q8_1 row size");
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK)) {
        let (d, sum) = quantize_32(x, &mut b.qs);
        b.d = f16_to_le(d);
        b.s = f16_to_le(d * sum as f32);
    }
}

/// Q8_K: per 256 values, scale from the value of largest magnitude (sign kept) so that it
/// maps to -127; q = min(127, round_half_even(iscale * x)); d = 1 / iscale; 16 group sums.
pub fn quantize_row_q8_k(src: &[f32], dst: &mut [u8]) {
    assert!(src.len().is_multiple_of(QK_K), "Q8_K row length");
    let blocks = as_blocks_mut::<BlockQ8K>(dst);
    assert_eq!(blocks.len(), src.len() / QK_K, "Q8_K row size");
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK_K)) {
        quantize_q8_k_block(x, b);
    }
}

fn quantize_q8_k_block(x: &[f32], b: &mut BlockQ8K) {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        b.d = 0f32.to_le_bytes();
        b.qs = [0; QK_K];
        b.bsums = [0; 32];
        return;
    }
    let iscale = -127.0 / max;
    for (q, &v) in b.qs.iter_mut().zip(x) {
        // llama.cpp's nearest_int rounds half to even; the min keeps +127.5 style overshoot in range.
        *q = (round_half_even(iscale * v) as i32).min(127) as i8;
    }
    for j in 0..QK_K / 16 {
        let s: i32 = b.qs[16 * j..16 * (j + 1)].iter().map(|&q| q as i32).sum();
        b.bsums[2 * j..2 * j + 2].copy_from_slice(&(s as i16).to_le_bytes());
    }
    b.d = (1.0 / iscale).to_le_bytes();
}

#[cfg(test)]
mod tests {
    use super::super::blocks::{as_blocks, f16_le, BlockQ8K, BlockQ8_0, BlockQ8_1};
    use super::super::random_rows::{random_acts, Rng};
    use super::super::{dequantize_row, quantize_row, GgmlType};
    use super::*;

    #[test]
    fn q8_k_round_trip_and_bsums() {
        let mut rng = Rng::new(7);
        let mut x = random_acts(&mut rng, 1024);
        x[300] = 5.0; // block 1's max: positive, so d must come out negative
        let mut q = vec![0u8; 4 * 292];
        quantize_row(GgmlType::Q8_K, &x, &mut q);
        let blocks = as_blocks::<BlockQ8K>(&q);
        assert_eq!(blocks[1].qs[300 - 256], -127);
        assert!((blocks[1].d() - (-5.0 / 127.0)).abs() < 1e-7);
        for b in blocks {
            for j in 0..16 {
                let s: i32 = b.qs[16 * j..16 * j + 16].iter().map(|&v| v as i32).sum();
                assert_eq!(b.bsum(j) as i32, s);
            }
        }
        let mut y = vec![0f32; 1024];
        dequantize_row(GgmlType::Q8_K, &q, &mut y);
        for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
            let d = blocks[i / 256].d().abs();
            assert!((a - b).abs() <= 0.5 * d * 1.0001, "element {i}: {a} vs {b}");
        }
    }

    #[test]
    fn q8_k_rounds_half_to_even_and_zero_block() {
        // max = -127 → iscale = 1 exactly, so iscale·x = x.
        let mut x = vec![0f32; 256];
        x[0] = -127.0;
        x[1] = 2.5;
        x[2] = 3.5;
        x[3] = -2.5;
        x[4] = 126.5;
        let mut q = vec![0u8; 292];
        quantize_row_q8_k(&x, &mut q);
        let b = &as_blocks::<BlockQ8K>(&q)[0];
        assert_eq!(&b.qs[..5], &[-127, 2, 4, -2, 126]);
        assert_eq!(b.d(), 1.0);
        quantize_row_q8_k(&[0.0; 256], &mut q);
        let b = &as_blocks::<BlockQ8K>(&q)[0];
        assert_eq!(b.d(), 0.0);
        assert!(b.qs.iter().all(|&v| v == 0) && (0..16).all(|j| b.bsum(j) == 0));
    }

    #[test]
    fn q8_0_and_q8_1() {
        let mut rng = Rng::new(9);
        let x = random_acts(&mut rng, 256);
        let mut q0 = vec![0u8; 8 * 34];
        let mut q1 = vec![0u8; 8 * 36];
        quantize_row(GgmlType::Q8_0, &x, &mut q0);
        quantize_row(GgmlType::Q8_1, &x, &mut q1);
        let b0 = as_blocks::<BlockQ8_0>(&q0);
        let b1 = as_blocks::<BlockQ8_1>(&q1);
        for (k, (a, b)) in b0.iter().zip(b1).enumerate() {
            let xs = &x[32 * k..32 * k + 32];
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            assert_eq!(a.d, f16_to_le(d));
            assert_eq!(a.qs, b.qs);
            assert_eq!(a.d, b.d);
            for (&v, &qv) in xs.iter().zip(&a.qs) {
                assert_eq!(
                    qv as f32,
                    (v * (127.0 / amax)).round_ties_even().clamp(-127.0, 127.0)
                );
            }
            let sum: i32 = b.qs.iter().map(|&v| v as i32).sum();
            assert_eq!(b.s, f16_to_le(d * sum as f32));
            assert!((f16_le(b.s) - f16_le(b.d) * sum as f32).abs() <= 0.01 + 1e-3 * amax);
        }
        // An all-zero block quantizes to d = 0, q = 0.
        quantize_row(GgmlType::Q8_0, &[0.0; 32], &mut q0[..34]);
        assert!(q0[..34].iter().all(|&v| v == 0));
    }

    #[test]
    fn f16_bf16_round_to_nearest_even() {
        let mut out = [0u8; 4];
        // 1 + 2^-8 is halfway between bf16 1.0 and its successor → even (1.0);
        // 1 + 3·2^-8 is halfway between 0x3F81 and 0x3F82 → even (0x3F82).
        quantize_row_bf16(&[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0], &mut out);
        assert_eq!(out, [0x80, 0x3F, 0x82, 0x3F]);
        // f16: 1 + 2^-11 is halfway between 1.0 and 1 + 2^-10 → 1.0 (0x3C00).
        quantize_row_f16(&[1.0 + 1.0 / 2048.0, -2.0], &mut out);
        assert_eq!(out, [0x00, 0x3C, 0x00, 0xC0]);
        let mut o8 = [0u8; 4];
        quantize_row_f32(&[1.0], &mut o8);
        assert_eq!(o8, [0, 0, 0x80, 0x3F]);
    }
}
