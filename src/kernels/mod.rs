//! Pure kernels on slices: block formats, dequantization, activation quantization, dot
//! products (a scalar reference and an AVX2+FMA twin picked at run time), batched matmul.
//!
//! Boundary: this module knows nothing of files, models or threads other than the rayon pool
//! it is called inside; it never allocates in `vec_dot`, nor in `matmul` but for the group
//! kernel's per-thread tables, which grow to the largest batch once.
//!
//! Dispatch: the CPU is probed once (AVX2 + FMA + F16C); `RYZANSTEIN_NO_SIMD=1` (read once) or
//! [`set_force_scalar`] selects the scalar kernels. Every kernel is a pure function of its
//! (weight row, activation row), so results never depend on batch size or thread count.

pub mod argmax;
pub mod blocks;
pub mod dequant;
pub mod dot_avx2;
pub mod dot_scalar;
pub mod f16;
pub mod group;
pub mod matmul;
pub mod quantize;
pub mod types;

#[cfg(test)]
mod random_rows;

pub use types::{GgmlType, QK, QK_K};

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// A dot kernel: `(n, weight row bytes, activation row bytes) -> dot`.
pub type DotFn = fn(usize, &[u8], &[u8]) -> f32;

/// A kernel dotting one weight row with 4 activation rows at once, bit-identical per row to
/// the single-row kernel of the same type (it only shares the weight decoding).
pub type Dot4Fn = fn(usize, &[u8], [&[u8]; 4]) -> [f32; 4];

/// The same with 8 activation rows: during prefill the weight block is decoded half as often.
pub type Dot8Fn = fn(usize, &[u8], [&[u8]; 8]) -> [f32; 8];

/// A kernel dotting one weight row with R Q8_0 activation rows whose block scales are given
/// already as f32 (see [`q8_0_scale_table`]): bit-identical per row to the single-row kernel;
/// it only saves decoding each f16 scale once per weight row.
pub type DotScaledFn<const R: usize> = fn(usize, &[u8], [&[u8]; R], GroupTables<'_>) -> [f32; R];

/// What a scaled kernel reads about its group of R activation rows instead of decoding it for
/// every weight row: the scales ([`q8_0_scale_table`]) and, for the AVX-512 kernels that take
/// weights as unsigned bytes (`x + 2^shift`), each 4-value group's correction
/// `-(Σ y) << shift` (see [`Kernels::scaled_shift`]; empty otherwise).
#[derive(Clone, Copy)]
pub struct GroupTables<'t> {
    pub scales: &'t [f32],
    pub corr: &'t [i32],
}

/// Fills a scale table for R Q8_0 activation rows and returns it: `[8R·block + 8·row ..][..8]`
/// holds that block's f16 scale as f32 (exact), repeated in 8 lanes so a kernel multiplies by
/// it straight from memory. `out` holds `8R × blocks` floats (uninitialized is fine: every one
/// is written); each row at least that many blocks.
pub fn q8_0_scale_table<'t, const R: usize>(
    acts: [&[u8]; R],
    out: &'t mut [MaybeUninit<f32>],
) -> &'t [f32] {
    let nb = out.len() / (8 * R);
    for (row, a) in acts.iter().enumerate() {
        let blocks = blocks::as_blocks::<blocks::BlockQ8_0>(a);
        for (i, b) in blocks[..nb].iter().enumerate() {
            let at = 8 * R * i + 8 * row;
            out[at..at + 8].fill(MaybeUninit::new(blocks::f16_le(b.d)));
        }
    }
    let out = &out[..8 * R * nb];
    // SAFETY: the loops above wrote all 8R·nb elements (R rows × nb blocks × 8 lanes, each
    // (row, block) at its own offset), and MaybeUninit<f32> has f32's layout.
    unsafe { &*(out as *const [MaybeUninit<f32>] as *const [f32]) }
}

/// Scalar reference kernels, for tests and benches.
pub mod scalar {
    pub use super::dot_scalar::*;
}

/// AVX2 kernels, for tests and benches (x86_64 only).
pub mod avx2 {
    #[cfg(target_arch = "x86_64")]
    pub use super::dot_avx2::*;
}

static FORCE_SCALAR: AtomicBool = AtomicBool::new(false);

/// Forces (or stops forcing) the scalar kernels for all later calls. Scalar and AVX2 results
/// differ in float rounding, so flip this only between whole computations.
pub fn set_force_scalar(force: bool) {
    FORCE_SCALAR.store(force, Ordering::Relaxed);
}

/// Probes the CPU and reads `RYZANSTEIN_NO_SIMD` now. Call once at start-up: otherwise the
/// first kernel call does it, and reading the environment allocates (once).
pub fn init() {
    simd_allowed();
}

/// True when the AVX2 kernels are in use (CPU support, not disabled).
pub fn simd_enabled() -> bool {
    simd_allowed()
}

/// True when the AVX2 kernels can run here and are not disabled by `RYZANSTEIN_NO_SIMD=1`.
fn simd_allowed() -> bool {
    static SIMD: OnceLock<bool> = OnceLock::new();
    let ok = *SIMD.get_or_init(|| {
        let disabled = std::env::var("RYZANSTEIN_NO_SIMD").is_ok_and(|v| v == "1");
        !disabled && dot_avx2::available()
    });
    ok && !FORCE_SCALAR.load(Ordering::Relaxed)
}

/// The kernel `vec_dot` and `matmul` use for `wty` right now.
pub fn dot_kernel(wty: GgmlType) -> DotFn {
    kernels_for(wty).0
}

/// The 4-row kernel matching [`dot_kernel`] for `wty`, if there is one.
pub fn dot_kernel4(wty: GgmlType) -> Option<Dot4Fn> {
    kernels_for(wty).1
}

/// The single-row kernel and (if any) the matching 4-row kernel, chosen with one reading of
/// the SIMD switch so a caller never mixes scalar and AVX2 results.
pub(crate) fn kernels_for(wty: GgmlType) -> (DotFn, Option<Dot4Fn>) {
    let k = kernels_for_all(wty);
    (k.one, k.four)
}

/// The kernels [`matmul`] may use for `wty`, all bit-identical per row, chosen with one reading
/// of the SIMD switch.
#[derive(Clone, Copy)]
pub(crate) struct Kernels {
    pub one: DotFn,
    pub four: Option<Dot4Fn>,
    pub eight: Option<Dot8Fn>,
    /// The 8- and 4-row kernels that take a scale table, for Q8_0-activation types.
    pub scaled: Option<(DotScaledFn<8>, DotScaledFn<4>)>,
    /// The 16-row one, where the CPU has AVX-512 (32 vector registers hold its accumulators).
    pub scaled16: Option<DotScaledFn<16>>,
    /// Set when the scaled kernels are the AVX-512 ones, which read weights as unsigned bytes
    /// `x + 2^shift` and need the correction table ([`GroupTables::corr`]) built with it.
    pub scaled_shift: Option<u32>,
    /// The 16-lane group kernel (AVX-512), for batches of 10 rows or more (see `matmul`).
    pub group: Option<group::GroupKernel>,
}

/// Like [`kernels_for`], with the 8-row kernels too.
pub(crate) fn kernels_for_all(wty: GgmlType) -> Kernels {
    if simd_allowed() {
        if let Some((one, four, eight)) = dot_avx2::kernels_k_avx512(wty) {
            return Kernels {
                one,
                four: Some(four),
                eight: Some(eight),
                scaled: None,
                scaled16: None,
                scaled_shift: None,
                group: None,
            };
        }
        if let Some(one) = dot_avx2::kernel(wty) {
            return Kernels {
                one,
                four: dot_avx2::kernel4(wty),
                eight: dot_avx2::kernel8(wty),
                scaled: dot_avx2::kernel_scaled(wty).zip(dot_avx2::kernel_scaled(wty)),
                scaled16: dot_avx2::kernel_scaled_avx512(wty),
                scaled_shift: dot_avx2::kernel_scaled_avx512::<8>(wty)
                    .and_then(|_| dot_avx2::offset_shift(wty)),
                group: group::group_kernel(wty),
            };
        }
    }
    Kernels {
        one: dot_scalar::kernel(wty),
        four: None,
        eight: None,
        scaled: None,
        scaled16: None,
        scaled_shift: None,
        group: None,
    }
}

/// Asserts that `w` and `a` are rows of `n` elements of `wty` and its vec_dot_type.
pub(crate) fn check_rows(wty: GgmlType, n: usize, w: &[u8], a: &[u8]) {
    assert!(wty.is_weight_type(), "{wty} is not a weight type");
    assert_eq!(wty.row_bytes(n), Some(w.len()), "{wty} weight row of {n}");
    let at = wty.vec_dot_type();
    assert_eq!(at.row_bytes(n), Some(a.len()), "{at} activation row of {n}");
}

/// Dequantizes one row of `dst.len()` elements of type `ty` from `src`.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    dequant::dequantize_row(ty, src, dst)
}

/// Quantizes `src` into `dst` as activation type `ty` (F32, F16, BF16, Q8_0, Q8_1 or Q8_K).
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    assert_eq!(
        ty.row_bytes(src.len()),
        Some(dst.len()),
        "{ty} row of {}",
        src.len()
    );
    match ty {
        GgmlType::F32 => quantize::quantize_row_f32(src, dst),
        GgmlType::F16 => quantize::quantize_row_f16(src, dst),
        GgmlType::BF16 => quantize::quantize_row_bf16(src, dst),
        GgmlType::Q8_0 => quantize::quantize_row_q8_0(src, dst),
        GgmlType::Q8_1 => quantize::quantize_row_q8_1(src, dst),
        GgmlType::Q8_K => quantize::quantize_row_q8_k(src, dst),
        _ => panic!("quantize_row: {ty} is not an activation type"),
    }
}

/// Dot product of one weight row of type `wty` with one activation row already quantized to
/// `wty.vec_dot_type()`, both of `n` elements.
pub fn vec_dot(wty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    check_rows(wty, n, w, act);
    dot_kernel(wty)(n, w, act)
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
    matmul::matmul(wty, w, n_in, n_out, acts, n_rows, out)
}
