//! Reproducible kernel inputs shared by `benches/kernels.rs` and `examples/matmul_cpu.rs`
//! (included with `#[path]`: a bench and an example cannot share a module otherwise).

use ryzanstein::kernels::{quantize_row, GgmlType};

/// SplitMix64, so inputs are reproducible without extra dependencies.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Random weights of `n` elements of `ty` with sane (0.01) f16 scales, so no NaN or
/// subnormal arithmetic skews timings.
pub fn weights(rng: &mut Rng, ty: GgmlType, n: usize) -> Vec<u8> {
    let rb = ty.row_bytes(n).expect("whole blocks");
    let vals: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
    let mut w: Vec<u8> = match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            let mut w = vec![0u8; rb];
            quantize_row(ty, &vals, &mut w);
            return w;
        }
        _ => (0..rb).map(|_| rng.next() as u8).collect(),
    };
    let scale_offsets: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q6_K => &[208],
        _ => &[0, 2],
    };
    let s = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    for blk in w.chunks_exact_mut(ty.block_bytes()) {
        for &o in scale_offsets {
            blk[o..o + 2].copy_from_slice(&s);
        }
    }
    w
}

pub fn acts(rng: &mut Rng, ty: GgmlType, n: usize, rows: usize) -> Vec<u8> {
    let at = ty.vec_dot_type();
    let arb = at.row_bytes(n).expect("whole blocks");
    let mut a = vec![0u8; arb * rows];
    for row in a.chunks_exact_mut(arb) {
        let x: Vec<f32> = (0..n).map(|_| 2.0 * rng.f32()).collect();
        quantize_row(at, &x, row);
    }
    a
}
