//! FxHash: a fast multiplicative hash for maps keyed by the model's own token texts and ids.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Map from token text. The keys are the model's own vocabulary, not attacker-chosen, and the
/// lookups (one per candidate merge, up to ~30 per byte in the partition scan) dominate encoding,
/// so a fast multiplicative hash (FxHash) replaces SipHash here.
pub(crate) type FastMap<V> = HashMap<String, V, BuildHasherDefault<FxHasher>>;

#[derive(Default)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // A product's low bits depend only on the low bits of its inputs, and hashbrown picks
        // the bucket from the low bits: rotate the well-mixed high bits down (as rustc-hash 2
        // does), or keys that differ only in late bytes collide into long probe chains.
        self.hash.rotate_left(26)
    }
}
