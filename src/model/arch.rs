//! What one decoder architecture chooses, as data: which optional tensors it has, how it rotates
//! and scales, which activation it gates with, and what differs from layer to layer. The shared
//! decoder (`decoder.rs`) runs any [`Arch`]; each architecture is a small file declaring one
//! (`gemma3.rs`, `llama.rs`, `qwen2.rs`, `qwen3.rs`), picked by `general.architecture`.
//!
//! Boundary: an architecture file holds no forward-pass code and no buffers; it only answers
//! questions about a [`ModelConfig`].

use super::config::ModelConfig;
use super::{gemma3, llama, qwen2, qwen3};

/// How RoPE pairs the dimensions of a head (llama.cpp's rope types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeKind {
    /// Adjacent pairs `(x[2i], x[2i+1])` (llama.cpp "normal"; Llama).
    Normal,
    /// Halves `(x[i], x[i + n_rot/2])` (llama.cpp "neox"; Qwen, Gemma).
    Neox,
}

/// The gate activation of the feed-forward block: `down(act(gate(x)) * up(x))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// GELU, tanh approximation (Gemma).
    GeluTanh,
    /// SiLU, `x / (1 + e^-x)` (Llama, Qwen).
    Silu,
}

/// Where the attention scale 1/sqrt(head_dim) is applied. Both are the same in exact
/// arithmetic; they round differently, and each architecture follows llama.cpp's choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnScaling {
    /// Multiply the queries after RoPE; scores are not scaled again (Gemma).
    Queries,
    /// Multiply each score q·k (llama.cpp's `kq_scale`; Llama, Qwen).
    Scores,
}

/// Which bias vectors an architecture may carry (each optional in the file, as in llama.cpp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Biases {
    /// `attn_q.bias`, `attn_k.bias`, `attn_v.bias`.
    pub qkv: bool,
    /// `attn_output.bias`.
    pub attn_out: bool,
    /// `ffn_gate.bias`, `ffn_up.bias`, `ffn_down.bias`.
    pub ffn: bool,
    /// `output.bias`.
    pub output: bool,
}

/// RoPE frequencies of a layer: θ_i = pos · freq_scale · base^(−2i/n_rot) (/ rope_freqs[i]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeFreqs {
    pub base: f32,
    pub freq_scale: f32,
}

/// What one layer does differently from the others.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerPlan {
    /// `Some(w)`: the layer attends to the last `w` positions only.
    pub window: Option<usize>,
    pub rope: RopeFreqs,
}

/// One architecture's choices.
#[derive(Debug)]
pub struct Arch {
    /// The `general.architecture` value, also the prefix of its metadata keys.
    pub name: &'static str,
    pub rope: RopeKind,
    /// Reads the optional `rope_freqs.weight` (per-dimension divisors of θ; Llama 3.1+).
    pub rope_freqs: bool,
    /// Per-head RMS norms of queries and keys before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// RMS norms of the attention and FFN outputs before the residual add
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// Multiply embeddings by sqrt(n_embd).
    pub embd_scale: bool,
    pub activation: Activation,
    pub attn_scaling: AttnScaling,
    pub biases: Biases,
    /// The window and RoPE frequencies of layer `il`.
    pub layer: fn(&ModelConfig, usize) -> LayerPlan,
}

/// Every architecture we run.
pub const ARCHS: [&Arch; 4] = [&gemma3::ARCH, &llama::ARCH, &qwen2::ARCH, &qwen3::ARCH];

/// The architecture named `name` (a `general.architecture` value).
pub fn by_name(name: &str) -> Option<&'static Arch> {
    ARCHS.into_iter().find(|a| a.name == name)
}

/// The plan of a model whose layers are all alike: full attention, the file's RoPE base and
/// linear scaling.
pub fn uniform_layer(cfg: &ModelConfig, _il: usize) -> LayerPlan {
    LayerPlan {
        window: None,
        rope: RopeFreqs {
            base: cfg.rope_base,
            freq_scale: cfg.rope_freq_scale,
        },
    }
}
