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

/// One row of llama.cpp's reference outputs (`tests/data/reference/.../greedy.jsonl`).
pub struct ReferenceRow {
    pub endpoint: String,
    pub label: String,
    pub prompt_token_ids: Vec<u32>,
    pub output_token_ids: Vec<u32>,
    /// Log-probability margin between the top two tokens at each step.
    pub top2_margin: Vec<f32>,
    pub json: serde_json::Value,
}

pub fn reference_rows() -> Vec<ReferenceRow> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/reference/gemma-3-270m-q4_k_m/greedy.jsonl");
    let text = std::fs::read_to_string(path).expect("reference file");
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().expect("id array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
    };
    text.lines()
        .map(|line| {
            let json: serde_json::Value = serde_json::from_str(line).expect("reference row");
            let margin = json["output_top2"]
                .as_array()
                .expect("top2")
                .iter()
                .map(|step| (step[0][1].as_f64().expect("lp") - step[1][1].as_f64().expect("lp")) as f32)
                .collect();
            let label = match json.get("prompt") {
                Some(serde_json::Value::String(p)) => p.clone(),
                _ => json["request"]["messages"].to_string(),
            };
            ReferenceRow {
                endpoint: json["endpoint"].as_str().expect("endpoint").to_string(),
                label,
                prompt_token_ids: ids(&json["prompt_token_ids"]),
                output_token_ids: ids(&json["output_token_ids"]),
                top2_margin: margin,
                json,
            }
        })
        .collect()
}
