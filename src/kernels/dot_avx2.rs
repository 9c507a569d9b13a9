//! AVX2 + FMA (+ F16C) twins of the scalar dot kernels, selected at run time.
//!
//! Quantized kernels: `maddubs` (u8 × i8 → pairwise i16) then `madd` (→ i32) give exact
//! integer sums per block; one float FMA per block (K-quants: per super-block) folds them
//! into 8 f32 lanes that are summed at the end. The summation order differs from the scalar
//! kernels, so results agree to float rounding, not bit for bit; each kernel is still a pure
//! function of its two rows.

use super::types::GgmlType;
use super::{Dot4Fn, Dot8Fn, DotFn, DotScaledFn, GroupTables};

#[cfg(target_arch = "x86_64")]
pub use imp::*;

/// True when the CPU has AVX2, FMA and F16C.
#[cfg(not(target_arch = "x86_64"))]
pub fn available() -> bool {
    false
}

/// No SIMD kernels off x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub fn kernel(_wty: GgmlType) -> Option<DotFn> {
    None
}

/// No SIMD kernels off x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub fn kernel4(_wty: GgmlType) -> Option<Dot4Fn> {
    None
}

/// No SIMD kernels off x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub fn kernel8(_wty: GgmlType) -> Option<Dot8Fn> {
    None
}

/// No AVX-512 off x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub fn avx512_available() -> bool {
    false
}

/// No SIMD kernels off x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub fn kernels_k_avx512(_wty: GgmlType) -> Option<(DotFn, Dot4Fn, Dot8Fn)> {
    None
}

/// No SIMD kernels off x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub fn kernel_scaled_avx512<const R: usize>(_wty: GgmlType) -> Option<DotScaledFn<R>> {
    None
}

/// No SIMD kernels off x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub fn offset_shift(_wty: GgmlType) -> Option<u32> {
    None
}

/// No SIMD kernels off x86_64 (never called: `offset_shift` is `None`).
#[cfg(not(target_arch = "x86_64"))]
pub fn corr_table<'t, const R: usize>(
    _acts: [&[u8]; R],
    _shift: u32,
    _out: &'t mut [std::mem::MaybeUninit<i32>],
) -> &'t [i32] {
    unreachable!("no AVX-512 kernels off x86_64")
}

/// No SIMD kernels off x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub fn kernel_scaled<const R: usize>(_wty: GgmlType) -> Option<DotScaledFn<R>> {
    None
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::super::blocks::{
        as_blocks, unpack_k4_scales, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0,
        BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1,
    };
    use super::{Dot4Fn, Dot8Fn, DotFn, DotScaledFn, GgmlType, GroupTables};
    use std::arch::x86_64::*;

    /// True when the CPU has AVX2, FMA and F16C (std caches the CPUID probe).
    pub fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// Safe wrappers: only handed out by `kernel`, which checks `available()` first.
    macro_rules! safe_wrappers {
        ($($safe:ident => $raw:ident),* $(,)?) => {$(
            fn $safe(n: usize, w: &[u8], a: &[u8]) -> f32 {
                // SAFETY: reachable only through `kernel`, which returned it after checking
                // that the CPU supports avx2, fma and f16c.
                unsafe { $raw(n, w, a) }
            }
        )*};
    }
    safe_wrappers!(
        s_f32 => vec_dot_f32, s_f16 => vec_dot_f16, s_bf16 => vec_dot_bf16,
        s_q4_0 => vec_dot_q4_0, s_q4_1 => vec_dot_q4_1, s_q5_0 => vec_dot_q5_0,
        s_q5_1 => vec_dot_q5_1, s_q8_0 => vec_dot_q8_0, s_q4_k => vec_dot_q4_k,
        s_q5_k => vec_dot_q5_k, s_q6_k => vec_dot_q6_k,
    );

    /// `kernel4` and `kernel8`: the 4- and 8-activation-row AVX2 kernels of each type that has
    /// them (bit-identical per row to `kernel(wty)`), or `None` for other types or when the CPU
    /// lacks the features. The closures capture nothing, so they coerce to fn pointers.
    macro_rules! multi_row_kernels {
        ($($ty:ident => $raw4:ident, $raw8:ident;)*) => {
            /// The 4-activation-row AVX2 kernel for `wty`, if any.
            pub fn kernel4(wty: GgmlType) -> Option<Dot4Fn> {
                if !available() {
                    return None;
                }
                match wty {
                    // SAFETY: `available()` checked avx2, fma and f16c just above.
                    $(GgmlType::$ty => Some(|n, w, a| unsafe { $raw4(n, w, a) }),)*
                    _ => None,
                }
            }

            /// The 8-activation-row AVX2 kernel for `wty`, if any.
            pub fn kernel8(wty: GgmlType) -> Option<Dot8Fn> {
                if !available() {
                    return None;
                }
                match wty {
                    // SAFETY: `available()` checked avx2, fma and f16c just above.
                    $(GgmlType::$ty => Some(|n, w, a| unsafe { $raw8(n, w, a) }),)*
                    _ => None,
                }
            }
        };
    }
    multi_row_kernels!(
        Q8_0 => vec_dot_q8_0_x4, vec_dot_q8_0_x8;
        Q4_0 => vec_dot_q4_0_x4, vec_dot_q4_0_x8;
        Q5_0 => vec_dot_q5_0_x4, vec_dot_q5_0_x8;
        Q4_K => vec_dot_q4_k_x4, vec_dot_q4_k_x8;
        Q5_K => vec_dot_q5_k_x4, vec_dot_q5_k_x8;
        Q6_K => vec_dot_q6_k_x4, vec_dot_q6_k_x8;
    );

    /// The R-activation-row AVX2 kernel for `wty` that takes the activation scales from a
    /// table (see [`DotScaledFn`]), if any: the types whose activations are Q8_0.
    macro_rules! scaled_kernels {
        ($($ty:ident => $raw:ident, $raw512:ident;)*) => {
            /// The scaled R-activation-row kernel for `wty`, if any: the AVX-512 one where the
            /// CPU has it and R is even (bit-identical to the AVX2 one), else AVX2.
            pub fn kernel_scaled<const R: usize>(wty: GgmlType) -> Option<DotScaledFn<R>> {
                if R % 2 == 0 && avx512_available() {
                    return kernel_scaled_avx512(wty);
                }
                kernel_scaled_avx2(wty)
            }

            /// The scaled R-activation-row AVX2 kernel for `wty`, if any.
            pub fn kernel_scaled_avx2<const R: usize>(wty: GgmlType) -> Option<DotScaledFn<R>> {
                if !available() {
                    return None;
                }
                match wty {
                    // SAFETY: `available()` checked avx2, fma and f16c just above; the kernel
                    // checks the table's length.
                    $(GgmlType::$ty => Some(|_, w, a, t| unsafe { $raw::<R>(w, a, t.scales) }),)*
                    _ => None,
                }
            }

            /// The scaled R-activation-row AVX-512 kernel for `wty`, if any (R even).
            pub fn kernel_scaled_avx512<const R: usize>(
                wty: GgmlType,
            ) -> Option<DotScaledFn<R>> {
                if R % 2 != 0 || !avx512_available() {
                    return None;
                }
                match wty {
                    // SAFETY: `avx512_available()` checked avx2, fma, f16c and the AVX-512
                    // subsets just above; the kernel checks the table's length and R.
                    $(GgmlType::$ty => Some(|_, w, a, t| unsafe { $raw512::<R>(w, a, t) }),)*
                    _ => None,
                }
            }
        };
    }
    scaled_kernels!(
        Q8_0 => q8_0_rows_scaled, q8_0_rows_scaled_512;
        Q4_0 => q4_0_rows_scaled, q4_0_rows_scaled_512;
        Q5_0 => q5_0_rows_scaled, q5_0_rows_scaled_512;
    );

    /// The AVX2 kernel for `wty`, or `None` if the CPU lacks the features.
    pub fn kernel(wty: GgmlType) -> Option<DotFn> {
        if !available() {
            return None;
        }
        Some(match wty {
            GgmlType::F32 => s_f32,
            GgmlType::F16 => s_f16,
            GgmlType::BF16 => s_bf16,
            GgmlType::Q4_0 => s_q4_0,
            GgmlType::Q4_1 => s_q4_1,
            GgmlType::Q5_0 => s_q5_0,
            GgmlType::Q5_1 => s_q5_1,
            GgmlType::Q8_0 => s_q8_0,
            GgmlType::Q4_K => s_q4_k,
            GgmlType::Q5_K => s_q5_k,
            GgmlType::Q6_K => s_q6_k,
            GgmlType::Q8_1 | GgmlType::Q8_K => return None,
        })
    }

    /// AVX2 `vec_dot` (lengths checked), or `None` if the CPU lacks the features.
    pub fn vec_dot(wty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> Option<f32> {
        super::super::check_rows(wty, n, w, a);
        kernel(wty).map(|f| f(n, w, a))
    }

    /// One f16 as f32. Scales are always decoded from a broadcast (`_mm_set1_epi16`): the
    /// broadcast writes the whole register, whereas inserting into lane 0 let LLVM merge into
    /// the accumulator register, a false dependency that serialised the block loop.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn h2f(b: [u8; 2]) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(b))))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum_ps(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// 8 × i32 partial sums of u8 × i8 products. Callers keep x ≤ 128 and |y| ≤ 127, so the
    /// `maddubs` i16 pair sums (≤ 2·128·127) never saturate.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_u8_i8(x: __m256i, y: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
    }

    /// The 32 nibbles of 16 bytes as bytes: low nibbles (elements 0..16) then high (16..32).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn nibbles_32(qs: &[u8; 16]) -> __m256i {
        let q = _mm_loadu_si128(qs.as_ptr().cast());
        let m4 = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(q, m4);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
        _mm256_set_m128i(hi, lo)
    }

    /// Byte j = 0x10 if bit j of the little-endian u32 `qh` is set, else 0.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn high_bits_32(qh: [u8; 4]) -> __m256i {
        let h = _mm256_set1_epi32(i32::from_le_bytes(qh));
        // Byte j takes byte j/8 of h (shuffle works per 128-bit lane; h is in both).
        let idx = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        );
        let bytes = _mm256_shuffle_epi8(h, idx);
        // Byte j tests bit j % 8.
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load32(p: &[i8]) -> __m256i {
        debug_assert!(p.len() >= 32);
        _mm256_loadu_si256(p.as_ptr().cast())
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load32u(p: &[u8]) -> __m256i {
        debug_assert!(p.len() >= 32);
        _mm256_loadu_si256(p.as_ptr().cast())
    }

    /// F32 · F32, in the order of llama.cpp's F32 matrix multiply (llamafile's tinyBLAS, which
    /// ggml uses for F32 weights whenever a batch has two or more rows): one 8-lane FMA
    /// accumulator along the row, summed across lanes at the end. (ggml's single-row
    /// `vec_dot_f32` keeps four accumulators instead; its prompt logits are the reference.)
    ///
    /// # Safety
    /// The CPU must support avx2, fma and f16c.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
        let n = n.min(w.len() / 4).min(a.len() / 4);
        let (pw, pa) = (w.as_ptr().cast::<f32>(), a.as_ptr().cast::<f32>());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(pw.add(i)), _mm256_loadu_ps(pa.add(i)), acc);
            i += 8;
        }
        let mut s = hsum_ps(acc);
        while i < n {
            s += pw.add(i).read_unaligned() * pa.add(i).read_unaligned();
            i += 1;
        }
        s
    }

    /// Loads 8 halves at element `i` as f32 (bf16: shift into the top 16 bits).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8_f16(p: *const u8, i: usize, bf16: bool) -> __m256 {
        let h = _mm_loadu_si128(p.add(2 * i).cast());
        if bf16 {
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        } else {
            _mm256_cvtph_ps(h)
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_16bit(n: usize, w: &[u8], a: &[u8], bf16: bool) -> f32 {
        let n = n.min(w.len() / 2).min(a.len() / 2);
        let (pw, pa) = (w.as_ptr(), a.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let x = load8_f16(pw, i + 8 * k, bf16);
                *acc = _mm256_fmadd_ps(x, load8_f16(pa, i + 8 * k, bf16), *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(load8_f16(pw, i, bf16), load8_f16(pa, i, bf16), acc[0]);
            i += 8;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum_ps(v);
        let one = |p: *const u8, i: usize| {
            let b = [*p.add(2 * i), *p.add(2 * i + 1)];
            if bf16 {
                f32::from_bits((u16::from_le_bytes(b) as u32) << 16)
            } else {
                half::f16::from_bits(u16::from_le_bytes(b)).to_f32()
            }
        };
        while i < n {
            s += one(pw, i) * one(pa, i);
            i += 1;
        }
        s
    }

    /// F16 · F16.
    ///
    /// # Safety
    /// The CPU must support avx2, fma and f16c.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
        dot_16bit(n, w, a, false)
    }

    /// BF16 · BF16.
    ///
    /// # Safety
    /// The CPU must support avx2, fma and f16c.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
        dot_16bit(n, w, a, true)
    }

    /// Defines the public one-row and four-row kernels over a `$rows::<R>` body.
    macro_rules! row_kernels {
        ($($one:ident, $four:ident, $eight:ident => $rows:ident, $name:literal;)*) => {$(
            #[doc = concat!($name, ".")]
            ///
            /// # Safety
            /// The CPU must support avx2, fma and f16c.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $one(_n: usize, w: &[u8], a: &[u8]) -> f32 {
                $rows::<1>(w, [a])[0]
            }

            #[doc = concat!($name, ", 4 activation rows; bit-identical to four single-row calls.")]
            ///
            /// # Safety
            /// The CPU must support avx2, fma and f16c.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $four(_n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
                $rows::<4>(w, a)
            }

            #[doc = concat!($name, ", 8 activation rows; bit-identical to eight single-row calls.")]
            ///
            /// # Safety
            /// The CPU must support avx2, fma and f16c.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $eight(_n: usize, w: &[u8], a: [&[u8]; 8]) -> [f32; 8] {
                $rows::<8>(w, a)
            }
        )*};
    }

    /// Defines `$rows::<R>`: R activation rows (Q8_0) dotted with one weight row whose blocks
    /// decode to 32 signed bytes via `$values`. The weight block is decoded once and reused
    /// for all R rows; each row's arithmetic is the same sequence of operations whatever R
    /// is, so `R = 4` results are bit-identical to `R = 1`.
    ///
    /// The float arithmetic is llama.cpp's on AVX2 (its vec_dot and tinyBLAS paths agree):
    /// lane k of a block holds the integer dot of values 4k..4k+3, one accumulator takes
    /// `fma(d_x·d_y, lane, acc)` block after block, and the lanes are summed at the end in
    /// `hsum_ps` order. Matching it bit for bit keeps greedy tokens identical to llama.cpp's.
    /// Signed × signed uses the sign trick: |x| · (y with x's sign) makes `maddubs`'s first
    /// operand unsigned; y never holds -128 (activation quantizers stay in ±127), so
    /// 2·128·127 fits in i16.
    macro_rules! signed_q8_0_rows {
        ($rows:ident, $blk:ty, |$x:ident| $values:expr) => {
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $rows<const R: usize>(w: &[u8], acts: [&[u8]; R]) -> [f32; R] {
                let xs = as_blocks::<$blk>(w);
                let nb = xs.len();
                let mut ys: [&[BlockQ8_0]; R] = [&[]; R];
                for r in 0..R {
                    ys[r] = &as_blocks::<BlockQ8_0>(acts[r])[..nb];
                }
                let mut acc = [_mm256_setzero_ps(); R];
                for (i, $x) in xs.iter().enumerate() {
                    prefetch_ahead(($x as *const $blk).cast(), 1);
                    let qx: __m256i = $values;
                    let ax = _mm256_sign_epi8(qx, qx);
                    let dx = _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes($x.d)));
                    for r in 0..R {
                        let y = &ys[r][i];
                        let sy = _mm256_sign_epi8(load32(&y.qs), qx);
                        let p = _mm256_cvtepi32_ps(dot_u8_i8(ax, sy));
                        let dy = _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(y.d)));
                        acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(dx, dy), p, acc[r]);
                    }
                }
                hsums(&acc)
            }
        };
    }

    /// The 32 signed values of a Q8_0 block.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_values(x: &BlockQ8_0) -> __m256i {
        load32(&x.qs)
    }

    /// The 32 values of a Q4_0 block, offset removed (-8..7).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_0_values(x: &BlockQ4_0) -> __m256i {
        _mm256_sub_epi8(nibbles_32(&x.qs), _mm256_set1_epi8(8))
    }

    /// The 32 values of a Q5_0 block, offset removed (-16..15).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q5_0_values(x: &BlockQ5_0) -> __m256i {
        let q = _mm256_or_si256(nibbles_32(&x.qs), high_bits_32(x.qh));
        _mm256_sub_epi8(q, _mm256_set1_epi8(16))
    }

    /// The lane sums of R accumulators.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsums<const R: usize>(acc: &[__m256; R]) -> [f32; R] {
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum_ps(acc[r]);
        }
        out
    }

    signed_q8_0_rows!(q8_0_rows, BlockQ8_0, |x| q8_0_values(x));
    signed_q8_0_rows!(q4_0_rows, BlockQ4_0, |x| q4_0_values(x));
    signed_q8_0_rows!(q5_0_rows, BlockQ5_0, |x| q5_0_values(x));

    /// Defines `$scaled::<R>`: the body of `signed_q8_0_rows!` with the activation scales read
    /// from a table (`q8_0_scale_table`: each f16 scale as f32, repeated in 8 lanes) instead of
    /// decoded from f16 for every (weight row, activation block) pair, so `d_x·d_y` is one
    /// multiply with a memory operand. The products are the same floats (f16 → f32 is exact),
    /// so results are bit-identical to `$rows::<R>`; the inner loop is about a quarter shorter.
    /// (A table of plain scalars read back with a broadcast compiled to lane shuffles instead.)
    macro_rules! signed_q8_0_rows_scaled {
        ($scaled:ident, $blk:ty, |$x:ident| $values:expr) => {
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $scaled<const R: usize>(
                w: &[u8],
                acts: [&[u8]; R],
                scales: &[f32],
            ) -> [f32; R] {
                let xs = as_blocks::<$blk>(w);
                let nb = xs.len();
                assert!(scales.len() >= 8 * R * nb, "8 lanes per row per block");
                // Raw row pointers (lengths checked here): with slices, LLVM spilled three
                // accumulators to the stack and the loop ran at half speed.
                let ys: [*const BlockQ8_0; R] =
                    std::array::from_fn(|r| as_blocks::<BlockQ8_0>(acts[r])[..nb].as_ptr());
                let ones = _mm256_set1_epi16(1);
                let mut acc = [_mm256_setzero_ps(); R];
                for (i, $x) in xs.iter().enumerate() {
                    prefetch_ahead(($x as *const $blk).cast(), 1);
                    let qx: __m256i = $values;
                    let ax = _mm256_sign_epi8(qx, qx);
                    let dx = _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes($x.d)));
                    let dy = scales.as_ptr().add(8 * R * i);
                    for r in 0..R {
                        // SAFETY: i < nb, and row r holds at least nb blocks (sliced above).
                        let y = _mm256_loadu_si256((*ys[r].add(i)).qs.as_ptr().cast());
                        let sy = _mm256_sign_epi8(y, qx);
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones);
                        let d = _mm256_mul_ps(dx, _mm256_loadu_ps(dy.add(8 * r)));
                        acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[r]);
                    }
                }
                hsums(&acc)
            }
        };
    }

    signed_q8_0_rows_scaled!(q8_0_rows_scaled, BlockQ8_0, |x| q8_0_values(x));
    signed_q8_0_rows_scaled!(q4_0_rows_scaled, BlockQ4_0, |x| q4_0_values(x));
    signed_q8_0_rows_scaled!(q5_0_rows_scaled, BlockQ5_0, |x| q5_0_values(x));

    /// Bytes ahead of the current weight block that the AVX-512 and AVX2 kernels prefetch. Weight
    /// rows are streams read once per call; the hardware prefetcher alone left the decode
    /// kernels waiting on memory. Measured on `bench-model -p 20 -n 32` (decode, tokens/s):
    /// none 44.2, 512 B 48.6, 1 KiB 56.1, 2 KiB 62.9, 4 KiB 65.9, 8 KiB 66.1.
    const PREFETCH_AHEAD: usize = 4096;

    /// Prefetches the `lines` cache lines from `PREFETCH_AHEAD` bytes past `p` (a pointer into
    /// a weight row; past the row's end it is the next row, or other memory: a prefetch
    /// never faults, and `wrapping_add` makes no claim about the address).
    #[inline(always)]
    pub(crate) unsafe fn prefetch_ahead(p: *const u8, lines: usize) {
        for l in 0..lines {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD + 64 * l).cast());
        }
    }

    /// True when the CPU also has AVX-512 F, BW, DQ, VL and VNNI, for the paired scaled
    /// kernels below (std caches the CPUID probe); `RYZANSTEIN_NO_AVX512=1` (read once) turns
    /// them off, to compare.
    pub fn avx512_available() -> bool {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            let off = std::env::var("RYZANSTEIN_NO_AVX512").is_ok_and(|v| v == "1");
            !off && available()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
        })
    }

    /// Defines `$scaled::<R>` on AVX-512: `signed_q8_0_rows_scaled!` with two activation rows
    /// per 512-bit register (rows 2p and 2p+1 in the low and high 8 lanes) and the weights
    /// taken as unsigned bytes `u = x + 2^shift` (`$uvalues`: the raw nibbles for Q4_0 and
    /// Q5_0, `x ^ 0x80` for Q8_0), so one `vpdpbusd` per pair does the products: it starts
    /// from the group table's correction `-(Σ y) << shift` for the lane's four values and adds
    /// `Σ u·y`, which leaves exactly the lane's `Σ x·y` (no i16 step to saturate; |sums| stay
    /// far inside i32). Every lane then does the float operations of its AVX2 twin on the same
    /// integers — scale product, conversion, the FMA chain over blocks, the final lane sum —
    /// so results are bit-identical to it. R must be even.
    macro_rules! offset_q8_0_rows_scaled_avx512 {
        ($scaled:ident, $blk:ty, |$x:ident| $uvalues:expr) => {
            #[inline]
            #[target_feature(
                enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni"
            )]
            unsafe fn $scaled<const R: usize>(
                w: &[u8],
                acts: [&[u8]; R],
                t: GroupTables<'_>,
            ) -> [f32; R] {
                let xs = as_blocks::<$blk>(w);
                let nb = xs.len();
                assert!(R % 2 == 0 && R <= 16, "rows go in pairs, at most 8 of them");
                assert!(
                    t.scales.len() >= 8 * R * nb,
                    "8 scale lanes per row per block"
                );
                assert!(
                    t.corr.len() >= 8 * R * nb,
                    "8 correction lanes per row per block"
                );
                let ys: [*const BlockQ8_0; R] =
                    std::array::from_fn(|r| as_blocks::<BlockQ8_0>(acts[r])[..nb].as_ptr());
                let mut acc = [_mm512_setzero_ps(); 8];
                for (i, $x) in xs.iter().enumerate() {
                    prefetch_ahead(($x as *const $blk).cast(), 1);
                    let u: __m256i = $uvalues;
                    let u = _mm512_broadcast_i64x4(u);
                    let dx = _mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(
                        i16::from_le_bytes($x.d),
                    ))));
                    let dy = t.scales.as_ptr().add(8 * R * i);
                    let cy = t.corr.as_ptr().add(8 * R * i);
                    for p in 0..R / 2 {
                        // SAFETY: i < nb, and every row holds at least nb blocks (sliced above);
                        // both tables hold 8R lanes per block (asserted).
                        let lo = _mm256_loadu_si256((*ys[2 * p].add(i)).qs.as_ptr().cast());
                        let hi = _mm256_loadu_si256((*ys[2 * p + 1].add(i)).qs.as_ptr().cast());
                        let y = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                        let c = _mm512_loadu_si512(cy.add(16 * p).cast());
                        let dot = _mm512_dpbusd_epi32(c, u, y);
                        let d = _mm512_mul_ps(dx, _mm512_loadu_ps(dy.add(16 * p)));
                        acc[p] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot), acc[p]);
                    }
                }
                let mut out = [0f32; R];
                for p in 0..R / 2 {
                    out[2 * p] = hsum_ps(_mm512_castps512_ps256(acc[p]));
                    out[2 * p + 1] = hsum_ps(_mm512_extractf32x8_ps(acc[p], 1));
                }
                out
            }
        };
    }

    /// The shift of the unsigned form the AVX-512 scaled kernels read `wty`'s weights in
    /// (`u = x + 2^shift`: Q8_0 7, Q5_0 4, Q4_0 3), if they have one for it.
    pub fn offset_shift(wty: GgmlType) -> Option<u32> {
        match wty {
            GgmlType::Q8_0 => Some(7),
            GgmlType::Q5_0 => Some(4),
            GgmlType::Q4_0 => Some(3),
            _ => None,
        }
    }

    /// Fills the correction table of R Q8_0 activation rows for weights read as `x + 2^shift`:
    /// `[8R·block + 8·row + k]` holds `-(y[4k] + … + y[4k+3]) << shift` of that block, and
    /// returns it. `out` holds `8R × blocks` lanes (every one is written); each row at least
    /// that many blocks. Needs AVX2 (checked).
    pub fn corr_table<'t, const R: usize>(
        acts: [&[u8]; R],
        shift: u32,
        out: &'t mut [std::mem::MaybeUninit<i32>],
    ) -> &'t [i32] {
        assert!(available(), "AVX2");
        assert!(shift <= 7, "offsets up to 128");
        let nb = out.len() / (8 * R);
        for (row, a) in acts.iter().enumerate() {
            let blocks = &as_blocks::<BlockQ8_0>(a)[..nb];
            for (i, b) in blocks.iter().enumerate() {
                let at = 8 * R * i + 8 * row;
                // SAFETY: AVX2 checked above; `at + 8 <= out.len()` since row < R, i < nb.
                unsafe { corr_lanes(b, shift, out[at..at + 8].as_mut_ptr().cast()) };
            }
        }
        let out = &out[..8 * R * nb];
        // SAFETY: the loops wrote all 8R·nb lanes (R rows × nb blocks × 8, each at its own
        // offset), and MaybeUninit<i32> has i32's layout.
        unsafe { &*(out as *const [std::mem::MaybeUninit<i32>] as *const [i32]) }
    }

    /// Writes the 8 correction lanes of one activation block at `dst`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn corr_lanes(y: &BlockQ8_0, shift: u32, dst: *mut i32) {
        let sums = dot_u8_i8(_mm256_set1_epi8(1), load32(&y.qs));
        let c = _mm256_sub_epi32(
            _mm256_setzero_si256(),
            _mm256_sll_epi32(sums, _mm_cvtsi32_si128(shift as i32)),
        );
        _mm256_storeu_si256(dst.cast(), c);
    }

    /// The 32 values of a Q8_0 block plus 128, as unsigned bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_uvalues(x: &BlockQ8_0) -> __m256i {
        _mm256_xor_si256(load32(&x.qs), _mm256_set1_epi8(0x80u8 as i8))
    }

    offset_q8_0_rows_scaled_avx512!(q8_0_rows_scaled_512, BlockQ8_0, |x| q8_0_uvalues(x));
    offset_q8_0_rows_scaled_avx512!(q4_0_rows_scaled_512, BlockQ4_0, |x| nibbles_32(&x.qs));
    offset_q8_0_rows_scaled_avx512!(q5_0_rows_scaled_512, BlockQ5_0, |x| _mm256_or_si256(
        nibbles_32(&x.qs),
        high_bits_32(x.qh)
    ));

    row_kernels!(
        vec_dot_q8_0, vec_dot_q8_0_x4, vec_dot_q8_0_x8 => q8_0_rows, "Q8_0 · Q8_0 (the hot path: token embeddings / output)";
        vec_dot_q4_0, vec_dot_q4_0_x4, vec_dot_q4_0_x8 => q4_0_rows, "Q4_0 · Q8_0";
        vec_dot_q5_0, vec_dot_q5_0_x4, vec_dot_q5_0_x8 => q5_0_rows, "Q5_0 · Q8_0";
    );

    /// Defines `$rows::<R>` for weights with an offset (Q4_1, Q5_1) against Q8_1 rows:
    /// d_x d_y Σ q·q8 + m_x s_y per block, `$values` giving 32 unsigned bytes (≤ 31). Two
    /// accumulators per row (even / odd blocks) hide the FMA latency — no peer order to follow
    /// here, as the default model has no Q4_1/Q5_1 tensors; the m·s term is FMA'd into all 8 lanes
    /// of its own accumulators and read from lane 0 (vector, to keep the loop free of a
    /// scalar add chain).
    macro_rules! offset_q8_1_rows {
        ($rows:ident, $blk:ty, |$x:ident| $values:expr) => {
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $rows<const R: usize>(w: &[u8], acts: [&[u8]; R]) -> [f32; R] {
                let xs = as_blocks::<$blk>(w);
                let nb = xs.len();
                let mut ys: [&[BlockQ8_1]; R] = [&[]; R];
                for r in 0..R {
                    ys[r] = &as_blocks::<BlockQ8_1>(acts[r])[..nb];
                }
                let mut acc = [[_mm256_setzero_ps(); 2]; R];
                let mut accm = [[_mm256_setzero_ps(); 2]; R];
                let mut i = 0;
                while i < nb {
                    for k in 0..2 {
                        if i + k >= nb {
                            break;
                        }
                        let $x = &xs[i + k];
                        let qx: __m256i = $values;
                        let dx = _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes($x.d)));
                        let mx = _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes($x.m)));
                        for r in 0..R {
                            let y = &ys[r][i + k];
                            let p = _mm256_cvtepi32_ps(dot_u8_i8(qx, load32(&y.qs)));
                            let dy = _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(y.d)));
                            let sy = _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(y.s)));
                            acc[r][k] = _mm256_fmadd_ps(_mm256_mul_ps(dx, dy), p, acc[r][k]);
                            accm[r][k] = _mm256_fmadd_ps(mx, sy, accm[r][k]);
                        }
                    }
                    i += 2;
                }
                let mut out = [0f32; R];
                for r in 0..R {
                    let m = _mm256_add_ps(accm[r][0], accm[r][1]);
                    out[r] = hsum_ps(_mm256_add_ps(acc[r][0], acc[r][1])) + _mm256_cvtss_f32(m);
                }
                out
            }
        };
    }

    offset_q8_1_rows!(q4_1_rows, BlockQ4_1, |x| nibbles_32(&x.qs));
    offset_q8_1_rows!(q5_1_rows, BlockQ5_1, |x| _mm256_or_si256(
        nibbles_32(&x.qs),
        high_bits_32(x.qh)
    ));

    /// Q4_1 · Q8_1.
    ///
    /// # Safety
    /// The CPU must support avx2, fma and f16c.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_q4_1(_n: usize, w: &[u8], a: &[u8]) -> f32 {
        q4_1_rows::<1>(w, [a])[0]
    }

    /// Q5_1 · Q8_1.
    ///
    /// # Safety
    /// The CPU must support avx2, fma and f16c.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_q5_1(_n: usize, w: &[u8], a: &[u8]) -> f32 {
        q5_1_rows::<1>(w, [a])[0]
    }

    /// 8 × i32 lanes whose sum is Σ_k mn[k] · (bsums[2k] + bsums[2k+1]).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn k4_mins(mn: &[u8; 8], y: &BlockQ8K) -> __m256i {
        let m = _mm_loadl_epi64(mn.as_ptr().cast());
        // [mn0, mn0, mn1, mn1, …] so each mn multiplies the two group sums of its sub-block.
        let dup = _mm_unpacklo_epi8(m, m);
        let m16 = _mm256_cvtepu8_epi16(dup);
        _mm256_madd_epi16(load32u(&y.bsums), m16)
    }

    /// One decoded Q4_K / Q5_K weight block: per 64-value chunk c, the low-half and
    /// high-half unsigned values (≤ 31) as 32 bytes each, the 6-bit scales/mins, and the
    /// f16 super-block scales as f32.
    struct K4Block {
        q: [[__m256i; 2]; 4],
        sc: [u8; 8],
        mn: [u8; 8],
        xd: f32,
        xdmin: f32,
    }

    /// Q4_K / Q5_K core for R activation rows. The weight block is decoded once for all R
    /// rows; each row's arithmetic is identical whatever R is.
    #[inline(always)]
    unsafe fn k4_rows_body<const R: usize>(
        x: &K4Block,
        ys: [&BlockQ8K; R],
        acc: &mut [__m256; R],
        accm: &mut [__m256; R],
    ) {
        let (q, sc, mn, xd, xdmin) = (&x.q, &x.sc, &x.mn, x.xd, x.xdmin);
        for r in 0..R {
            let y = ys[r];
            let mut sumi = _mm256_setzero_si256();
            for (c, qc) in q.iter().enumerate() {
                let plo = _mm256_maddubs_epi16(qc[0], load32(&y.qs[64 * c..]));
                let phi = _mm256_maddubs_epi16(qc[1], load32(&y.qs[64 * c + 32..]));
                let plo = _mm256_madd_epi16(plo, _mm256_set1_epi16(sc[2 * c] as i16));
                let phi = _mm256_madd_epi16(phi, _mm256_set1_epi16(sc[2 * c + 1] as i16));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
            }
            let yd = y.d();
            let d = _mm256_set1_ps(yd * xd);
            let dmin = _mm256_set1_ps(yd * xdmin);
            acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc[r]);
            accm[r] = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(k4_mins(mn, y)), accm[r]);
        }
    }

    /// Activation rows as Q8_K block slices of exactly `nb` blocks.
    #[inline(always)]
    fn q8k_rows<const R: usize>(acts: [&[u8]; R], nb: usize) -> [&[BlockQ8K]; R] {
        let mut ys: [&[BlockQ8K]; R] = [&[]; R];
        for r in 0..R {
            ys[r] = &as_blocks::<BlockQ8K>(acts[r])[..nb];
        }
        ys
    }

    /// Q4_K for R rows, with the float arithmetic of llama.cpp's repacked Q4_K kernels (which
    /// it uses for every Q4_K matrix on AVX2): per super-block the whole integer sums
    /// `Σ sc·Σ q·q8` and `Σ mn·bsum` are exact, then `acc = fma(sum, d_x·d_y, acc)` and
    /// `accm = fma(mins, dmin_x·d_y, accm)` block after block; the result is `acc − accm`.
    ///
    /// With 8 rows the two integer sums of all rows are reduced together (`row_totals8`) and
    /// the float steps run lane-wise over the rows, one lane per row: the same operations on
    /// the same values, so bit-identical to the one-row path, with fewer instructions. (The
    /// same for 4 rows measured slower than per-row sums: `hadd` is not cheap.)
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_k_rows<const R: usize>(w: &[u8], acts: [&[u8]; R]) -> [f32; R] {
        let xs = as_blocks::<BlockQ4K>(w);
        let ys = q8k_rows(acts, xs.len());
        let m4 = _mm256_set1_epi8(0x0F);
        let mut k = K4Acc::<R>::new();
        for (i, x) in xs.iter().enumerate() {
            prefetch_ahead((x as *const BlockQ4K).cast(), 3);
            let (sc, mn) = unpack_k4_scales(&x.scales);
            let mut q = [[_mm256_setzero_si256(); 2]; 4];
            for (c, qc) in q.iter_mut().enumerate() {
                let q4 = load32u(&x.qs[32 * c..]);
                qc[0] = _mm256_and_si256(q4, m4);
                qc[1] = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            }
            let (xd, xdmin) = (h2f(x.d), h2f(x.dmin));
            let mut sums = [_mm256_setzero_si256(); R];
            let mut mins = [_mm256_setzero_si256(); R];
            for r in 0..R {
                let y = &ys[r][i];
                let mut sumi = _mm256_setzero_si256();
                for (c, qc) in q.iter().enumerate() {
                    let plo = _mm256_maddubs_epi16(qc[0], load32(&y.qs[64 * c..]));
                    let phi = _mm256_maddubs_epi16(qc[1], load32(&y.qs[64 * c + 32..]));
                    let plo = _mm256_madd_epi16(plo, _mm256_set1_epi16(sc[2 * c] as i16));
                    let phi = _mm256_madd_epi16(phi, _mm256_set1_epi16(sc[2 * c + 1] as i16));
                    sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
                }
                sums[r] = sumi;
                mins[r] = k4_mins(&mn, y);
            }
            k.add_block(
                &sums,
                &mins,
                std::array::from_fn(|r| ys[r][i].d()),
                xd,
                xdmin,
            );
        }
        k.finish()
    }

    /// The float steps of the Q4_K kernels (AVX2 and AVX-512 share them), in llama.cpp's
    /// order: per super-block `acc = fma(sum, d_x·d_y, acc)` and `accm = fma(mins,
    /// dmin_x·d_y, accm)`; the result is `acc − accm`. With 8 rows the steps run lane-wise
    /// over the rows (one lane per row, the same operations on the same values).
    struct K4Acc<const R: usize> {
        acc: [f32; R],
        accm: [f32; R],
        acc8: __m256,
        accm8: __m256,
    }

    impl<const R: usize> K4Acc<R> {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        fn new() -> Self {
            K4Acc {
                acc: [0.0; R],
                accm: [0.0; R],
                acc8: _mm256_setzero_ps(),
                accm8: _mm256_setzero_ps(),
            }
        }

        /// Folds one super-block: each row's exact integer sums and mins (8 lanes to total)
        /// and its activation scale `yd[r]`, with the weight's `xd` and `xdmin`.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn add_block(
            &mut self,
            sums: &[__m256i; R],
            mins: &[__m256i; R],
            yd: [f32; R],
            xd: f32,
            xdmin: f32,
        ) {
            if R == 8 {
                let y = _mm256_loadu_ps(yd.as_ptr());
                let isum = _mm256_cvtepi32_ps(row_totals8(sums));
                let imin = _mm256_cvtepi32_ps(row_totals8(mins));
                self.acc8 = _mm256_fmadd_ps(isum, _mm256_mul_ps(_mm256_set1_ps(xd), y), self.acc8);
                self.accm8 =
                    _mm256_fmadd_ps(imin, _mm256_mul_ps(_mm256_set1_ps(xdmin), y), self.accm8);
            } else {
                for r in 0..R {
                    let isum = hsum_epi32(sums[r]) as f32;
                    let imin = hsum_epi32(mins[r]) as f32;
                    self.acc[r] = isum.mul_add(xd * yd[r], self.acc[r]);
                    self.accm[r] = imin.mul_add(xdmin * yd[r], self.accm[r]);
                }
            }
        }

        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn finish(mut self) -> [f32; R] {
            if R == 8 {
                _mm256_storeu_ps(self.acc.as_mut_ptr(), self.acc8);
                _mm256_storeu_ps(self.accm.as_mut_ptr(), self.accm8);
            }
            std::array::from_fn(|r| self.acc[r] - self.accm[r])
        }
    }

    /// The exact sums of the 8 i32 lanes of each of 8 vectors (wrapping, like `hsum_epi32`),
    /// as one vector: lane r holds the sum of `v[r]`. Integer sums do not depend on order.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn row_totals8<const R: usize>(v: &[__m256i; R]) -> __m256i {
        debug_assert_eq!(R, 8);
        // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7].
        let a01 = _mm256_hadd_epi32(v[0], v[1]);
        let a23 = _mm256_hadd_epi32(v[2], v[3]);
        let a45 = _mm256_hadd_epi32(v[4], v[5]);
        let a67 = _mm256_hadd_epi32(v[6], v[7]);
        // [Σ v0 lo, Σ v1 lo, Σ v2 lo, Σ v3 lo | the same over the high halves].
        let b03 = _mm256_hadd_epi32(a01, a23);
        let b47 = _mm256_hadd_epi32(a45, a67);
        let lo = _mm256_permute2x128_si256(b03, b47, 0x20);
        let hi = _mm256_permute2x128_si256(b03, b47, 0x31);
        _mm256_add_epi32(lo, hi)
    }

    /// Exact sum of 8 i32 lanes (wrapping, as the hardware does).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum_epi32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q5_k_rows<const R: usize>(w: &[u8], acts: [&[u8]; R]) -> [f32; R] {
        let xs = as_blocks::<BlockQ5K>(w);
        let ys = q8k_rows(acts, xs.len());
        let m4 = _mm256_set1_epi8(0x0F);
        let b4 = _mm256_set1_epi8(0x10);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut accm = [_mm256_setzero_ps(); R];
        for (i, x) in xs.iter().enumerate() {
            let (sc, mn) = unpack_k4_scales(&x.scales);
            let qh = load32u(&x.qh);
            let mut q = [[_mm256_setzero_si256(); 2]; 4];
            for (c, qc) in q.iter_mut().enumerate() {
                let q4 = load32u(&x.qs[32 * c..]);
                // Bit 2c of qh[l] is bit 4 of low-half value l, bit 2c+1 of high-half value l.
                let mlo = _mm256_set1_epi8((1u8 << (2 * c)) as i8);
                let mhi = _mm256_set1_epi8((1u8 << (2 * c + 1)) as i8);
                let hlo = _mm256_cmpeq_epi8(_mm256_and_si256(qh, mlo), mlo);
                let hhi = _mm256_cmpeq_epi8(_mm256_and_si256(qh, mhi), mhi);
                let lo = _mm256_and_si256(q4, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
                qc[0] = _mm256_or_si256(lo, _mm256_and_si256(hlo, b4));
                qc[1] = _mm256_or_si256(hi, _mm256_and_si256(hhi, b4));
            }
            let yb = std::array::from_fn(|r| &ys[r][i]);
            let kb = K4Block {
                q,
                sc,
                mn,
                xd: h2f(x.d),
                xdmin: h2f(x.dmin),
            };
            k4_rows_body(&kb, yb, &mut acc, &mut accm);
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum_ps(_mm256_sub_ps(acc[r], accm[r]));
        }
        out
    }

    /// Q6_K for R rows. The 6-bit values go into `maddubs` unsigned (0..63); the −32 offset
    /// is removed exactly in integers as 32 · Σ_k sc_k · bsums_k (sub-block k = group k of
    /// 16 values).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6_k_rows<const R: usize>(w: &[u8], acts: [&[u8]; R]) -> [f32; R] {
        let xs = as_blocks::<BlockQ6K>(w);
        let ys = q8k_rows(acts, xs.len());
        let mut acc = [_mm256_setzero_ps(); R];
        for (i, x) in xs.iter().enumerate() {
            prefetch_ahead((x as *const BlockQ6K).cast(), 4);
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.scales.as_ptr().cast()));
            let (q, s) = q6k_values(x);
            let xd = h2f(x.d);
            for r in 0..R {
                let y = &ys[r][i];
                let offset = _mm256_madd_epi16(load32u(&y.bsums), sc16);
                let mut sumi =
                    _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offset, 5));
                for j in 0..8 {
                    let p = _mm256_maddubs_epi16(q[j], load32(&y.qs[32 * j..]));
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s[j]));
                }
                let d = _mm256_set1_ps(xd * y.d());
                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc[r]);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum_ps(acc[r]);
        }
        out
    }

    /// `q4_k_rows` on AVX-512: each 64-value chunk's low and high nibbles in one register
    /// against 64 activation bytes, `maddubs` then `vpdpwssd` with the two sub-block scales —
    /// two instructions where AVX2 takes six. Only each row's integer totals reach the float
    /// steps, and integer sums do not depend on order, so results are bit-identical.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    unsafe fn q4_k_rows_512<const R: usize>(w: &[u8], acts: [&[u8]; R]) -> [f32; R] {
        let xs = as_blocks::<BlockQ4K>(w);
        let ys = q8k_rows(acts, xs.len());
        let m4 = _mm256_set1_epi8(0x0F);
        let mut k = K4Acc::<R>::new();
        for (i, x) in xs.iter().enumerate() {
            prefetch_ahead((x as *const BlockQ4K).cast(), 3);
            let (sc, mn) = unpack_k4_scales(&x.scales);
            let mut q = [_mm512_setzero_si512(); 4];
            let mut s = [_mm512_setzero_si512(); 4];
            for c in 0..4 {
                let q4 = load32u(&x.qs[32 * c..]);
                let lo = _mm256_and_si256(q4, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
                q[c] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                s[c] = _mm512_inserti64x4(
                    _mm512_set1_epi16(sc[2 * c] as i16),
                    _mm256_set1_epi16(sc[2 * c + 1] as i16),
                    1,
                );
            }
            let (xd, xdmin) = (h2f(x.d), h2f(x.dmin));
            let mut sums = [_mm256_setzero_si256(); R];
            let mut mins = [_mm256_setzero_si256(); R];
            for r in 0..R {
                let y = &ys[r][i];
                let mut sumi = _mm512_setzero_si512();
                for c in 0..4 {
                    let yv = _mm512_loadu_si512(y.qs[64 * c..].as_ptr().cast());
                    sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(q[c], yv), s[c]);
                }
                sums[r] = _mm256_add_epi32(
                    _mm512_castsi512_si256(sumi),
                    _mm512_extracti64x4_epi64(sumi, 1),
                );
                mins[r] = k4_mins(&mn, y);
            }
            k.add_block(
                &sums,
                &mins,
                std::array::from_fn(|r| ys[r][i].d()),
                xd,
                xdmin,
            );
        }
        k.finish()
    }

    /// One Q6_K block's 256 values (unsigned, 0..63) and scales: `q[4h + g]` holds values
    /// 128h + 32g .. +32; `s[4h + g]` its two 16-value scales as i16 (lanes 0..8 scale k,
    /// lanes 8..16 scale k + 1), for `maddubs` + `madd`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6k_values(x: &BlockQ6K) -> ([__m256i; 8], [__m256i; 8]) {
        let m4 = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        // q[4h + g]: values 128h + 32g .. +32; s[4h + g]: lane 0 scale k, lane 1 k + 1.
        let mut q = [_mm256_setzero_si256(); 8];
        let mut s = [_mm256_setzero_si256(); 8];
        for h in 0..2 {
            let ql0 = load32u(&x.ql[64 * h..]);
            let ql1 = load32u(&x.ql[64 * h + 32..]);
            let qh = load32u(&x.qh[32 * h..]);
            let lo0 = _mm256_and_si256(ql0, m4);
            let lo1 = _mm256_and_si256(ql1, m4);
            let hi0 = _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4);
            let hi1 = _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4);
            let h0 = _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30);
            let h1 = _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30);
            let h2 = _mm256_and_si256(qh, m30);
            let h3 = _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30);
            q[4 * h] = _mm256_or_si256(lo0, h0);
            q[4 * h + 1] = _mm256_or_si256(lo1, h1);
            q[4 * h + 2] = _mm256_or_si256(hi0, h2);
            q[4 * h + 3] = _mm256_or_si256(hi1, h3);
            for g in 0..4 {
                let k = 8 * h + 2 * g;
                s[4 * h + g] = _mm256_set_m128i(
                    _mm_set1_epi16(x.scales[k + 1] as i16),
                    _mm_set1_epi16(x.scales[k] as i16),
                );
            }
        }
        (q, s)
    }

    /// `q6_k_rows` on AVX-512: groups j and j+1 (64 contiguous values) in one register,
    /// `maddubs` then `vpdpwssd` with their scales; the two 8-lane halves are added into the
    /// AVX2 kernel's 8 lanes (lane k of the AVX2 sum is lane k of group j plus lane k of
    /// group j+1, exact integers), so every float step sees the same values: bit-identical.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    unsafe fn q6_k_rows_512<const R: usize>(w: &[u8], acts: [&[u8]; R]) -> [f32; R] {
        let xs = as_blocks::<BlockQ6K>(w);
        let ys = q8k_rows(acts, xs.len());
        let mut acc = [_mm256_setzero_ps(); R];
        for (i, x) in xs.iter().enumerate() {
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.scales.as_ptr().cast()));
            let (q, s) = q6k_values(x);
            prefetch_ahead((x as *const BlockQ6K).cast(), 4);
            let join = |a: __m256i, b: __m256i| _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
            let q2: [__m512i; 4] = std::array::from_fn(|j| join(q[2 * j], q[2 * j + 1]));
            let s2: [__m512i; 4] = std::array::from_fn(|j| join(s[2 * j], s[2 * j + 1]));
            let xd = h2f(x.d);
            for r in 0..R {
                let y = &ys[r][i];
                let offset = _mm256_madd_epi16(load32u(&y.bsums), sc16);
                let mut sum2 = _mm512_setzero_si512();
                for j in 0..4 {
                    let yv = _mm512_loadu_si512(y.qs[64 * j..].as_ptr().cast());
                    sum2 = _mm512_dpwssd_epi32(sum2, _mm512_maddubs_epi16(q2[j], yv), s2[j]);
                }
                let sumi = _mm256_add_epi32(
                    _mm512_castsi512_si256(sum2),
                    _mm512_extracti64x4_epi64(sum2, 1),
                );
                let sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32(offset, 5));
                let d = _mm256_set1_ps(xd * y.d());
                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc[r]);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum_ps(acc[r]);
        }
        out
    }

    /// The AVX-512 kernels of the K-quants that have them (Q4_K, Q6_K) for 1, 4 and 8
    /// activation rows, bit-identical to the AVX2 ones, if the CPU has AVX-512 VNNI.
    pub fn kernels_k_avx512(wty: GgmlType) -> Option<(DotFn, Dot4Fn, Dot8Fn)> {
        if !avx512_available() {
            return None;
        }
        // SAFETY (all six): `avx512_available()` checked every feature they enable.
        match wty {
            GgmlType::Q4_K => Some((
                |_, w, a| unsafe { q4_k_rows_512::<1>(w, [a])[0] },
                |_, w, a| unsafe { q4_k_rows_512::<4>(w, a) },
                |_, w, a| unsafe { q4_k_rows_512::<8>(w, a) },
            )),
            GgmlType::Q6_K => Some((
                |_, w, a| unsafe { q6_k_rows_512::<1>(w, [a])[0] },
                |_, w, a| unsafe { q6_k_rows_512::<4>(w, a) },
                |_, w, a| unsafe { q6_k_rows_512::<8>(w, a) },
            )),
            _ => None,
        }
    }

    row_kernels!(
        vec_dot_q4_k, vec_dot_q4_k_x4, vec_dot_q4_k_x8 => q4_k_rows, "Q4_K · Q8_K";
        vec_dot_q5_k, vec_dot_q5_k_x4, vec_dot_q5_k_x8 => q5_k_rows, "Q5_K · Q8_K";
        vec_dot_q6_k, vec_dot_q6_k_x4, vec_dot_q6_k_x8 => q6_k_rows, "Q6_K · Q8_K";
    );
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::super::dot_scalar::tests::{make_case, sizes};
    use super::super::random_rows::ref_dot;
    use super::super::{dot_scalar, GgmlType};

    #[test]
    fn avx2_matches_scalar() {
        if !super::available() {
            eprintln!("note: CPU lacks AVX2/FMA/F16C, AVX2 kernels not tested");
            return;
        }
        for ty in GgmlType::WEIGHT_TYPES {
            for n in sizes(ty) {
                for seed in 0..4 {
                    let c = make_case(ty, n, seed + 100);
                    let s = dot_scalar::vec_dot(ty, n, &c.w, &c.qa) as f64;
                    let v = super::vec_dot(ty, n, &c.w, &c.qa).expect("avx2 available") as f64;
                    let (_, mag) = ref_dot(&c.wf, &c.xq);
                    assert!(
                        (v - s).abs() <= 1e-5 * mag + 1e-6,
                        "{ty} n={n} seed={seed}: avx2 {v} vs scalar {s} (mag {mag})"
                    );
                }
            }
        }
    }

    #[test]
    fn multi_row_kernels_are_bit_identical_to_single_row() {
        if !super::available() {
            return;
        }
        for ty in GgmlType::WEIGHT_TYPES {
            let (Some(k4), Some(k8)) = (super::kernel4(ty), super::kernel8(ty)) else {
                continue;
            };
            let k1 = super::kernel(ty).expect("avx2 available");
            for n in sizes(ty) {
                let cs: Vec<_> = (0..8).map(|s| make_case(ty, n, 200 + s)).collect();
                let w = &cs[0].w;
                let v4 = k4(n, w, std::array::from_fn(|k| cs[k].qa.as_slice()));
                let v8 = k8(n, w, std::array::from_fn(|k| cs[k].qa.as_slice()));
                for (k, c) in cs.iter().enumerate() {
                    let one = k1(n, w, &c.qa).to_bits();
                    assert_eq!(v8[k].to_bits(), one, "{ty} n={n} x8 row {k}");
                    if k < 4 {
                        assert_eq!(v4[k].to_bits(), one, "{ty} n={n} x4 row {k}");
                    }
                }
            }
        }
    }

    /// Calls `f` with the group tables of `acts` that `kernel_scaled` of `ty` reads (the
    /// correction table only where the AVX-512 kernels are in use).
    fn with_tables<const R: usize, T>(
        ty: GgmlType,
        acts: [&[u8]; R],
        f: impl FnOnce(super::super::GroupTables<'_>) -> T,
    ) -> T {
        let nb = acts[0].len() / 34;
        let mut ts = vec![std::mem::MaybeUninit::uninit(); 8 * R * nb];
        let mut tc = vec![std::mem::MaybeUninit::uninit(); 8 * R * nb];
        let scales = super::super::q8_0_scale_table(acts, &mut ts);
        let corr = match super::offset_shift(ty).filter(|_| super::avx512_available()) {
            Some(shift) => super::corr_table(acts, shift, &mut tc),
            None => &[],
        };
        f(super::super::GroupTables { scales, corr })
    }

    #[test]
    fn scaled_kernels_are_bit_identical_to_single_row() {
        if !super::available() {
            return;
        }
        let mut tested = 0;
        for ty in GgmlType::WEIGHT_TYPES {
            let (Some(k8s), Some(k4s)) =
                (super::kernel_scaled::<8>(ty), super::kernel_scaled::<4>(ty))
            else {
                continue;
            };
            let k1 = super::kernel(ty).expect("avx2 available");
            for n in sizes(ty) {
                let cs: Vec<_> = (0..8).map(|s| make_case(ty, n, 300 + s)).collect();
                let w = &cs[0].w;
                let a8: [&[u8]; 8] = std::array::from_fn(|k| cs[k].qa.as_slice());
                let v8 = with_tables(ty, a8, |t| k8s(n, w, a8, t));
                let a4: [&[u8]; 4] = std::array::from_fn(|k| a8[k]);
                let v4 = with_tables(ty, a4, |t| k4s(n, w, a4, t));
                for (k, c) in cs.iter().enumerate() {
                    let one = k1(n, w, &c.qa).to_bits();
                    assert_eq!(v8[k].to_bits(), one, "{ty} n={n} x8s row {k}");
                    if k < 4 {
                        assert_eq!(v4[k].to_bits(), one, "{ty} n={n} x4s row {k}");
                    }
                }
            }
            tested += 1;
        }
        assert_eq!(tested, 3, "Q4_0, Q5_0 and Q8_0 have scaled kernels");
    }

    /// The AVX-512 Q4_K and Q6_K kernels against the AVX2 ones, bit for bit.
    #[test]
    fn avx512_k_quant_kernels_are_bit_identical_to_avx2() {
        if !super::avx512_available() {
            eprintln!("note: CPU lacks AVX-512 VNNI, AVX-512 kernels not tested");
            return;
        }
        for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
            let (k1, k4, k8) = super::kernels_k_avx512(ty).expect("avx512");
            let (a1, a4, a8) = (
                super::kernel(ty).expect("avx2"),
                super::kernel4(ty).expect("avx2"),
                super::kernel8(ty).expect("avx2"),
            );
            for n in sizes(ty) {
                let cs: Vec<_> = (0..8).map(|s| make_case(ty, n, 600 + s)).collect();
                let w = &cs[0].w;
                let r8: [&[u8]; 8] = std::array::from_fn(|k| cs[k].qa.as_slice());
                let r4: [&[u8]; 4] = std::array::from_fn(|k| r8[k]);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&k8(n, w, r8)), bits(&a8(n, w, r8)), "{ty} n={n} x8");
                assert_eq!(bits(&k4(n, w, r4)), bits(&a4(n, w, r4)), "{ty} n={n} x4");
                for c in &cs {
                    let (v, want) = (k1(n, w, &c.qa), a1(n, w, &c.qa));
                    assert_eq!(v.to_bits(), want.to_bits(), "{ty} n={n}");
                }
            }
        }
    }

    /// The AVX-512 scaled kernels against the AVX2 ones, bit for bit (on CPUs that have both).
    #[test]
    fn avx512_scaled_kernels_are_bit_identical_to_avx2() {
        if !super::avx512_available() {
            eprintln!("note: CPU lacks AVX-512 VNNI, AVX-512 kernels not tested");
            return;
        }
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0] {
            let k512 = super::kernel_scaled_avx512::<8>(ty).expect("avx512");
            let k2 = super::kernel_scaled_avx2::<8>(ty).expect("avx2");
            for n in sizes(ty) {
                for seed in 0..3 {
                    let cs: Vec<_> = (0..8)
                        .map(|s| make_case(ty, n, 400 + 8 * seed + s))
                        .collect();
                    let mut w = cs[0].w.clone();
                    if ty == GgmlType::Q8_0 && seed == 2 {
                        // Weights at -128 (legal in a file) and 0 in every block.
                        for b in w.chunks_exact_mut(34) {
                            b[2] = 0x80;
                            b[3] = 0;
                        }
                    }
                    let a8: [&[u8]; 8] = std::array::from_fn(|k| cs[k].qa.as_slice());
                    let (v512, v2) =
                        with_tables(ty, a8, |t| (k512(n, &w, a8, t), k2(n, &w, a8, t)));
                    for k in 0..8 {
                        assert_eq!(v512[k].to_bits(), v2[k].to_bits(), "{ty} n={n} row {k}");
                    }
                }
            }
        }
    }

    #[test]
    fn avx2_q8_0_extreme_values() {
        if !super::available() {
            return;
        }
        // Weights at -128 (legal in a file) against activations at ±127.
        let mut w = vec![0u8; 34 * 3];
        let mut a = vec![0u8; 34 * 3];
        for b in 0..3 {
            w[34 * b..34 * b + 2]
                .copy_from_slice(&half::f16::from_f32(1.0).to_bits().to_le_bytes());
            a[34 * b..34 * b + 2]
                .copy_from_slice(&half::f16::from_f32(1.0).to_bits().to_le_bytes());
            for j in 0..32 {
                w[34 * b + 2 + j] = 0x80;
                a[34 * b + 2 + j] = if j % 2 == 0 { 127 } else { 0x81 };
            }
        }
        let s = dot_scalar::vec_dot(GgmlType::Q8_0, 96, &w, &a);
        let v = super::vec_dot(GgmlType::Q8_0, 96, &w, &a).expect("avx2");
        assert_eq!(s, 0.0);
        assert_eq!(v, 0.0);
        for j in 0..32 {
            a[2 + j] = 127;
        }
        let s = dot_scalar::vec_dot(GgmlType::Q8_0, 96, &w, &a);
        let v = super::vec_dot(GgmlType::Q8_0, 96, &w, &a).expect("avx2");
        assert_eq!(s, (-128 * 127 * 32) as f32);
        assert_eq!(v, s);
    }
}
