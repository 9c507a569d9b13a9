//! Block formats: one `#[repr(C)]` struct per quantized block, laid out byte for byte as in
//! GGUF, plus the checked casts from raw row bytes to block slices.
//!
//! Every struct holds only `u8`/`i8` arrays, so its alignment is 1: a block can be viewed in
//! place anywhere in an mmap or an activation buffer, whatever the buffer's alignment.
//! Multi-byte fields (f16 scales, Q8_K's f32 `d` and i16 `bsums`) are stored as little-endian
//! byte arrays and decoded by accessor methods.

use half::f16;
use std::mem::{align_of, size_of};

/// Decodes a little-endian IEEE binary16 value.
#[inline(always)]
pub fn f16_le(b: [u8; 2]) -> f32 {
    f16::from_bits(u16::from_le_bytes(b)).to_f32()
}

/// Encodes an f32 as little-endian IEEE binary16 (round to nearest even).
#[inline(always)]
pub fn f16_to_le(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

/// Q4_0: 32 weights, `d * (nibble - 8)`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; 16],
}

/// Q4_1: 32 weights, `d * nibble + m`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; 16],
}

/// Q5_0: 32 weights, `d * (5-bit value - 16)`; bit 4 of weight j is bit j of `qh` (u32 LE).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// Q5_1: 32 weights, `d * 5-bit value + m`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// Q8_0: 32 values, `d * q`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; 32],
}

/// Q8_1 (activation only): Q8_0 plus `s = d * sum(qs)`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ8_1 {
    pub d: [u8; 2],
    pub s: [u8; 2],
    pub qs: [i8; 32],
}

/// Q4_K: 256 weights in 8 sub-blocks of 32 with 6-bit scales and mins packed in `scales`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

/// Q5_K: Q4_K plus one high bit per weight in `qh`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// Q6_K: 256 weights in 16 sub-blocks of 16 with i8 scales; `d` comes LAST.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: [u8; 2],
}

/// Q8_K (activation only): f32 `d`, 256 i8 values, i16 sums of each 16 values.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ8K {
    pub d: [u8; 4],
    pub qs: [i8; 256],
    pub bsums: [u8; 32],
}

#[allow(non_camel_case_types)]
pub type BlockQ4_K = BlockQ4K;
#[allow(non_camel_case_types)]
pub type BlockQ5_K = BlockQ5K;
#[allow(non_camel_case_types)]
pub type BlockQ6_K = BlockQ6K;
#[allow(non_camel_case_types)]
pub type BlockQ8_K = BlockQ8K;

const _: () = assert!(size_of::<BlockQ4_0>() == 18);
const _: () = assert!(size_of::<BlockQ4_1>() == 20);
const _: () = assert!(size_of::<BlockQ5_0>() == 22);
const _: () = assert!(size_of::<BlockQ5_1>() == 24);
const _: () = assert!(size_of::<BlockQ8_0>() == 34);
const _: () = assert!(size_of::<BlockQ8_1>() == 36);
const _: () = assert!(size_of::<BlockQ4K>() == 144);
const _: () = assert!(size_of::<BlockQ5K>() == 176);
const _: () = assert!(size_of::<BlockQ6K>() == 210);
const _: () = assert!(size_of::<BlockQ8K>() == 292);
const _: () = assert!(align_of::<BlockQ4_0>() == 1);
const _: () = assert!(align_of::<BlockQ4_1>() == 1);
const _: () = assert!(align_of::<BlockQ5_0>() == 1);
const _: () = assert!(align_of::<BlockQ5_1>() == 1);
const _: () = assert!(align_of::<BlockQ8_0>() == 1);
const _: () = assert!(align_of::<BlockQ8_1>() == 1);
const _: () = assert!(align_of::<BlockQ4K>() == 1);
const _: () = assert!(align_of::<BlockQ5K>() == 1);
const _: () = assert!(align_of::<BlockQ6K>() == 1);
const _: () = assert!(align_of::<BlockQ8K>() == 1);

/// Marker for the block structs above.
///
/// # Safety
/// Implementors must be `repr(C)`, alignment 1, without padding, and valid for every bit
/// pattern (only `u8`/`i8` array fields).
pub unsafe trait Block: Copy {}
// SAFETY: every struct above is repr(C) of u8/i8 arrays only (asserted align 1, sizes exact).
unsafe impl Block for BlockQ4_0 {}
// SAFETY: as above.
unsafe impl Block for BlockQ4_1 {}
// SAFETY: as above.
unsafe impl Block for BlockQ5_0 {}
// SAFETY: as above.
unsafe impl Block for BlockQ5_1 {}
// SAFETY: as above.
unsafe impl Block for BlockQ8_0 {}
// SAFETY: as above.
unsafe impl Block for BlockQ8_1 {}
// SAFETY: as above.
unsafe impl Block for BlockQ4K {}
// SAFETY: as above.
unsafe impl Block for BlockQ5K {}
// SAFETY: as above.
unsafe impl Block for BlockQ6K {}
// SAFETY: as above.
unsafe impl Block for BlockQ8K {}

/// Views `bytes` as a slice of blocks. Panics if the length is not a whole number of blocks
/// (a caller bug: row sizes are validated before kernels run).
#[inline(always)]
pub fn as_blocks<B: Block>(bytes: &[u8]) -> &[B] {
    let sz = size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(sz),
        "row is not a whole number of blocks"
    );
    // SAFETY: B has alignment 1, no padding and no invalid bit patterns (trait contract);
    // the length covers exactly len/sz blocks inside `bytes`, and the lifetime is tied.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / sz) }
}

/// Mutable twin of [`as_blocks`].
#[inline(always)]
pub fn as_blocks_mut<B: Block>(bytes: &mut [u8]) -> &mut [B] {
    let sz = size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(sz),
        "row is not a whole number of blocks"
    );
    // SAFETY: as in `as_blocks`; the unique borrow of `bytes` is moved into the result.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<B>(), bytes.len() / sz) }
}

impl BlockQ8K {
    /// The block scale.
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }

    /// Sum of the 16 values of group `j`.
    #[inline(always)]
    pub fn bsum(&self, j: usize) -> i16 {
        i16::from_le_bytes([self.bsums[2 * j], self.bsums[2 * j + 1]])
    }
}

/// Unpacks the 8 six-bit scales and 8 six-bit mins of a Q4_K/Q5_K block.
/// Bytes 0-3: low 6 bits = sc0-3; bytes 4-7: low 6 bits = mn0-3; bytes 8-11: low nibble =
/// low 4 bits of sc4-7, high nibble = low 4 bits of mn4-7; the top 2 bits of bytes 0-3 / 4-7
/// are the high bits of sc4-7 / mn4-7.
#[inline(always)]
pub fn unpack_k4_scales(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for k in 0..4 {
        sc[k] = s[k] & 63;
        mn[k] = s[k + 4] & 63;
        sc[k + 4] = (s[k + 8] & 0x0F) | ((s[k] >> 6) << 4);
        mn[k + 4] = (s[k + 8] >> 4) | ((s[k + 4] >> 6) << 4);
    }
    (sc, mn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::GgmlType;

    #[test]
    fn struct_sizes_match_type_table() {
        let table = [
            (GgmlType::Q4_0, size_of::<BlockQ4_0>()),
            (GgmlType::Q4_1, size_of::<BlockQ4_1>()),
            (GgmlType::Q5_0, size_of::<BlockQ5_0>()),
            (GgmlType::Q5_1, size_of::<BlockQ5_1>()),
            (GgmlType::Q8_0, size_of::<BlockQ8_0>()),
            (GgmlType::Q8_1, size_of::<BlockQ8_1>()),
            (GgmlType::Q4_K, size_of::<BlockQ4K>()),
            (GgmlType::Q5_K, size_of::<BlockQ5K>()),
            (GgmlType::Q6_K, size_of::<BlockQ6K>()),
            (GgmlType::Q8_K, size_of::<BlockQ8K>()),
        ];
        for (ty, size) in table {
            assert_eq!(ty.block_bytes(), size, "{ty}");
        }
    }

    #[test]
    fn blocks_view_unaligned_bytes() {
        // A Q8_K block at an odd offset: fields decode from bytes, no alignment needed.
        let mut buf = vec![0u8; 1 + 292];
        buf[1..5].copy_from_slice(&0.25f32.to_le_bytes());
        buf[1 + 4 + 256..1 + 4 + 258].copy_from_slice(&(-300i16).to_le_bytes());
        let b = &as_blocks::<BlockQ8K>(&buf[1..])[0];
        assert_eq!(b.d(), 0.25);
        assert_eq!(b.bsum(0), -300);
    }

    #[test]
    #[should_panic]
    fn partial_block_is_rejected() {
        as_blocks::<BlockQ8_0>(&[0u8; 35]);
    }
}
