//! The argmax of a row of logits: greedy sampling reads every one of a vocabulary-sized row
//! (Gemma 3: 262,144 floats, 1 MiB) once per generated token, so a scalar loop costs more
//! than some of the forward pass's matmuls (about 7% of the server's CPU time at 16 streams).
//!
//! Semantics, identical on every path (tested against [`argmax_scalar`]): the largest value
//! under `>`, so NaN never wins; the lowest index among equal maxima; `(0, -inf)` for an
//! empty row or one with no value above `-inf`.
//!
//! The SIMD versions keep, per lane and per accumulator, the largest value seen and the index
//! where it was first seen (a strict `>` compare, false for NaN, decides each update). The
//! row's first maximum is then the first occurrence within its lane of that lane's maximum,
//! so the answer is the lowest index among the lanes holding the overall maximum.

/// Index and value of the largest entry of `l` (see the module comment).
pub fn argmax(l: &[f32]) -> (usize, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        // Indices are kept as i32 lanes. Every path gives the same answer; `simd_enabled`
        // only keeps `RYZANSTEIN_NO_SIMD=1` meaning "no SIMD at all".
        if l.len() < i32::MAX as usize && super::simd_enabled() {
            if super::dot_avx2::avx512_available() {
                // SAFETY: the CPU has AVX-512 F (checked just above).
                return unsafe { x86::argmax_avx512(l) };
            }
            // SAFETY: `simd_enabled` means the CPU has AVX2.
            return unsafe { x86::argmax_avx2(l) };
        }
    }
    argmax_scalar(l)
}

/// The reference: one pass with a strict `>`.
pub fn argmax_scalar(l: &[f32]) -> (usize, f32) {
    continue_scalar(l, 0, (0, f32::NEG_INFINITY))
}

/// Goes on from `best` (found before `start`) over `l[start..]`.
fn continue_scalar(l: &[f32], start: usize, best: (usize, f32)) -> (usize, f32) {
    let (mut at, mut max) = best;
    for (i, &x) in l.iter().enumerate().skip(start) {
        if x > max {
            max = x;
            at = i;
        }
    }
    (at, max)
}

/// The best of per-lane (value, first index) pairs: the largest value, then the lowest index.
fn best_of_lanes(values: &[f32], indices: &[i32]) -> (usize, f32) {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (&v, &i) in values.iter().zip(indices) {
        let i = i as usize;
        if v > best.1 || (v == best.1 && v > f32::NEG_INFINITY && i < best.0) {
            best = (i, v);
        }
    }
    best
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Independent accumulators: a compare and a masked move per vector form a chain of a few
    /// cycles, so four chains keep the loads flowing.
    const CHAINS: usize = 4;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn argmax_avx512(l: &[f32]) -> (usize, f32) {
        const W: usize = 16;
        let n_vec = l.len() / (W * CHAINS) * CHAINS;
        let p = l.as_ptr();
        let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); CHAINS];
        let mut at = [_mm512_setzero_si512(); CHAINS];
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let mut idx: [__m512i; CHAINS] =
            std::array::from_fn(|c| _mm512_add_epi32(lanes, _mm512_set1_epi32((c * W) as i32)));
        let step = _mm512_set1_epi32((W * CHAINS) as i32);
        for v in (0..n_vec).step_by(CHAINS) {
            for c in 0..CHAINS {
                // SAFETY: v + c < n_vec, so the 16 floats lie inside `l`.
                let x = _mm512_loadu_ps(p.add((v + c) * W));
                let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, max[c]);
                max[c] = _mm512_mask_mov_ps(max[c], gt, x);
                at[c] = _mm512_mask_mov_epi32(at[c], gt, idx[c]);
                idx[c] = _mm512_add_epi32(idx[c], step);
            }
        }
        let mut values = [0f32; W * CHAINS];
        let mut indices = [0i32; W * CHAINS];
        for c in 0..CHAINS {
            _mm512_storeu_ps(values.as_mut_ptr().add(c * W), max[c]);
            _mm512_storeu_si512(indices.as_mut_ptr().add(c * W).cast(), at[c]);
        }
        let best = super::best_of_lanes(&values, &indices);
        super::continue_scalar(l, n_vec * W, best)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn argmax_avx2(l: &[f32]) -> (usize, f32) {
        const W: usize = 8;
        let n_vec = l.len() / (W * CHAINS) * CHAINS;
        let p = l.as_ptr();
        let mut max = [_mm256_set1_ps(f32::NEG_INFINITY); CHAINS];
        let mut at = [_mm256_setzero_si256(); CHAINS];
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut idx: [__m256i; CHAINS] =
            std::array::from_fn(|c| _mm256_add_epi32(lanes, _mm256_set1_epi32((c * W) as i32)));
        let step = _mm256_set1_epi32((W * CHAINS) as i32);
        for v in (0..n_vec).step_by(CHAINS) {
            for c in 0..CHAINS {
                // SAFETY: v + c < n_vec, so the 8 floats lie inside `l`.
                let x = _mm256_loadu_ps(p.add((v + c) * W));
                let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(x, max[c]);
                max[c] = _mm256_blendv_ps(max[c], x, gt);
                at[c] = _mm256_castps_si256(_mm256_blendv_ps(
                    _mm256_castsi256_ps(at[c]),
                    _mm256_castsi256_ps(idx[c]),
                    gt,
                ));
                idx[c] = _mm256_add_epi32(idx[c], step);
            }
        }
        let mut values = [0f32; W * CHAINS];
        let mut indices = [0i32; W * CHAINS];
        for c in 0..CHAINS {
            _mm256_storeu_ps(values.as_mut_ptr().add(c * W), max[c]);
            _mm256_storeu_si256(indices.as_mut_ptr().add(c * W).cast(), at[c]);
        }
        let best = super::best_of_lanes(&values, &indices);
        super::continue_scalar(l, n_vec * W, best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows with every hazard: NaN, ±inf, ties (many equal maxima), all -inf, lengths
    /// around the vector and chain widths.
    fn rows() -> Vec<Vec<f32>> {
        let mut out = Vec::new();
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for n in [
            0usize, 1, 7, 8, 15, 16, 17, 63, 64, 65, 127, 128, 129, 200, 1000, 4099,
        ] {
            for kind in 0..6 {
                let row: Vec<f32> = (0..n)
                    .map(|_| {
                        let r = next();
                        match (kind, r % 23) {
                            (1, 0) => f32::NAN,
                            (2, _) => (r % 5) as f32, // many ties
                            (3, _) => f32::NEG_INFINITY,
                            (4, 0) => f32::INFINITY,
                            (4, 1) => f32::NAN,
                            (5, _) if r % 3 == 0 => f32::NAN,
                            (5, _) => f32::NEG_INFINITY,
                            _ => (r >> 11) as f32 / (1u64 << 53) as f32 * 40.0 - 20.0,
                        }
                    })
                    .collect();
                out.push(row);
            }
        }
        // The maximum only in the scalar tail, and only in the first element.
        let mut tail = vec![1.0f32; 64 + 5];
        tail[66] = 2.0;
        out.push(tail);
        let mut head = vec![1.0f32; 300];
        head[0] = 3.0;
        out.push(head);
        out
    }

    fn same(a: (usize, f32), b: (usize, f32)) -> bool {
        a.0 == b.0 && a.1.to_bits() == b.1.to_bits()
    }

    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for row in rows() {
            let want = argmax_scalar(&row);
            assert!(same(argmax(&row), want), "{} floats: {want:?}", row.len());
            #[cfg(target_arch = "x86_64")]
            {
                if crate::kernels::dot_avx2::avx512_available() {
                    // SAFETY: AVX-512 F is present.
                    let got = unsafe { x86::argmax_avx512(&row) };
                    assert!(same(got, want), "avx512, {} floats", row.len());
                }
                if crate::kernels::dot_avx2::available() {
                    // SAFETY: AVX2 is present.
                    let got = unsafe { x86::argmax_avx2(&row) };
                    assert!(same(got, want), "avx2, {} floats", row.len());
                }
            }
        }
    }

    #[test]
    fn reference_semantics() {
        assert!(same(argmax_scalar(&[]), (0, f32::NEG_INFINITY)));
        assert!(same(argmax_scalar(&[f32::NAN, 1.0, 1.0]), (1, 1.0)));
        assert!(same(
            argmax_scalar(&[f32::NEG_INFINITY, f32::NAN]),
            (0, f32::NEG_INFINITY)
        ));
        assert!(same(
            argmax_scalar(&[0.0, f32::INFINITY, f32::INFINITY]),
            (1, f32::INFINITY)
        ));
    }
}
