//! Hyper-parameters of a decoder-only transformer, read from GGUF metadata with llama.cpp's
//! defaults, validated once at load.

use crate::gguf::{GgufErrorKind, GgufFile};

use super::error::ModelError;

/// Largest model dimension we accept from a file (guards the scratch sizes computed from it).
pub const DIM_MAX: usize = 1 << 16;
/// Largest vocabulary.
pub const VOCAB_MAX: usize = 1 << 21;
/// Most layers.
pub const LAYERS_MAX: usize = 1 << 10;

/// The shape of one model, as read from `{arch}.*` keys.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: String,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layers: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per-head width of keys and queries (`key_length`).
    pub head_dim: usize,
    /// Per-head width of values (`value_length`).
    pub head_dim_v: usize,
    /// Dimensions rotated by RoPE.
    pub n_rot: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// 1 / linear RoPE scaling factor.
    pub rope_freq_scale: f32,
    /// Sliding-window size of the sliding layers, if any.
    pub sliding_window: Option<usize>,
    pub final_logit_softcap: Option<f32>,
}

impl ModelConfig {
    /// Reads the hyper-parameters of architecture `arch` from `file`.
    pub fn from_gguf(file: &GgufFile, arch: &str) -> Result<ModelConfig, ModelError> {
        let md = file.metadata();
        let key = |k: &str| format!("{arch}.{k}");
        let req_u32 = |k: &str| -> Result<usize, ModelError> {
            let k = key(k);
            Ok(md.require(&k, md.get_u32(&k))? as usize)
        };
        let opt_u32 = |k: &str| -> Result<Option<usize>, ModelError> {
            Ok(md.get_u32(&key(k))?.map(|v| v as usize))
        };
        let n_embd = req_u32("embedding_length")?;
        let n_head = req_u32("attention.head_count")?;
        let head_dim =
            opt_u32("attention.key_length")?.unwrap_or(n_embd.checked_div(n_head).unwrap_or(0));
        let n_vocab = match md.get_array("tokenizer.ggml.tokens")? {
            Some(a) => a.len(),
            None => md.require(&key("vocab_size"), md.get_u32(&key("vocab_size")))? as usize,
        };
        let factor = match md.get_f32(&key("rope.scaling.factor"))? {
            Some(f) => Some(f),
            None => md.get_f32(&key("rope.scale_linear"))?,
        };
        let scaling_type = md.get_str(&key("rope.scaling.type"))?.unwrap_or("linear");
        let rope_freq_scale = match (scaling_type, factor) {
            ("none", _) | (_, None) => 1.0,
            (_, Some(0.0)) => 1.0,
            ("linear", Some(f)) => 1.0 / f,
            (other, Some(_)) => {
                return Err(unsupported(
                    file,
                    format!("rope scaling type '{other}' is not supported"),
                ));
            }
        };
        let cfg = ModelConfig {
            arch: arch.to_string(),
            n_vocab,
            n_ctx_train: req_u32("context_length")?,
            n_embd,
            n_layers: req_u32("block_count")?,
            n_ff: req_u32("feed_forward_length")?,
            n_head,
            n_head_kv: opt_u32("attention.head_count_kv")?.unwrap_or(n_head),
            head_dim,
            head_dim_v: opt_u32("attention.value_length")?.unwrap_or(head_dim),
            n_rot: opt_u32("rope.dimension_count")?.unwrap_or(head_dim),
            rms_eps: md.require(
                &key("attention.layer_norm_rms_epsilon"),
                md.get_f32(&key("attention.layer_norm_rms_epsilon")),
            )?,
            rope_base: md.get_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_freq_scale,
            sliding_window: opt_u32("attention.sliding_window")?.filter(|&w| w > 0),
            final_logit_softcap: md
                .get_f32(&key("final_logit_softcapping"))?
                .filter(|&c| c > 0.0),
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    fn validate(&self, file: &GgufFile) -> Result<(), ModelError> {
        let dims = [
            ("embedding_length", self.n_embd),
            ("feed_forward_length", self.n_ff),
            ("attention.head_count", self.n_head),
            ("attention.head_count_kv", self.n_head_kv),
            ("attention.key_length", self.head_dim),
            ("attention.value_length", self.head_dim_v),
            ("context_length", self.n_ctx_train.min(DIM_MAX)),
        ];
        for (name, v) in dims {
            if v == 0 || v > DIM_MAX {
                return Err(invalid(
                    file,
                    &format!("{}.{name}", self.arch),
                    format!("{v} is not in 1..={DIM_MAX}"),
                ));
            }
        }
        if self.head_dim.max(self.head_dim_v) > super::kv_cache::HEAD_DIM_MAX {
            let why = format!(
                "head size {} is over {}",
                self.head_dim.max(self.head_dim_v),
                super::kv_cache::HEAD_DIM_MAX
            );
            return Err(invalid(
                file,
                &format!("{}.attention.key_length", self.arch),
                why,
            ));
        }
        if self.n_layers == 0 || self.n_layers > LAYERS_MAX {
            return Err(invalid(
                file,
                &format!("{}.block_count", self.arch),
                format!("{} is not in 1..={LAYERS_MAX}", self.n_layers),
            ));
        }
        if self.n_vocab == 0 || self.n_vocab > VOCAB_MAX {
            return Err(invalid(
                file,
                "tokenizer.ggml.tokens",
                format!("{} tokens is not in 1..={VOCAB_MAX}", self.n_vocab),
            ));
        }
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            let why = format!(
                "head_count {} is not a multiple of head_count_kv {}",
                self.n_head, self.n_head_kv
            );
            return Err(invalid(
                file,
                &format!("{}.attention.head_count_kv", self.arch),
                why,
            ));
        }
        if self.n_rot > self.head_dim || !self.n_rot.is_multiple_of(2) {
            return Err(invalid(
                file,
                &format!("{}.rope.dimension_count", self.arch),
                format!("{} is not even and at most the head size", self.n_rot),
            ));
        }
        let finite = [self.rms_eps, self.rope_base, self.rope_freq_scale];
        if finite.iter().any(|v| !v.is_finite() || *v <= 0.0) {
            return Err(invalid(
                file,
                &format!("{}.rope/attention", self.arch),
                "epsilon, rope base and scale must be positive numbers",
            ));
        }
        Ok(())
    }

    /// Width of all query heads together.
    pub fn q_width(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of all key heads together.
    pub fn k_width(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Width of all value heads together.
    pub fn v_width(&self) -> usize {
        self.n_head_kv * self.head_dim_v
    }
}

fn invalid(file: &GgufFile, key: &str, why: impl Into<String>) -> ModelError {
    file.error(
        format!("metadata '{key}'"),
        GgufErrorKind::Invalid(why.into()),
    )
    .into()
}

pub(crate) fn unsupported(file: &GgufFile, what: impl Into<String>) -> ModelError {
    ModelError::Unsupported {
        path: file.path().display().to_string(),
        what: what.into(),
    }
}
