//! Test helpers: a tiny deterministic PRNG and random rows of every type with sane scales.

use super::blocks::f16_to_le;
use super::types::GgmlType;

/// SplitMix64: deterministic, dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn f32_in(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// A scale magnitude in [lo, hi) with a random sign if `signed`.
    fn scale(&mut self, lo: f32, hi: f32, signed: bool) -> [u8; 2] {
        let v = self.f32_in(lo, hi);
        let neg = signed && self.next_u64() & 1 == 1;
        f16_to_le(if neg { -v } else { v })
    }
}

/// Random activations in [-2, 2).
pub fn random_acts(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.f32_in(-2.0, 2.0)).collect()
}

/// A random weight row of `n` elements of `ty`: random quant bytes, random sane f16 scales.
pub fn random_row(rng: &mut Rng, ty: GgmlType, n: usize) -> Vec<u8> {
    let rb = ty.row_bytes(n).expect("whole blocks");
    match ty {
        GgmlType::F32 => (0..n)
            .flat_map(|_| rng.f32_in(-1.0, 1.0).to_le_bytes())
            .collect(),
        GgmlType::F16 => (0..n)
            .flat_map(|_| f16_to_le(rng.f32_in(-1.0, 1.0)))
            .collect(),
        GgmlType::BF16 => (0..n)
            .flat_map(|_| {
                half::bf16::from_f32(rng.f32_in(-1.0, 1.0))
                    .to_bits()
                    .to_le_bytes()
            })
            .collect(),
        _ => {
            let mut row = rng.bytes(rb);
            let bb = ty.block_bytes();
            for blk in row.chunks_exact_mut(bb) {
                // (offset, lo, hi, signed) of each f16 field.
                let fields: &[(usize, f32, f32, bool)] = match ty {
                    GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[(0, 0.001, 0.05, true)],
                    GgmlType::Q4_1 | GgmlType::Q5_1 => {
                        &[(0, 0.001, 0.05, true), (2, 0.0, 0.5, true)]
                    }
                    GgmlType::Q4_K | GgmlType::Q5_K => {
                        &[(0, 0.0005, 0.005, false), (2, 0.0005, 0.005, false)]
                    }
                    GgmlType::Q6_K => &[(208, 0.0005, 0.005, true)],
                    _ => panic!("no random rows of {ty}"),
                };
                for &(off, lo, hi, signed) in fields {
                    let s = rng.scale(lo, hi, signed);
                    blk[off..off + 2].copy_from_slice(&s);
                }
            }
            row
        }
    }
}

/// f64 dot of two f32 slices and Σ|a_i b_i| (the scale for tolerances).
pub fn ref_dot(a: &[f32], b: &[f32]) -> (f64, f64) {
    let dot = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let mag = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 * y as f64).abs())
        .sum();
    (dot, mag)
}
