//! Gemma 3 (text): sliding-window layers with a fixed RoPE base and every sixth layer global
//! with the file's base and scaling; per-head q/k norms; post-attention and post-FFN norms;
//! embeddings scaled by sqrt(n_embd); GELU-tanh gate; queries pre-scaled (llama.cpp passes a
//! score scale of 1); tied embeddings; optional final soft-capping (read by the config).

use super::arch::{Activation, Arch, AttnScaling, Biases, LayerPlan, RopeFreqs, RopeKind};
use super::config::ModelConfig;

/// RoPE base of sliding-window layers: fixed by the architecture, not stored in the file.
const ROPE_BASE_SLIDING: f32 = 10_000.0;
/// Every sixth layer (5, 11, 17, …) is global when the model has a sliding window.
const SLIDING_PATTERN: usize = 6;

pub const ARCH: Arch = Arch {
    name: "gemma3",
    rope: RopeKind::Neox,
    rope_freqs: false,
    qk_norm: true,
    post_norms: true,
    embd_scale: true,
    activation: Activation::GeluTanh,
    attn_scaling: AttnScaling::Queries,
    biases: Biases {
        qkv: true,
        attn_out: false,
        ffn: false,
        output: false,
    },
    layer,
};

/// Sliding layers (when the file sets a window) use base 10 000 without scaling; global layers
/// use the file's base and linear scaling.
fn layer(cfg: &ModelConfig, il: usize) -> LayerPlan {
    let window = cfg
        .sliding_window
        .filter(|_| il % SLIDING_PATTERN < SLIDING_PATTERN - 1);
    let rope = match window {
        Some(_) => RopeFreqs {
            base: ROPE_BASE_SLIDING,
            freq_scale: 1.0,
        },
        None => RopeFreqs {
            base: cfg.rope_base,
            freq_scale: cfg.rope_freq_scale,
        },
    };
    LayerPlan { window, rope }
}
