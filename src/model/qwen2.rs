//! Qwen2 (and 2.5): Llama's block with biases on the Q/K/V projections (and optionally on the
//! output matrix), NEOX RoPE, SiLU gate, scores scaled by 1/sqrt(head_dim).

use super::arch::{uniform_layer, Activation, Arch, AttnScaling, Biases, RopeKind};

pub const ARCH: Arch = Arch {
    name: "qwen2",
    rope: RopeKind::Neox,
    rope_freqs: false,
    qk_norm: false,
    post_norms: false,
    embd_scale: false,
    activation: Activation::Silu,
    attn_scaling: AttnScaling::Scores,
    biases: Biases {
        qkv: true,
        attn_out: false,
        ffn: false,
        output: true,
    },
    layer: uniform_layer,
};
