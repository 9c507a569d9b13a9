//! Qwen3 (dense): per-head RMS norms of queries and keys before RoPE (weights used as stored,
//! no +1), NEOX RoPE, no biases in practice, SiLU gate, scores scaled by 1/sqrt(head_dim), a
//! head size (`key_length`) that need not be n_embd / n_head.

use super::arch::{uniform_layer, Activation, Arch, AttnScaling, Biases, RopeKind};

pub const ARCH: Arch = Arch {
    name: "qwen3",
    rope: RopeKind::Neox,
    rope_freqs: false,
    qk_norm: true,
    post_norms: false,
    embd_scale: false,
    activation: Activation::Silu,
    attn_scaling: AttnScaling::Scores,
    biases: Biases {
        qkv: true,
        attn_out: false,
        ffn: false,
        output: false,
    },
    layer: uniform_layer,
};
