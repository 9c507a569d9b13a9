//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The default model (Gemma 3 270M Q4_K_M). `RYZANSTEIN_MODEL` overrides the cache path.
/// Fails loudly when the file is missing: the test command fetches it first.
pub fn default_model_path() -> PathBuf {
    let path = std::env::var_os("RYZANSTEIN_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            let cache = std::env::var_os("RYZANSTEIN_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache/ryzanstein"));
            cache.join("models/gemma-3-270m-q4_k_m.gguf")
        });
    assert!(
        path.is_file(),
        "default model not found at {}: run scripts/fetch-model.sh (the test command does)",
        path.display()
    );
    path
}

/// A small deterministic PRNG (splitmix64) so tests need no extra crates.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}
