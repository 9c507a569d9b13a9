//! Scalar dequantization of one row of any supported type into f32. This is the readable
//! statement of each block layout; the dot kernels are tested against it.

use super::blocks::{
    as_blocks, f16_le, unpack_k4_scales, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0,
    BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1,
};
use super::types::{GgmlType, QK, QK_K};

/// Dequantizes `dst.len()` elements of type `ty` from `src` (which must be exactly that row).
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let rb = ty.row_bytes(dst.len());
    assert_eq!(
        rb,
        Some(src.len()),
        "{ty} row size for {} elements",
        dst.len()
    );
    match ty {
        GgmlType::F32 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = f16_le([b[0], b[1]]);
            }
        }
        GgmlType::BF16 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        GgmlType::Q4_0 => each(as_blocks::<BlockQ4_0>(src), dst, QK, q4_0),
        GgmlType::Q4_1 => each(as_blocks::<BlockQ4_1>(src), dst, QK, q4_1),
        GgmlType::Q5_0 => each(as_blocks::<BlockQ5_0>(src), dst, QK, q5_0),
        GgmlType::Q5_1 => each(as_blocks::<BlockQ5_1>(src), dst, QK, q5_1),
        GgmlType::Q8_0 => each(as_blocks::<BlockQ8_0>(src), dst, QK, q8_0),
        GgmlType::Q8_1 => each(as_blocks::<BlockQ8_1>(src), dst, QK, q8_1),
        GgmlType::Q4_K => each(as_blocks::<BlockQ4K>(src), dst, QK_K, q4_k),
        GgmlType::Q5_K => each(as_blocks::<BlockQ5K>(src), dst, QK_K, q5_k),
        GgmlType::Q6_K => each(as_blocks::<BlockQ6K>(src), dst, QK_K, q6_k),
        GgmlType::Q8_K => each(as_blocks::<BlockQ8K>(src), dst, QK_K, q8_k),
    }
}

fn each<B>(blocks: &[B], dst: &mut [f32], n: usize, f: fn(&B, &mut [f32])) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(n)) {
        f(b, y);
    }
}

fn q4_0(b: &BlockQ4_0, y: &mut [f32]) {
    let d = f16_le(b.d);
    for j in 0..16 {
        y[j] = d * ((b.qs[j] & 0xF) as i32 - 8) as f32;
        y[j + 16] = d * ((b.qs[j] >> 4) as i32 - 8) as f32;
    }
}

fn q4_1(b: &BlockQ4_1, y: &mut [f32]) {
    let (d, m) = (f16_le(b.d), f16_le(b.m));
    for j in 0..16 {
        y[j] = d * (b.qs[j] & 0xF) as f32 + m;
        y[j + 16] = d * (b.qs[j] >> 4) as f32 + m;
    }
}

/// The 5-bit values (0..31) of a Q5_0/Q5_1 block in element order.
#[inline]
pub(crate) fn q5_values(qh: [u8; 4], qs: &[u8; 16]) -> [u8; 32] {
    let h = u32::from_le_bytes(qh);
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0xF) | ((((h >> j) & 1) as u8) << 4);
        q[j + 16] = (qs[j] >> 4) | ((((h >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

fn q5_0(b: &BlockQ5_0, y: &mut [f32]) {
    let d = f16_le(b.d);
    for (y, q) in y.iter_mut().zip(q5_values(b.qh, &b.qs)) {
        *y = d * (q as i32 - 16) as f32;
    }
}

fn q5_1(b: &BlockQ5_1, y: &mut [f32]) {
    let (d, m) = (f16_le(b.d), f16_le(b.m));
    for (y, q) in y.iter_mut().zip(q5_values(b.qh, &b.qs)) {
        *y = d * q as f32 + m;
    }
}

fn q8_0(b: &BlockQ8_0, y: &mut [f32]) {
    let d = f16_le(b.d);
    for (y, &q) in y.iter_mut().zip(&b.qs) {
        *y = d * q as f32;
    }
}

fn q8_1(b: &BlockQ8_1, y: &mut [f32]) {
    let d = f16_le(b.d);
    for (y, &q) in y.iter_mut().zip(&b.qs) {
        *y = d * q as f32;
    }
}

fn q4_k(b: &BlockQ4K, y: &mut [f32]) {
    let (d, dmin) = (f16_le(b.d), f16_le(b.dmin));
    let (sc, mn) = unpack_k4_scales(&b.scales);
    for c in 0..4 {
        let (d1, m1) = (d * sc[2 * c] as f32, dmin * mn[2 * c] as f32);
        let (d2, m2) = (d * sc[2 * c + 1] as f32, dmin * mn[2 * c + 1] as f32);
        for l in 0..32 {
            let q = b.qs[32 * c + l];
            y[64 * c + l] = d1 * (q & 0xF) as f32 - m1;
            y[64 * c + 32 + l] = d2 * (q >> 4) as f32 - m2;
        }
    }
}

fn q5_k(b: &BlockQ5K, y: &mut [f32]) {
    let (d, dmin) = (f16_le(b.d), f16_le(b.dmin));
    let (sc, mn) = unpack_k4_scales(&b.scales);
    for c in 0..4 {
        let (d1, m1) = (d * sc[2 * c] as f32, dmin * mn[2 * c] as f32);
        let (d2, m2) = (d * sc[2 * c + 1] as f32, dmin * mn[2 * c + 1] as f32);
        for l in 0..32 {
            let q = b.qs[32 * c + l];
            let h = b.qh[l];
            let lo = (q & 0xF) | (((h >> (2 * c)) & 1) << 4);
            let hi = (q >> 4) | (((h >> (2 * c + 1)) & 1) << 4);
            y[64 * c + l] = d1 * lo as f32 - m1;
            y[64 * c + 32 + l] = d2 * hi as f32 - m2;
        }
    }
}

/// The signed 6-bit values (-32..31) of a Q6_K block in element order; value i uses
/// scale i / 16.
#[inline]
pub(crate) fn q6_values(b: &BlockQ6K) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for h in 0..2 {
        let (ql, qh) = (&b.ql[64 * h..64 * h + 64], &b.qh[32 * h..32 * h + 32]);
        let out = &mut q[128 * h..128 * h + 128];
        for l in 0..32 {
            out[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            out[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            out[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            out[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    q
}

fn q6_k(b: &BlockQ6K, y: &mut [f32]) {
    let d = f16_le(b.d);
    for (i, (y, q)) in y.iter_mut().zip(q6_values(b)).enumerate() {
        *y = d * b.scales[i / 16] as f32 * q as f32;
    }
}

fn q8_k(b: &BlockQ8K, y: &mut [f32]) {
    let d = b.d();
    for (y, &q) in y.iter_mut().zip(&b.qs) {
        *y = d * q as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::super::blocks::f16_to_le;
    use super::*;

    fn deq(ty: GgmlType, b: &[u8]) -> Vec<f32> {
        let mut y = vec![0f32; ty.block_elems()];
        dequantize_row(ty, b, &mut y);
        y
    }

    #[test]
    fn q4_0_nibble_order() {
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16_to_le(1.0));
        for j in 0..16 {
            b[2 + j] = j as u8 | ((15 - j as u8) << 4);
        }
        let y = deq(GgmlType::Q4_0, &b);
        for j in 0..16 {
            assert_eq!(y[j], j as f32 - 8.0);
            assert_eq!(y[j + 16], 7.0 - j as f32);
        }
    }

    #[test]
    fn q4_1_offset() {
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&f16_to_le(0.5));
        b[2..4].copy_from_slice(&f16_to_le(-1.0));
        for j in 0..16 {
            b[4 + j] = j as u8 | ((15 - j as u8) << 4);
        }
        let y = deq(GgmlType::Q4_1, &b);
        for j in 0..16 {
            assert_eq!(y[j], 0.5 * j as f32 - 1.0);
            assert_eq!(y[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        }
    }

    #[test]
    fn q5_0_high_bits() {
        let mut b = vec![0u8; 22];
        b[..2].copy_from_slice(&f16_to_le(1.0));
        // qh = bits 3 and 20 (u32 little-endian).
        b[2..6].copy_from_slice(&((1u32 << 3) | (1 << 20)).to_le_bytes());
        b[6 + 4] = 0xF5; // element 4 = 5, element 20 = 15 (+16 from bit 20)
        let y = deq(GgmlType::Q5_0, &b);
        for (i, &v) in y.iter().enumerate() {
            let want = match i {
                3 => 0.0,
                4 => 5.0 - 16.0,
                20 => 15.0,
                _ => -16.0,
            };
            assert_eq!(v, want, "element {i}");
        }
        // Q5_1: same bits, d = 1, m = 0.5 → unsigned values.
        let mut b1 = vec![0u8; 24];
        b1[..2].copy_from_slice(&f16_to_le(1.0));
        b1[2..4].copy_from_slice(&f16_to_le(0.5));
        b1[4..8].copy_from_slice(&b[2..6]);
        b1[8..24].copy_from_slice(&b[6..22]);
        let y1 = deq(GgmlType::Q5_1, &b1);
        for i in 0..32 {
            assert_eq!(y1[i], y[i] + 16.5, "element {i}");
        }
    }

    /// A Q4_K/Q5_K scales[12] whose decoding is worked out by hand:
    /// sc = [1, 2, 3, 4, 50, 0, 0, 15], mn = [7, 8, 9, 10, 21, 0, 0, 15].
    fn k4_scales() -> [u8; 12] {
        [
            0b11_000001, // sc0 = 1; top bits = high bits (3) of sc4
            2,
            3,
            4,
            0b01_000111, // mn0 = 7; top bits = high bits (1) of mn4
            8,
            9,
            10,
            0x52, // sc4 low = 2, mn4 low = 5
            0,
            0,
            0xFF, // sc7 low = 15, mn7 low = 15
        ]
    }

    #[test]
    fn k4_scale_packing() {
        let (sc, mn) = unpack_k4_scales(&k4_scales());
        assert_eq!(sc, [1, 2, 3, 4, 50, 0, 0, 15]);
        assert_eq!(mn, [7, 8, 9, 10, 21, 0, 0, 15]);
    }

    /// Expected Q4_K value of sub-block k with every nibble pair = (lo 1, hi 2), d 1, dmin 0.5.
    const Q4K_SUB: [f32; 8] = [-2.5, 0.0, -1.5, 3.0, 39.5, 0.0, 0.0, 22.5];

    #[test]
    fn q4_k_layout() {
        let mut b = vec![0u8; 144];
        b[..2].copy_from_slice(&f16_to_le(1.0));
        b[2..4].copy_from_slice(&f16_to_le(0.5));
        b[4..16].copy_from_slice(&k4_scales());
        b[16..].fill(0x21);
        let y = deq(GgmlType::Q4_K, &b);
        for (i, &v) in y.iter().enumerate() {
            assert_eq!(v, Q4K_SUB[i / 32], "element {i}");
        }
    }

    #[test]
    fn q5_k_layout() {
        let mut b = vec![0u8; 176];
        b[..2].copy_from_slice(&f16_to_le(1.0));
        b[2..4].copy_from_slice(&f16_to_le(0.5));
        b[4..16].copy_from_slice(&k4_scales());
        b[16 + 5] = 0b0000_1000; // qh[5] bit 3: chunk 1, high half → element 101
        b[16] = 0b0001_0000; // qh[0] bit 4: chunk 2, low half → element 128
        b[48..].fill(0x21);
        let y = deq(GgmlType::Q5_K, &b);
        for (i, &v) in y.iter().enumerate() {
            let want = match i {
                101 => 4.0 * 18.0 - 5.0,
                128 => 50.0 * 17.0 - 10.5,
                _ => Q4K_SUB[i / 32],
            };
            assert_eq!(v, want, "element {i}");
        }
    }

    #[test]
    fn q6_k_layout() {
        let mut b = vec![0u8; 210];
        // ql 0..128, qh 128..192, scales 192..208, d LAST at 208..210.
        b[208..210].copy_from_slice(&f16_to_le(1.0));
        for k in 0..16 {
            b[192 + k] = (k as i8 - 8) as u8;
        }
        b[72] = 0xA0; // ql'[8] of half 1, high nibble → element 200 low 4 bits = 10
        b[128 + 40] = 0b0010_0000; // qh'[8] of half 1, bits 4-5 = 2 → element 200 = 42
        b[33] = 0x07; // ql[33] low nibble → element 33 low 4 bits = 7
        b[128 + 1] = 0b0000_1100; // qh[1] bits 2-3 = 3 → element 33 = 55
        let y = deq(GgmlType::Q6_K, &b);
        for (i, &v) in y.iter().enumerate() {
            let sc = (i / 16) as f32 - 8.0;
            let want = match i {
                200 => sc * 10.0,
                33 => sc * 23.0,
                _ => sc * -32.0,
            };
            assert_eq!(v, want, "element {i}");
        }
    }

    #[test]
    fn q8_0_and_floats() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16_to_le(0.5));
        for j in 0..32 {
            b[2 + j] = (j as i8 - 16) as u8;
        }
        let y = deq(GgmlType::Q8_0, &b);
        for (j, &v) in y.iter().enumerate() {
            assert_eq!(v, 0.5 * (j as f32 - 16.0));
        }
        let mut y = [0f32; 2];
        dequantize_row(GgmlType::BF16, &[0x80, 0x3F, 0x00, 0xC0], &mut y);
        assert_eq!(y, [1.0, -2.0]);
        dequantize_row(GgmlType::F16, &[0x00, 0x3C, 0x00, 0xC0], &mut y);
        assert_eq!(y, [1.0, -2.0]);
        dequantize_row(GgmlType::F32, &[0, 0, 0x80, 0x3F, 0, 0, 0, 0xC0], &mut y);
        assert_eq!(y, [1.0, -2.0]);
    }
}
