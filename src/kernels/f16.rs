//! f16 vector helpers for attention over an f16 KV cache: dot products, multiply-add into an f16
//! accumulator, scaling — a scalar reference and an AVX2+F16C twin picked at run time.
//!
//! Why f16 accumulation: llama.cpp's CPU flash attention keeps the running `Σ p·v` in f16 and
//! rounds queries to f16 before `q·k`. Doing the same keeps our greedy tokens identical to its
//! tokens; the f16 cache also halves the KV memory.

use half::f16;

#[inline]
fn to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

#[inline]
fn to_f16(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// Rounds `src` to f16 into `dst`.
pub fn from_f32_row(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = to_f16(s);
    }
}

/// Widens `src` to f32 into `dst`.
pub fn to_f32_row(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = to_f32(s);
    }
}

/// Scalar reference implementations.
pub mod scalar {
    use super::{to_f16, to_f32};

    /// `a · b` with f32 products summed in f64.
    pub fn dot(a: &[u16], b: &[u16]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| f64::from(to_f32(x) * to_f32(y)))
            .sum::<f64>() as f32
    }

    /// `y = f16(y + x·v)`.
    pub fn mad(y: &mut [u16], x: &[u16], v: f32) {
        for (yi, &xi) in y.iter_mut().zip(x) {
            *yi = to_f16(to_f32(*yi) + to_f32(xi) * v);
        }
    }

    /// `y = f16(y·v)`.
    pub fn scale(y: &mut [u16], v: f32) {
        for yi in y.iter_mut() {
            *yi = to_f16(to_f32(*yi) * v);
        }
    }
}

/// AVX2+F16C implementations: 8 lanes at a time, scalar for the tail.
#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use std::arch::x86_64::*;

    use super::scalar;

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(a: &[u16], b: &[u16]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let x =
                    _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().add(i + 8 * j) as *const __m128i));
                let y =
                    _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i + 8 * j) as *const __m128i));
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        // The reduction of ggml's f16 dot: pairwise over accumulators, then two hadds.
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
        let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let h = _mm_hadd_ps(h, h);
        let h = _mm_hadd_ps(h, h);
        _mm_cvtss_f32(h) + scalar::dot(&a[i..n], &b[i..n])
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mad(y: &mut [u16], x: &[u16], v: f32) {
        let n = y.len().min(x.len());
        let vv = _mm256_set1_ps(v);
        let mut i = 0;
        while i + 8 <= n {
            let yp = y.as_mut_ptr().add(i) as *mut __m128i;
            let yv = _mm256_cvtph_ps(_mm_loadu_si128(yp));
            let xv = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i) as *const __m128i));
            _mm_storeu_si128(
                yp,
                _mm256_cvtps_ph(_mm256_fmadd_ps(xv, vv, yv), _MM_FROUND_TO_NEAREST_INT),
            );
            i += 8;
        }
        scalar::mad(&mut y[i..n], &x[i..n], v);
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scale(y: &mut [u16], v: f32) {
        let n = y.len();
        let vv = _mm256_set1_ps(v);
        let mut i = 0;
        while i + 8 <= n {
            let yp = y.as_mut_ptr().add(i) as *mut __m128i;
            let yv = _mm256_cvtph_ps(_mm_loadu_si128(yp));
            _mm_storeu_si128(
                yp,
                _mm256_cvtps_ph(_mm256_mul_ps(yv, vv), _MM_FROUND_TO_NEAREST_INT),
            );
            i += 8;
        }
        scalar::scale(&mut y[i..n], v);
    }
}

#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    })
}

/// `a · b` over f16 vectors.
pub fn dot(a: &[u16], b: &[u16]) -> f32 {
    assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: AVX2, FMA and F16C are present (checked at run time).
        return unsafe { avx2::dot(a, b) };
    }
    scalar::dot(a, b)
}

/// `y = f16(y + x·v)`.
pub fn mad(y: &mut [u16], x: &[u16], v: f32) {
    assert_eq!(y.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: AVX2, FMA and F16C are present (checked at run time).
        return unsafe { avx2::mad(y, x, v) };
    }
    scalar::mad(y, x, v)
}

/// `y = f16(y·v)`.
pub fn scale(y: &mut [u16], v: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: AVX2, FMA and F16C are present (checked at run time).
        return unsafe { avx2::scale(y, v) };
    }
    scalar::scale(y, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize, seed: u32) -> Vec<u16> {
        (0..n)
            .map(|i| {
                to_f16(
                    (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0,
                )
            })
            .collect()
    }

    #[test]
    fn simd_matches_scalar() {
        for n in [7, 8, 32, 256, 259] {
            let (a, b) = (row(n, 1), row(n, 7));
            assert!((dot(&a, &b) - scalar::dot(&a, &b)).abs() < 1e-4 * n as f32);
            let (mut y1, mut y2) = (row(n, 3), row(n, 3));
            mad(&mut y1, &a, 0.37);
            scalar::mad(&mut y2, &a, 0.37);
            scale(&mut y1, 0.5);
            scalar::scale(&mut y2, 0.5);
            for (p, q) in y1.iter().zip(&y2) {
                // FMA rounds once where the scalar path rounds twice: at most one f16 ulp apart.
                assert!((to_f32(*p) - to_f32(*q)).abs() <= 1e-3, "{n}");
            }
        }
    }
}
