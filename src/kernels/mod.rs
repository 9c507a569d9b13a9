//! Pure kernels on slices: block formats, dequantization, activation quantization, dot
//! products (a scalar reference and an AVX2+FMA twin picked at run time), batched matmul.
//!
//! Boundary: this module knows nothing of files, models or threads other than the rayon pool
//! it is called inside; it never allocates in `vec_dot` or `matmul`.

pub mod f16;
pub mod types;

pub use types::{GgmlType, QK, QK_K};

/// Dequantizes one row of `dst.len()` elements of type `ty` from `src`.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let _ = (ty, src, dst);
    todo!("kernels: dequantize_row")
}

/// Quantizes `src` into `dst` as activation type `ty` (F32, F16, BF16, Q8_0, Q8_1 or Q8_K).
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    let _ = (ty, src, dst);
    todo!("kernels: quantize_row")
}

/// Dot product of one weight row of type `wty` with one activation row already quantized to
/// `wty.vec_dot_type()`, both of `n` elements.
pub fn vec_dot(wty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    let _ = (wty, n, w, act);
    todo!("kernels: vec_dot")
}

/// `out[b * n_out + r] = dot(weight row r, activation row b)` for `n_rows` activation rows,
/// parallel over output rows on the current rayon pool. Batch-invariant.
pub fn matmul(
    wty: GgmlType,
    w: &[u8],
    n_in: usize,
    n_out: usize,
    acts: &[u8],
    n_rows: usize,
    out: &mut [f32],
) {
    let _ = (wty, w, n_in, n_out, acts, n_rows, out);
    todo!("kernels: matmul")
}
