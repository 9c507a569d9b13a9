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
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/reference/gemma-3-270m-q4_k_m/greedy.jsonl"
    );
    let text = std::fs::read_to_string(path).expect("reference file");
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .expect("id array")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect()
    };
    text.lines()
        .map(|line| {
            let json: serde_json::Value = serde_json::from_str(line).expect("reference row");
            let margin = json["output_top2"]
                .as_array()
                .expect("top2")
                .iter()
                .map(|step| {
                    (step[0][1].as_f64().expect("lp") - step[1][1].as_f64().expect("lp")) as f32
                })
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

/// A tiny Gemma 3 model, all tensors F32, as a GGUF image in memory: n_embd 64, n_ff 128,
/// 2 heads of 32 (1 KV head), 2 layers, sliding window 8, context 64, a 32-token vocabulary.
/// Its metadata and tensors can be edited before `to_bytes` to build broken files.
pub struct TinyGemma3 {
    pub kvs: Vec<(String, ryzanstein::gguf::Value)>,
    /// (name, dims, f32 data)
    pub tensors: Vec<(String, Vec<u64>, Vec<f32>)>,
}

impl TinyGemma3 {
    pub const N_EMBD: usize = 64;
    pub const N_FF: usize = 128;
    pub const N_HEAD: usize = 2;
    pub const N_HEAD_KV: usize = 1;
    pub const HEAD_DIM: usize = 32;
    pub const N_LAYERS: usize = 2;
    pub const N_CTX: usize = 64;
    pub const N_VOCAB: usize = 32;

    pub fn new() -> TinyGemma3 {
        use ryzanstein::gguf::{Array, Value};
        let s = |v: &str| Value::String(v.to_string());
        let kvs: Vec<(String, Value)> = vec![
            ("general.architecture".into(), s("gemma3")),
            (
                "gemma3.context_length".into(),
                Value::U32(Self::N_CTX as u32),
            ),
            (
                "gemma3.embedding_length".into(),
                Value::U32(Self::N_EMBD as u32),
            ),
            (
                "gemma3.block_count".into(),
                Value::U32(Self::N_LAYERS as u32),
            ),
            (
                "gemma3.feed_forward_length".into(),
                Value::U32(Self::N_FF as u32),
            ),
            (
                "gemma3.attention.head_count".into(),
                Value::U32(Self::N_HEAD as u32),
            ),
            (
                "gemma3.attention.head_count_kv".into(),
                Value::U32(Self::N_HEAD_KV as u32),
            ),
            (
                "gemma3.attention.key_length".into(),
                Value::U32(Self::HEAD_DIM as u32),
            ),
            (
                "gemma3.attention.value_length".into(),
                Value::U32(Self::HEAD_DIM as u32),
            ),
            ("gemma3.attention.sliding_window".into(), Value::U32(8)),
            (
                "gemma3.attention.layer_norm_rms_epsilon".into(),
                Value::F32(1e-6),
            ),
            ("gemma3.rope.freq_base".into(), Value::F32(1_000_000.0)),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(Array::String(
                    (0..Self::N_VOCAB).map(|i| format!("t{i}")).collect(),
                )),
            ),
        ];
        let mut rng = Rng(0x7111_6E33);
        let mut tensors = Vec::new();
        let mut mat = |name: String, cols: usize, rows: usize, scale: f32| {
            let data = (0..cols * rows).map(|_| rng.f32() * scale).collect();
            (name, vec![cols as u64, rows as u64], data)
        };
        let (d, ff, hd) = (Self::N_EMBD, Self::N_FF, Self::HEAD_DIM);
        let norm = |name: String, n: usize| (name, vec![n as u64], vec![1.0f32; n]);
        tensors.push(mat("token_embd.weight".into(), d, Self::N_VOCAB, 0.5));
        for il in 0..Self::N_LAYERS {
            let b = |n: &str| format!("blk.{il}.{n}.weight");
            tensors.push(norm(b("attn_norm"), d));
            tensors.push(mat(b("attn_q"), d, Self::N_HEAD * hd, 0.2));
            tensors.push(mat(b("attn_k"), d, Self::N_HEAD_KV * hd, 0.2));
            tensors.push(mat(b("attn_v"), d, Self::N_HEAD_KV * hd, 0.2));
            tensors.push(mat(b("attn_output"), Self::N_HEAD * hd, d, 0.2));
            tensors.push(norm(b("attn_q_norm"), hd));
            tensors.push(norm(b("attn_k_norm"), hd));
            tensors.push(norm(b("post_attention_norm"), d));
            tensors.push(norm(b("ffn_norm"), d));
            tensors.push(mat(b("ffn_gate"), d, ff, 0.2));
            tensors.push(mat(b("ffn_up"), d, ff, 0.2));
            tensors.push(mat(b("ffn_down"), ff, d, 0.2));
            tensors.push(norm(b("post_ffw_norm"), d));
        }
        tensors.push(norm("output_norm.weight".into(), d));
        TinyGemma3 { kvs, tensors }
    }

    /// Drops a metadata key (panics if there is none of that name, so a typo cannot pass).
    pub fn without_key(mut self, key: &str) -> Self {
        let n = self.kvs.len();
        self.kvs.retain(|(k, _)| k != key);
        assert_eq!(self.kvs.len() + 1, n, "no key {key}");
        self
    }

    /// Sets (or adds) a metadata key.
    pub fn with_key(mut self, key: &str, value: ryzanstein::gguf::Value) -> Self {
        match self.kvs.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value,
            None => self.kvs.push((key.to_string(), value)),
        }
        self
    }

    /// Drops a tensor (panics if there is none of that name).
    pub fn without_tensor(mut self, name: &str) -> Self {
        let n = self.tensors.len();
        self.tensors.retain(|(t, _, _)| t != name);
        assert_eq!(self.tensors.len() + 1, n, "no tensor {name}");
        self
    }

    /// Gives a tensor other dims (same element count, so the file itself stays valid).
    pub fn with_dims(mut self, name: &str, dims: &[u64]) -> Self {
        let t = self
            .tensors
            .iter_mut()
            .find(|(t, _, _)| t == name)
            .expect("tensor");
        assert_eq!(
            dims.iter().product::<u64>() as usize,
            t.2.len(),
            "element count"
        );
        t.1 = dims.to_vec();
        self
    }

    pub fn tensor_names(&self) -> Vec<String> {
        self.tensors.iter().map(|t| t.0.clone()).collect()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = ryzanstein::gguf::writer::GgufWriter::new(3);
        for (k, v) in &self.kvs {
            w = w.kv(k, v.clone());
        }
        for (name, dims, data) in &self.tensors {
            let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            w = w.tensor(name, dims, ryzanstein::kernels::GgmlType::F32, bytes);
        }
        w.to_bytes()
    }
}

/// The tiny Gemma 3 model as GGUF bytes, optionally without one tensor.
pub fn tiny_gemma3(omit: Option<&str>) -> Vec<u8> {
    let m = TinyGemma3::new();
    match omit {
        Some(name) => m.without_tensor(name).to_bytes(),
        None => m.to_bytes(),
    }
}

/// A path under the temp directory unique to this process and call, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(stem: &str, bytes: &[u8]) -> TempFile {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "ryzanstein-test-{}-{n}-{stem}.gguf",
            std::process::id()
        ));
        std::fs::write(&path, bytes).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The committed architecture fixtures (`scripts/make-fixtures.sh` made them).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixtures")
}
