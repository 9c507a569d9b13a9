//! The decoder shared by every architecture: a stack of pre-norm attention and gated-FFN blocks
//! over a KV cache, as llama.cpp runs Gemma 3, Llama, Qwen2 and Qwen3. What differs between
//! them (optional norms and biases, RoPE pairing and frequencies, embedding scale, activation,
//! where the attention scale goes, sliding windows) is an [`Arch`], declared in a small file of
//! its own and picked from `general.architecture`.
//!
//! `forward` runs one batch of tokens from any mix of sequences: prefill chunks and decode steps
//! alike. Every per-token computation (norms, RoPE, attention) is done token by token and every
//! matmul is batch-invariant, so a token's logits do not depend on what else is in the batch.
//! Every buffer is allocated at load or in `new_state`; `forward` allocates nothing.

use std::path::Path;
use std::sync::Arc;

use crate::team;

use crate::gguf::{GgufErrorKind, GgufFile};
use crate::tensor::Tensor;

use super::arch::{self, Activation, Arch, AttnScaling, RopeFreqs, RopeKind};
use super::config::{unsupported, ModelConfig};
use super::error::ModelError;
use super::kv_cache::{AttnShape, BatchToken, KvCache, KvShape};
use super::ops::{self, GeluTable};
use super::scratch::{QuantActs, Scratch, ScratchShape};

/// Most distinct RoPE frequency sets among the layers of one model (Gemma 3 has two: sliding
/// and global); each costs one cos/sin table per batch.
pub const ROPE_VARIANTS_MAX: usize = 2;

/// Limits fixed at load: they size the KV cache and the scratch buffers.
#[derive(Clone, Copy, Debug)]
pub struct ModelOptions {
    /// Context length per sequence (positions).
    pub n_ctx: usize,
    /// Sequence slots in the KV cache.
    pub n_seq: usize,
    /// Most tokens in one forward pass.
    pub max_batch_tokens: usize,
    /// Most tokens in one forward pass that want logits.
    pub max_logit_rows: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            n_ctx: 4096,
            n_seq: 1,
            max_batch_tokens: 512,
            max_logit_rows: 1,
        }
    }
}

/// A weight matrix `[n_in, n_out]` and its optional bias `[n_out]`.
struct Linear {
    w: Tensor,
    bias: Option<Vec<f32>>,
}

/// Norm weights an architecture may lack.
struct QkNorms {
    /// `[head_dim]`, applied to every query head.
    q: Vec<f32>,
    /// `[head_dim]`, applied to every key head.
    k: Vec<f32>,
}

struct PostNorms {
    /// `[n_embd]`, on the attention output.
    attn: Vec<f32>,
    /// `[n_embd]`, on the FFN output.
    ffn: Vec<f32>,
}

struct Layer {
    /// `[n_embd]`
    attn_norm: Vec<f32>,
    /// `[n_embd] -> [n_head * head_dim]`
    wq: Linear,
    /// `[n_embd] -> [n_head_kv * head_dim]`
    wk: Linear,
    /// `[n_embd] -> [n_head_kv * head_dim_v]`
    wv: Linear,
    /// `[n_head * head_dim_v] -> [n_embd]`
    wo: Linear,
    qk_norm: Option<QkNorms>,
    post_norms: Option<PostNorms>,
    /// `[n_embd]`
    ffn_norm: Vec<f32>,
    /// `[n_embd] -> [n_ff]`
    gate: Linear,
    /// `[n_embd] -> [n_ff]`
    up: Linear,
    /// `[n_ff] -> [n_embd]`
    down: Linear,
    /// `Some(w)` on sliding-window layers.
    window: Option<usize>,
    /// Index into [`Model::rope_variants`] (and the scratch cos/sin tables).
    rope: usize,
}

/// A loaded model of any supported architecture: its file, shape, weights and the limits it
/// was loaded with.
pub struct Model {
    file: Arc<GgufFile>,
    arch: &'static Arch,
    cfg: ModelConfig,
    opts: ModelOptions,
    /// `[n_embd, n_vocab]`, a row per token.
    token_embd: Tensor,
    /// The output matrix: `output.weight`, or `token_embd` when the embeddings are tied.
    output: Linear,
    /// `[n_embd]`
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    /// The distinct RoPE frequency sets of the layers, at most [`ROPE_VARIANTS_MAX`].
    rope_variants: Vec<RopeFreqs>,
    /// `rope_freqs.weight`, `[n_rot / 2]`: divisors of θ_i (Llama 3.1+), if present.
    rope_factors: Option<Vec<f32>>,
    /// Built only for architectures that gate with GELU.
    gelu: Option<GeluTable>,
    /// 1/sqrt(head_dim), on the queries or on the scores as the architecture says.
    attn_scale: f32,
}

/// Per-use state of a model: scratch buffers and KV cache.
pub struct State {
    scratch: Scratch,
    pub kv: KvCache,
}

impl State {
    /// Bytes of the KV cache and the scratch buffers.
    pub fn bytes(&self) -> usize {
        self.kv.bytes() + self.scratch.bytes()
    }
}

impl Model {
    pub fn load(path: &Path, opts: ModelOptions) -> Result<Model, ModelError> {
        Self::from_file(Arc::new(GgufFile::open(path)?), opts)
    }

    pub fn from_file(file: Arc<GgufFile>, opts: ModelOptions) -> Result<Model, ModelError> {
        // Probe the CPU now, not inside the first (allocation-free) forward pass.
        crate::kernels::init();
        let name = file
            .metadata()
            .get_str("general.architecture")?
            .unwrap_or("(none)");
        let Some(arch) = arch::by_name(name) else {
            let known: Vec<&str> = arch::ARCHS.iter().map(|a| a.name).collect();
            return Err(unsupported(
                &file,
                format!(
                    "architecture '{name}' is not supported (supported: {})",
                    known.join(", ")
                ),
            ));
        };
        let cfg = ModelConfig::from_gguf(&file, arch.name)?;
        check_options(&file, &cfg, &opts)?;
        let loader = Loader {
            file: &file,
            arch,
            cfg: &cfg,
        };
        let token_embd = Tensor::load(&file, "token_embd.weight", cfg.n_embd, cfg.n_vocab)?;
        let output_w = Tensor::load_optional(&file, "output.weight", cfg.n_embd, cfg.n_vocab)?
            .unwrap_or_else(|| token_embd.clone());
        let output = Linear {
            w: output_w,
            bias: loader.bias(arch.biases.output, "output.bias", cfg.n_vocab)?,
        };
        let mut rope_variants: Vec<RopeFreqs> = Vec::with_capacity(ROPE_VARIANTS_MAX);
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for il in 0..cfg.n_layers {
            let plan = (arch.layer)(&cfg, il);
            let Some(rope) = rope_variant(&mut rope_variants, plan.rope) else {
                let why = format!("more than {ROPE_VARIANTS_MAX} RoPE frequency sets");
                return Err(unsupported(&file, why));
            };
            layers.push(loader.layer(il, plan.window, rope)?);
        }
        let rope_factors = match arch.rope_freqs {
            true => loader.rope_factors()?,
            false => None,
        };
        let output_norm = loader.vector("output_norm.weight", cfg.n_embd)?;
        let attn_scale = 1.0 / (cfg.head_dim as f32).sqrt();
        Ok(Model {
            arch,
            cfg,
            opts,
            token_embd,
            output,
            output_norm,
            layers,
            rope_variants,
            rope_factors,
            gelu: (arch.activation == Activation::GeluTanh).then(GeluTable::new),
            attn_scale,
            file,
        })
    }

    /// The architecture this model runs as.
    pub fn arch(&self) -> &'static Arch {
        self.arch
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn options(&self) -> &ModelOptions {
        &self.opts
    }

    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// Fresh scratch buffers and an empty KV cache for this model's limits.
    pub fn new_state(&self) -> State {
        let c = &self.cfg;
        let act_row_bytes_max = self
            .weights()
            .map(|w| w.act_type().row_bytes(w.row_len).unwrap_or(0))
            .max()
            .unwrap_or(0);
        let scratch = Scratch::new(&ScratchShape {
            max_batch_tokens: self.opts.max_batch_tokens,
            max_logit_rows: self.opts.max_logit_rows,
            n_embd: c.n_embd,
            q_width: c.q_width(),
            k_width: c.k_width(),
            v_width: c.v_width(),
            attn_width: c.n_head * c.head_dim_v,
            n_ff: c.n_ff,
            n_rot: c.n_rot,
            n_rope_variants: self.rope_variants.len(),
            n_vocab: c.n_vocab,
            act_row_bytes_max,
        });
        let windows: Vec<_> = self.layers.iter().map(|l| l.window).collect();
        let kv_shape = KvShape {
            n_seq: self.opts.n_seq,
            n_ctx: self.opts.n_ctx,
            max_batch_tokens: self.opts.max_batch_tokens,
            k_width: c.k_width(),
            v_width: c.v_width(),
        };
        State {
            scratch,
            kv: KvCache::new(kv_shape, &windows),
        }
    }

    /// Every matrix the forward pass multiplies by.
    pub fn weights(&self) -> impl Iterator<Item = &Tensor> {
        let per_layer = self
            .layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down].map(|lin| &lin.w));
        per_layer.chain(std::iter::once(&self.output.w))
    }

    /// Runs one batch; returns the logits of the tokens marked `logits`, in batch order, each
    /// `n_vocab` long.
    pub fn forward<'s>(
        &self,
        state: &'s mut State,
        batch: &[BatchToken],
    ) -> Result<&'s [f32], ModelError> {
        self.check_batch(batch)?;
        state
            .kv
            .reserve_batch(batch)
            .map_err(|e| ModelError::Batch(e.to_string()))?;
        let n = batch.len();
        let bytes = self.file.bytes();
        let s = &mut state.scratch;
        self.embed(bytes, batch, s);
        self.rope_tables(batch, s);
        for (il, layer) in self.layers.iter().enumerate() {
            self.attention_block(bytes, il, layer, &mut state.kv, batch, s);
            self.ffn_block(bytes, layer, n, s);
        }
        Ok(self.logits(bytes, batch, s))
    }

    fn check_batch(&self, batch: &[BatchToken]) -> Result<(), ModelError> {
        let o = &self.opts;
        let n_logits = batch.iter().filter(|t| t.logits).count();
        if batch.is_empty() || batch.len() > o.max_batch_tokens || n_logits > o.max_logit_rows {
            return Err(ModelError::Batch(format!(
                "batch of {} tokens ({n_logits} with logits) is outside 1..={} ({} with logits)",
                batch.len(),
                o.max_batch_tokens,
                o.max_logit_rows
            )));
        }
        for t in batch {
            if t.seq >= o.n_seq || t.pos >= o.n_ctx || t.token as usize >= self.cfg.n_vocab {
                return Err(ModelError::Batch(format!(
                    "token {} at position {} of sequence {} is outside the vocabulary ({}), context ({}) or sequence slots ({})",
                    t.token, t.pos, t.seq, self.cfg.n_vocab, o.n_ctx, o.n_seq
                )));
            }
        }
        Ok(())
    }

    /// x[t] = embedding row of the token (scaled by sqrt(n_embd) if the architecture says so).
    fn embed(&self, bytes: &[u8], batch: &[BatchToken], s: &mut Scratch) {
        let d = self.cfg.n_embd;
        let scale = self.arch.embd_scale.then(|| (d as f32).sqrt());
        team::for_each_chunk_mut(&mut s.x[..batch.len() * d], d, |i, x| {
            self.token_embd
                .dequantize_row(bytes, batch[i].token as usize, x);
            if let Some(scale) = scale {
                x.iter_mut().for_each(|v| *v *= scale);
            }
        });
    }

    /// cos/sin of every token's position, for each RoPE frequency set.
    fn rope_tables(&self, batch: &[BatchToken], s: &mut Scratch) {
        let c = &self.cfg;
        let half = c.n_rot / 2;
        let factors = self.rope_factors.as_deref();
        for (k, r) in self.rope_variants.iter().enumerate() {
            for (t, tok) in batch.iter().enumerate() {
                let (cos, sin) = (
                    &mut s.rope_cos[k][t * half..][..half],
                    &mut s.rope_sin[k][t * half..][..half],
                );
                ops::rope_angles(tok.pos, r.base, r.freq_scale, factors, c.n_rot, cos, sin);
            }
        }
    }

    fn attention_block(
        &self,
        bytes: &[u8],
        il: usize,
        l: &Layer,
        kv: &mut KvCache,
        batch: &[BatchToken],
        s: &mut Scratch,
    ) {
        let c = &self.cfg;
        let (n, d) = (batch.len(), c.n_embd);
        norm_rows(&mut s.h[..n * d], &s.x[..n * d], &l.attn_norm, c.rms_eps);
        s.acts.invalidate();
        matmul(bytes, &l.wq, &mut s.acts, &s.h, n, &mut s.q);
        matmul(bytes, &l.wk, &mut s.acts, &s.h, n, &mut s.k);
        matmul(bytes, &l.wv, &mut s.acts, &s.h, n, &mut s.v);
        let half = c.n_rot / 2;
        let (cos, sin) = (&s.rope_cos[l.rope], &s.rope_sin[l.rope]);
        let (hd, rope_kind) = (c.head_dim, self.arch.rope);
        // Per head: norm (if any), rotate, scale (if the queries carry the scale).
        let prep = |heads: &mut [f32], t: usize, norm: Option<&[f32]>, scale: f32| {
            let (cos, sin) = (&cos[t * half..][..half], &sin[t * half..][..half]);
            for head in heads.chunks_mut(hd) {
                if let Some(w) = norm {
                    ops::rms_norm(head, w, c.rms_eps);
                }
                match rope_kind {
                    RopeKind::Neox => ops::rope_neox(&mut head[..c.n_rot], cos, sin),
                    RopeKind::Normal => ops::rope_normal(&mut head[..c.n_rot], cos, sin),
                }
                if scale != 1.0 {
                    head.iter_mut().for_each(|v| *v *= scale);
                }
            }
        };
        let (q_scale, kq_scale) = match self.arch.attn_scaling {
            AttnScaling::Queries => (self.attn_scale, 1.0),
            AttnScaling::Scores => (1.0, self.attn_scale),
        };
        let q_norm = l.qk_norm.as_ref().map(|nm| nm.q.as_slice());
        let k_norm = l.qk_norm.as_ref().map(|nm| nm.k.as_slice());
        team::for_each_chunk_mut(&mut s.q[..n * c.q_width()], c.q_width(), |t, q| {
            prep(q, t, q_norm, q_scale)
        });
        team::for_each_chunk_mut(&mut s.k[..n * c.k_width()], c.k_width(), |t, k| {
            prep(k, t, k_norm, 1.0)
        });
        let shape = AttnShape {
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: hd,
            head_dim_v: c.head_dim_v,
            kq_scale,
        };
        kv.write_and_attend(il, shape, batch, &s.k, &s.v, &s.q, &mut s.attn);
        s.acts.invalidate();
        matmul(bytes, &l.wo, &mut s.acts, &s.attn, n, &mut s.proj);
        let post_norm = l.post_norms.as_ref().map(|p| p.attn.as_slice());
        add_residual(
            &mut s.x[..n * d],
            &mut s.proj[..n * d],
            d,
            post_norm,
            c.rms_eps,
        );
    }

    fn ffn_block(&self, bytes: &[u8], l: &Layer, n: usize, s: &mut Scratch) {
        let c = &self.cfg;
        let (d, ff) = (c.n_embd, c.n_ff);
        norm_rows(&mut s.h[..n * d], &s.x[..n * d], &l.ffn_norm, c.rms_eps);
        s.acts.invalidate();
        matmul(bytes, &l.gate, &mut s.acts, &s.h, n, &mut s.gate);
        matmul(bytes, &l.up, &mut s.acts, &s.h, n, &mut s.up);
        let up = &s.up[..n * ff];
        let gelu = self.gelu.as_ref();
        team::for_each_chunk_mut(&mut s.gate[..n * ff], ff, |t, g| {
            let u = &up[t * ff..][..ff];
            match gelu {
                Some(gelu) => gelu.geglu(g, u),
                None => ops::swiglu(g, u),
            }
        });
        s.acts.invalidate();
        matmul(bytes, &l.down, &mut s.acts, &s.gate, n, &mut s.proj);
        let post_norm = l.post_norms.as_ref().map(|p| p.ffn.as_slice());
        add_residual(
            &mut s.x[..n * d],
            &mut s.proj[..n * d],
            d,
            post_norm,
            c.rms_eps,
        );
    }

    /// Final norm and output matrix for the tokens that want logits.
    fn logits<'s>(&self, bytes: &[u8], batch: &[BatchToken], s: &'s mut Scratch) -> &'s [f32] {
        let c = &self.cfg;
        let d = c.n_embd;
        s.logit_rows.clear();
        s.logit_rows.extend(
            batch
                .iter()
                .enumerate()
                .filter(|(_, t)| t.logits)
                .map(|(i, _)| i),
        );
        let m = s.logit_rows.len();
        for (r, &t) in s.logit_rows.iter().enumerate() {
            let h = &mut s.out_h[r * d..][..d];
            h.copy_from_slice(&s.x[t * d..][..d]);
            ops::rms_norm(h, &self.output_norm, c.rms_eps);
        }
        s.acts.invalidate();
        if m > 0 {
            matmul(bytes, &self.output, &mut s.acts, &s.out_h, m, &mut s.logits);
        }
        let logits = &mut s.logits[..m * c.n_vocab];
        if let Some(cap) = c.final_logit_softcap {
            ops::softcap(logits, cap);
        }
        logits
    }
}

/// Reads one architecture's tensors, naming each missing or misshapen one.
struct Loader<'a> {
    file: &'a GgufFile,
    arch: &'static Arch,
    cfg: &'a ModelConfig,
}

impl Loader<'_> {
    fn layer(&self, il: usize, window: Option<usize>, rope: usize) -> Result<Layer, ModelError> {
        let (c, b) = (self.cfg, self.arch.biases);
        let name = |n: &str| format!("blk.{il}.{n}");
        let lin = |n: &str, n_in: usize, n_out: usize, bias: bool| -> Result<Linear, ModelError> {
            Ok(Linear {
                w: Tensor::load(self.file, &name(&format!("{n}.weight")), n_in, n_out)?,
                bias: self.bias(bias, &name(&format!("{n}.bias")), n_out)?,
            })
        };
        let v = |n: &str, len: usize| self.vector(&name(&format!("{n}.weight")), len);
        let qk_norm = match self.arch.qk_norm {
            true => Some(QkNorms {
                q: v("attn_q_norm", c.head_dim)?,
                k: v("attn_k_norm", c.head_dim)?,
            }),
            false => None,
        };
        let attn_norm = v("attn_norm", c.n_embd)?;
        let wq = lin("attn_q", c.n_embd, c.q_width(), b.qkv)?;
        let wk = lin("attn_k", c.n_embd, c.k_width(), b.qkv)?;
        let wv = lin("attn_v", c.n_embd, c.v_width(), b.qkv)?;
        let wo = lin("attn_output", c.n_head * c.head_dim_v, c.n_embd, b.attn_out)?;
        let post_attn = match self.arch.post_norms {
            true => Some(v("post_attention_norm", c.n_embd)?),
            false => None,
        };
        let ffn_norm = v("ffn_norm", c.n_embd)?;
        let gate = lin("ffn_gate", c.n_embd, c.n_ff, b.ffn)?;
        let up = lin("ffn_up", c.n_embd, c.n_ff, b.ffn)?;
        let down = lin("ffn_down", c.n_ff, c.n_embd, b.ffn)?;
        let post_norms = match post_attn {
            Some(attn) => Some(PostNorms {
                attn,
                ffn: v("post_ffw_norm", c.n_embd)?,
            }),
            None => None,
        };
        Ok(Layer {
            attn_norm,
            wq,
            wk,
            wv,
            wo,
            qk_norm,
            post_norms,
            ffn_norm,
            gate,
            up,
            down,
            window,
            rope,
        })
    }

    /// A 1-D tensor of `len` values as f32 (norm weights, biases), copied at load.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let t = Tensor::load(self.file, name, len, 1)?;
        Ok(t.to_f32(self.file.bytes()))
    }

    /// The bias `name` when the architecture may have it and the file does.
    fn bias(&self, allowed: bool, name: &str, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
        if !allowed || self.file.tensor(name).is_none() {
            return Ok(None);
        }
        self.vector(name, len).map(Some)
    }

    /// `rope_freqs.weight` if present: `n_rot / 2` positive divisors of θ.
    fn rope_factors(&self) -> Result<Option<Vec<f32>>, ModelError> {
        const NAME: &str = "rope_freqs.weight";
        if self.file.tensor(NAME).is_none() {
            return Ok(None);
        }
        let f = self.vector(NAME, self.cfg.n_rot / 2)?;
        if f.iter().any(|v| !v.is_finite() || *v <= 0.0) {
            let why = "RoPE frequency factors must be positive numbers".to_string();
            let e = self
                .file
                .error(format!("tensor '{NAME}'"), GgufErrorKind::Invalid(why));
            return Err(e.into());
        }
        Ok(Some(f))
    }
}

/// The index of `rope` in `variants`, added if new; `None` past [`ROPE_VARIANTS_MAX`].
fn rope_variant(variants: &mut Vec<RopeFreqs>, rope: RopeFreqs) -> Option<usize> {
    if let Some(i) = variants.iter().position(|r| *r == rope) {
        return Some(i);
    }
    if variants.len() == ROPE_VARIANTS_MAX {
        return None;
    }
    variants.push(rope);
    Some(variants.len() - 1)
}

/// Quantizes the first `n` rows of `x` for `lin` (reusing a quantization already held),
/// multiplies, and adds the bias: `out[..n][..n_out]`.
fn matmul(bytes: &[u8], lin: &Linear, acts: &mut QuantActs, x: &[f32], n: usize, out: &mut [f32]) {
    let w = &lin.w;
    let q = acts.prepare(w.act_type(), x, n, w.row_len);
    w.matmul(bytes, q, n, out);
    if let Some(b) = &lin.bias {
        team::for_each_chunk_mut(&mut out[..n * w.n_rows], w.n_rows, |_, row| {
            row.iter_mut().zip(b).for_each(|(o, b)| *o += *b)
        });
    }
}

/// `dst[t] = rms_norm(src[t]) * w` for every row.
fn norm_rows(dst: &mut [f32], src: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    team::for_each_chunk_mut(dst, d, |t, h| {
        h.copy_from_slice(&src[t * d..][..d]);
        ops::rms_norm(h, w, eps);
    });
}

/// `x[t] += y[t]`, or `x[t] += rms_norm(y[t]) * w` with a post-norm (`y` is overwritten); rows
/// of `d`.
fn add_residual(x: &mut [f32], y: &mut [f32], d: usize, post_norm: Option<&[f32]>, eps: f32) {
    team::for_each_chunk_mut2(x, d, y, d, |_, x, y| {
        if let Some(w) = post_norm {
            ops::rms_norm(y, w, eps);
        }
        x.iter_mut().zip(y.iter()).for_each(|(a, b)| *a += *b);
    });
}

fn check_options(file: &GgufFile, cfg: &ModelConfig, o: &ModelOptions) -> Result<(), ModelError> {
    let bad = |what: String| Err(unsupported(file, what));
    if o.n_ctx == 0 || o.n_seq == 0 || o.max_batch_tokens == 0 || o.max_logit_rows == 0 {
        return bad(format!("model options must all be positive: {o:?}"));
    }
    if o.max_logit_rows > o.max_batch_tokens {
        return bad(format!(
            "max_logit_rows {} is over max_batch_tokens {}",
            o.max_logit_rows, o.max_batch_tokens
        ));
    }
    if o.n_ctx > cfg.n_ctx_train {
        return bad(format!(
            "context {} is over the model's trained context {}",
            o.n_ctx, cfg.n_ctx_train
        ));
    }
    Ok(())
}
