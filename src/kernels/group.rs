//! Group kernels (AVX-512 VNNI): one weight row (Q8_0, Q5_0 or Q4_0) against a group of 16
//! Q8_0 activation rows, **one activation row per vector lane**, bit-identical per row to the
//! single-row AVX2 kernels.
//!
//! The single-row kernels follow llama.cpp's arithmetic (which keeps greedy tokens identical to
//! llama.cpp's; see `signed_q8_0_rows!` in `dot_avx2`): for each block, lane g of an 8-lane
//! vector holds the integer dot of values 4g..4g+3; one accumulator per lane takes
//! `fma(d_x·d_y, lane, acc)` block after block; the 8 lanes are summed at the end as
//! `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`.
//!
//! A group kernel does the same operations on the same numbers, laid out the other way: for
//! each dword g of a block it keeps a vector whose lane j is activation row j's lane g. One
//! broadcast of the weight's 4 values against one load of 16 rows' 4 values, one `vpdpbusd`,
//! gives every row's lane-g integer sum; the block's scale product is one multiply for all
//! rows. Per weight block: 8 integer dots, 8 conversions, 8 FMAs and a multiply for up to 16
//! rows (25 vector operations), where the paired scaled kernels (`dot_avx2`, two rows per
//! register) spend 5 per 2 rows: 40 for 16. `matmul` gives this kernel the whole groups of 16
//! and a padded last group of 10 rows or more.
//!
//! A rounding order that summed each block in integers first would need 3 float operations per
//! block instead of 17. Tried (December 2026): its last-bit differences, carried through the
//! activations' 8-bit rounding over 18 layers, moved the logits by tenths of a nat and flipped
//! the first greedy token of a `tests/exactness.rs` row whose reference margin is 0.09 nats.
//!
//! The activation rows are laid out once per matmul call by [`TableBuf::fill`]:
//! [`Tables`] per group.

use super::blocks::{as_blocks, f16_le, BlockQ8_0};

/// The widest group (AVX-512: 16 rows in i32 lanes).
pub const GROUP_MAX: usize = 16;

/// What a group kernel reads about its activation rows, `W` lanes wide (lanes past the
/// group's rows hold zeros).
#[derive(Clone, Copy)]
pub struct Tables<'t> {
    /// `[(i·8 + g)·W + lane]`: bytes 4g..4g+4 of block i of that lane's row, as one i32.
    pub acts: &'t [i32],
    /// `[(i·8 + g)·W + lane]`: `-(y[4g] + … + y[4g+3]) << shift` (the kernels read weights
    /// as unsigned bytes `x + 2^shift`).
    pub corr: &'t [i32],
    /// `[i·W + lane]`: block i's scale as f32 (f16 → f32 is exact).
    pub scales: &'t [f32],
}

/// A group kernel: one weight row against one group's tables; lane j of `out` gets row j's
/// result (lanes past the group's rows get a padding row's, to be ignored).
pub type GroupDotFn = fn(&[u8], Tables<'_>, &mut [f32; GROUP_MAX]);

/// A group kernel with its shape.
#[derive(Clone, Copy)]
pub struct GroupKernel {
    pub dot: GroupDotFn,
    /// Lanes (rows) per group.
    pub width: usize,
    /// The unsigned-offset shift the kernel wants corrections for.
    pub shift: u32,
}

/// The tables of every group of one matmul's activation rows (kept to reuse the allocation).
#[derive(Default)]
pub struct TableBuf {
    acts: Vec<i32>,
    corr: Vec<i32>,
    scales: Vec<f32>,
    width: usize,
    nb: usize,
}

impl TableBuf {
    /// Lays out Q8_0 rows of `nb` blocks (`arb` bytes apart in `acts`) in groups of `width`,
    /// the last one padded with zero rows; corrections for `shift`.
    pub fn fill(&mut self, acts: &[u8], arb: usize, nb: usize, width: usize, shift: u32) {
        let n_rows = acts.len() / arb;
        let lanes = n_rows.div_ceil(width) * width;
        self.width = width;
        self.nb = nb;
        // Zeros matter only in the padding lanes; real rows overwrite theirs below.
        reset(&mut self.acts, lanes * nb * 8);
        reset(&mut self.scales, lanes * nb);
        reset(&mut self.corr, lanes * nb * 8);
        let group_len = nb * 8 * width;
        for row in 0..n_rows {
            let (grp, lane) = (row / width, row % width);
            let blocks = &as_blocks::<BlockQ8_0>(&acts[row * arb..(row + 1) * arb])[..nb];
            let acts_g = &mut self.acts[grp * group_len..][..group_len];
            for (i, b) in blocks.iter().enumerate() {
                for g in 0..8 {
                    let q = &b.qs[4 * g..4 * g + 4];
                    let bytes = [q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8];
                    acts_g[(i * 8 + g) * width + lane] = i32::from_le_bytes(bytes);
                }
            }
            let scales_g = &mut self.scales[grp * nb * width..][..nb * width];
            for (i, b) in blocks.iter().enumerate() {
                scales_g[i * width + lane] = f16_le(b.d);
            }
            let corr_g = &mut self.corr[grp * group_len..][..group_len];
            for (i, b) in blocks.iter().enumerate() {
                for g in 0..8 {
                    let sum: i32 = b.qs[4 * g..4 * g + 4].iter().map(|&v| v as i32).sum();
                    corr_g[(i * 8 + g) * width + lane] = -(sum << shift);
                }
            }
        }
    }

    /// The tables of group `grp` (of the last `fill`).
    pub fn group(&self, grp: usize) -> Tables<'_> {
        let group_len = self.nb * 8 * self.width;
        Tables {
            acts: &self.acts[grp * group_len..][..group_len],
            corr: &self.corr[grp * group_len..][..group_len],
            scales: &self.scales[grp * self.nb * self.width..][..self.nb * self.width],
        }
    }
}

/// Clears `v` to `len` zeros, keeping its allocation.
fn reset<T: Default + Copy>(v: &mut Vec<T>, len: usize) {
    v.clear();
    v.resize(len, T::default());
}

/// The group kernel for `wty` on this CPU, if any (AVX-512 VNNI).
pub fn group_kernel(wty: super::GgmlType) -> Option<GroupKernel> {
    #[cfg(target_arch = "x86_64")]
    {
        x86::group_kernel_512(wty)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = wty;
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::blocks::{as_blocks, BlockQ4_0, BlockQ5_0, BlockQ8_0};
    use super::super::dot_avx2::{avx512_available, high_bits_32, nibbles_32, prefetch_ahead};
    use super::super::GgmlType;
    use super::{GroupDotFn, GroupKernel, Tables, GROUP_MAX};
    use std::arch::x86_64::*;

    /// The AVX-512 group kernel for `wty`, if the CPU has AVX-512 VNNI.
    pub fn group_kernel_512(wty: GgmlType) -> Option<GroupKernel> {
        if !avx512_available() {
            return None;
        }
        // SAFETY (each closure): `avx512_available()` checked every feature these kernels
        // enable; they check the tables' lengths.
        let (dot, shift): (GroupDotFn, u32) = match wty {
            GgmlType::Q8_0 => (|w, t, o| unsafe { q8_0_group16(w, t, o) }, 7),
            GgmlType::Q5_0 => (|w, t, o| unsafe { q5_0_group16(w, t, o) }, 4),
            GgmlType::Q4_0 => (|w, t, o| unsafe { q4_0_group16(w, t, o) }, 3),
            _ => return None,
        };
        Some(GroupKernel {
            dot,
            width: 16,
            shift,
        })
    }

    /// Lane-wise `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`: the single-row
    /// kernel's final sum of its 8 lanes (`hsum_ps`), for 16 rows at once.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f")]
    unsafe fn lane_sums(a: [__m512; 8]) -> __m512 {
        let even = _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6]));
        let odd = _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7]));
        _mm512_add_ps(even, odd)
    }

    /// The 32 values of a Q8_0 block plus 128, as unsigned bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_uvalues(x: &BlockQ8_0) -> __m256i {
        _mm256_xor_si256(
            _mm256_loadu_si256(x.qs.as_ptr().cast()),
            _mm256_set1_epi8(0x80u8 as i8),
        )
    }

    /// Defines the AVX-512 group kernel `$name(w, tables, out)`, 16 lanes: the weights as
    /// unsigned bytes `u = x + 2^shift` (`$uvalues`), so dword g of a block is one `vpdpbusd`
    /// of the broadcast `u` against 16 rows' values 4g..4g+4, started from the correction
    /// `-(Σ y) << shift`: exactly each row's lane-g integer sum (no i16 step to saturate).
    macro_rules! group16 {
        ($name:ident, $blk:ty, |$x:ident| $uvalues:expr) => {
            #[target_feature(
                enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni"
            )]
            unsafe fn $name(w: &[u8], t: Tables<'_>, out: &mut [f32; GROUP_MAX]) {
                let xs = as_blocks::<$blk>(w);
                let nb = xs.len();
                assert!(
                    t.acts.len() >= nb * 128 && t.corr.len() >= nb * 128,
                    "16-lane tables"
                );
                assert!(t.scales.len() >= nb * 16, "16-lane scales");
                let (pa, pc, ps) = (t.acts.as_ptr(), t.corr.as_ptr(), t.scales.as_ptr());
                let mut ub = [0i32; 8];
                let mut acc = [_mm512_setzero_ps(); 8];
                for (i, $x) in xs.iter().enumerate() {
                    prefetch_ahead(($x as *const $blk).cast(), 1);
                    let u: __m256i = $uvalues;
                    _mm256_storeu_si256(ub.as_mut_ptr().cast(), u);
                    // Read back through an opaque pointer: broadcast loads, not shuffles.
                    let up = std::hint::black_box(ub.as_ptr());
                    let dx = _mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(
                        i16::from_le_bytes($x.d),
                    ))));
                    // SAFETY: i < nb; the tables hold 128 and 16 lanes per block (asserted).
                    let d = _mm512_mul_ps(dx, _mm512_loadu_ps(ps.add(16 * i)));
                    for g in 0..8 {
                        let at = (8 * i + g) * 16;
                        let c = _mm512_loadu_si512(pc.add(at).cast());
                        let y = _mm512_loadu_si512(pa.add(at).cast());
                        let p = _mm512_dpbusd_epi32(c, _mm512_set1_epi32(*up.add(g)), y);
                        acc[g] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc[g]);
                    }
                }
                _mm512_storeu_ps(out.as_mut_ptr(), lane_sums(acc));
            }
        };
    }

    group16!(q8_0_group16, BlockQ8_0, |x| q8_0_uvalues(x));
    group16!(q4_0_group16, BlockQ4_0, |x| nibbles_32(&x.qs));
    group16!(q5_0_group16, BlockQ5_0, |x| _mm256_or_si256(
        nibbles_32(&x.qs),
        high_bits_32(x.qh)
    ));
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::super::dot_avx2;
    use super::super::dot_scalar::tests::make_case;
    use super::super::GgmlType;
    use super::{x86, TableBuf, GROUP_MAX};

    const TYPES: [GgmlType; 3] = [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0];
    /// 1, 3, 8, 20 (Gemma's 640), 31 and 80 blocks.
    const SIZES: [usize; 6] = [32, 96, 256, 640, 992, 2560];

    /// The group kernels, for 1 to 17 rows (a padded group, a full one, a second one): each
    /// lane equals the single-row AVX2 kernel bit for bit.
    #[test]
    fn group_kernels_match_single_row_bit_for_bit() {
        if !dot_avx2::avx512_available() {
            eprintln!("note: CPU lacks AVX-512 VNNI, group kernels not tested");
            return;
        }
        let mut tested = 0;
        for ty in TYPES {
            let one = dot_avx2::kernel(ty).expect("avx2");
            if let Some(g) = x86::group_kernel_512(ty) {
                for n in SIZES {
                    let cases: Vec<_> = (0..17).map(|s| make_case(ty, n, 800 + s)).collect();
                    let mut w = cases[0].w.clone();
                    if ty == GgmlType::Q8_0 && n == 96 {
                        // Weights at -128 (legal in a file) and 0 in every block.
                        for b in w.chunks_exact_mut(34) {
                            b[2] = 0x80;
                            b[3] = 0;
                        }
                    }
                    let arb = cases[0].qa.len();
                    for n_rows in [1, 2, 7, 8, 9, 16, 17] {
                        let acts: Vec<u8> = cases[..n_rows]
                            .iter()
                            .flat_map(|c| c.qa.iter().copied())
                            .collect();
                        let mut t = TableBuf::default();
                        t.fill(&acts, arb, n / 32, g.width, g.shift);
                        for (row, c) in cases[..n_rows].iter().enumerate() {
                            let mut v = [0f32; GROUP_MAX];
                            (g.dot)(&w, t.group(row / g.width), &mut v);
                            let want = one(n, &w, &c.qa);
                            assert_eq!(
                                v[row % g.width].to_bits(),
                                want.to_bits(),
                                "{ty} width {} n={n} rows {n_rows} row {row}",
                                g.width
                            );
                        }
                    }
                }
                tested += 1;
            }
        }
        assert_eq!(tested, 3, "Q8_0, Q4_0 and Q5_0 have group kernels");
    }

    /// Weights at -128 against activations at ±127: the extremes of the sign trick and of
    /// the unsigned offset.
    #[test]
    fn extreme_values_are_exact() {
        let one_f16 = half::f16::from_f32(1.0).to_bits().to_le_bytes();
        let (mut w, mut a) = (vec![0u8; 34 * 3], vec![0u8; 34 * 3]);
        for b in 0..3 {
            w[34 * b..34 * b + 2].copy_from_slice(&one_f16);
            a[34 * b..34 * b + 2].copy_from_slice(&one_f16);
            for j in 0..32 {
                w[34 * b + 2 + j] = 0x80;
                a[34 * b + 2 + j] = if j % 2 == 0 { 127 } else { 0x81 };
            }
        }
        a[34 * 2 + 2..34 * 3].fill(127);
        let want = (-128 * 127 * 32) as f32;
        if let Some(g) = x86::group_kernel_512(GgmlType::Q8_0) {
            let mut t = TableBuf::default();
            t.fill(&a, a.len(), 3, g.width, g.shift);
            let mut v = [0f32; GROUP_MAX];
            (g.dot)(&w, t.group(0), &mut v);
            assert_eq!(v[0], want, "width {}", g.width);
            assert_eq!(v[1], 0.0, "width {}: a padding lane", g.width);
        }
    }
}
