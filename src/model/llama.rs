//! Llama (2 and 3.x): grouped-query attention, RoPE on adjacent pairs (the converter permutes
//! the Q/K rows for it), optional `rope_freqs` (Llama 3.1+ frequency divisors) and linear
//! scaling, SiLU gate, scores scaled by 1/sqrt(head_dim). Biases are optional, as llama.cpp
//! reads them.

use super::arch::{uniform_layer, Activation, Arch, AttnScaling, Biases, RopeKind};

pub const ARCH: Arch = Arch {
    name: "llama",
    rope: RopeKind::Normal,
    rope_freqs: true,
    qk_norm: false,
    post_norms: false,
    embd_scale: false,
    activation: Activation::Silu,
    attn_scaling: AttnScaling::Scores,
    biases: Biases {
        qkv: true,
        attn_out: true,
        ffn: true,
        output: false,
    },
    layer: uniform_layer,
};
