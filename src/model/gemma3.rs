//! Gemma 3 (text): sliding-window and global layers, per-head q/k norms, NEOX RoPE with a
//! per-layer base, embedding scale, GELU-tanh gated FFN, post-attention and post-FFN norms, tied
//! embeddings, optional final soft-capping. Every choice is read from the file's metadata.
//!
//! `forward` runs one batch of tokens from any mix of sequences: prefill chunks and decode steps
//! alike. Every per-token computation (norms, RoPE, attention) is done token by token and every
//! matmul is batch-invariant, so a token's logits do not depend on what else is in the batch.

use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use crate::gguf::GgufFile;
use crate::tensor::Tensor;

use super::config::{unsupported, ModelConfig};
use super::error::ModelError;
use super::kv_cache::{AttnShape, BatchToken, KvCache, KvShape};
use super::ops::{self, GeluTable};
use super::scratch::{Scratch, ScratchShape};

/// RoPE base of sliding-window layers: fixed by the architecture, not stored in the file.
const ROPE_BASE_SLIDING: f32 = 10_000.0;
/// Every sixth layer (5, 11, 17, …) is global when the model has a sliding window.
const SLIDING_PATTERN: usize = 6;

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

struct Layer {
    attn_norm: Vec<f32>,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    post_attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
    post_ffw_norm: Vec<f32>,
    /// `Some(w)` on sliding-window layers.
    window: Option<usize>,
}

impl Layer {
    /// Index into the per-token RoPE tables: 0 for global layers, 1 for sliding ones.
    fn rope_kind(&self) -> usize {
        usize::from(self.window.is_some())
    }
}

/// A loaded Gemma 3 model: its file, shape, weights and the limits it was loaded with.
pub struct Gemma3 {
    file: Arc<GgufFile>,
    cfg: ModelConfig,
    opts: ModelOptions,
    token_embd: Tensor,
    /// The output matrix: `output.weight`, or `token_embd` when the embeddings are tied.
    output: Tensor,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    gelu: GeluTable,
    /// 1/sqrt(head_dim), applied to queries after RoPE.
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

impl Gemma3 {
    pub fn load(path: &Path, opts: ModelOptions) -> Result<Gemma3, ModelError> {
        Self::from_file(Arc::new(GgufFile::open(path)?), opts)
    }

    pub fn from_file(file: Arc<GgufFile>, opts: ModelOptions) -> Result<Gemma3, ModelError> {
        // Probe the CPU now, not inside the first (allocation-free) forward pass.
        crate::kernels::init();
        let arch = file
            .metadata()
            .get_str("general.architecture")?
            .unwrap_or("(none)");
        if arch != "gemma3" {
            return Err(unsupported(
                &file,
                format!("architecture '{arch}' is not gemma3"),
            ));
        }
        let cfg = ModelConfig::from_gguf(&file, "gemma3")?;
        check_options(&file, &cfg, &opts)?;
        let f: &GgufFile = &file;
        let bytes = f.bytes();
        let vec_of = |name: &str, n: usize| Tensor::load(f, name, n, 1).map(|t| t.to_f32(bytes));
        let token_embd = Tensor::load(f, "token_embd.weight", cfg.n_embd, cfg.n_vocab)?;
        let output = Tensor::load_optional(f, "output.weight", cfg.n_embd, cfg.n_vocab)?
            .unwrap_or_else(|| token_embd.clone());
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for il in 0..cfg.n_layers {
            let t = |n: &str, cols: usize, rows: usize| {
                Tensor::load(f, &format!("blk.{il}.{n}.weight"), cols, rows)
            };
            let v = |n: &str, len: usize| vec_of(&format!("blk.{il}.{n}.weight"), len);
            let sliding = cfg
                .sliding_window
                .filter(|_| il % SLIDING_PATTERN < SLIDING_PATTERN - 1);
            layers.push(Layer {
                attn_norm: v("attn_norm", cfg.n_embd)?,
                wq: t("attn_q", cfg.n_embd, cfg.q_width())?,
                wk: t("attn_k", cfg.n_embd, cfg.k_width())?,
                wv: t("attn_v", cfg.n_embd, cfg.v_width())?,
                wo: t("attn_output", cfg.n_head * cfg.head_dim_v, cfg.n_embd)?,
                q_norm: v("attn_q_norm", cfg.head_dim)?,
                k_norm: v("attn_k_norm", cfg.head_dim)?,
                post_attn_norm: v("post_attention_norm", cfg.n_embd)?,
                ffn_norm: v("ffn_norm", cfg.n_embd)?,
                gate: t("ffn_gate", cfg.n_embd, cfg.n_ff)?,
                up: t("ffn_up", cfg.n_embd, cfg.n_ff)?,
                down: t("ffn_down", cfg.n_ff, cfg.n_embd)?,
                post_ffw_norm: v("post_ffw_norm", cfg.n_embd)?,
                window: sliding,
            });
        }
        let output_norm = vec_of("output_norm.weight", cfg.n_embd)?;
        let attn_scale = 1.0 / (cfg.head_dim as f32).sqrt();
        Ok(Gemma3 {
            file,
            cfg,
            opts,
            token_embd,
            output,
            output_norm,
            layers,
            gelu: GeluTable::new(),
            attn_scale,
        })
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
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]);
        per_layer.chain(std::iter::once(&self.output))
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

    /// x[t] = embedding row of the token, scaled by sqrt(n_embd).
    fn embed(&self, bytes: &[u8], batch: &[BatchToken], s: &mut Scratch) {
        let d = self.cfg.n_embd;
        let scale = (d as f32).sqrt();
        s.x[..batch.len() * d]
            .par_chunks_mut(d)
            .zip(batch)
            .for_each(|(x, t)| {
                self.token_embd.dequantize_row(bytes, t.token as usize, x);
                x.iter_mut().for_each(|v| *v *= scale);
            });
    }

    /// cos/sin of every token's position, for global (0) and sliding (1) layers.
    fn rope_tables(&self, batch: &[BatchToken], s: &mut Scratch) {
        let c = &self.cfg;
        let half = c.n_rot / 2;
        let kinds = [(c.rope_base, c.rope_freq_scale), (ROPE_BASE_SLIDING, 1.0)];
        for (k, (base, scale)) in kinds.into_iter().enumerate() {
            for (t, tok) in batch.iter().enumerate() {
                let (cos, sin) = (
                    &mut s.rope_cos[k][t * half..][..half],
                    &mut s.rope_sin[k][t * half..][..half],
                );
                ops::rope_angles(tok.pos, base, scale, c.n_rot, cos, sin);
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
        let kind = l.rope_kind();
        let (cos, sin) = (&s.rope_cos[kind], &s.rope_sin[kind]);
        let hd = c.head_dim;
        let prep = |heads: &mut [f32], t: usize, norm: &[f32], scale: f32| {
            for head in heads.chunks_mut(hd) {
                ops::rms_norm(head, norm, c.rms_eps);
                ops::rope_neox(
                    &mut head[..c.n_rot],
                    &cos[t * half..][..half],
                    &sin[t * half..][..half],
                );
                if scale != 1.0 {
                    head.iter_mut().for_each(|v| *v *= scale);
                }
            }
        };
        s.q[..n * c.q_width()]
            .par_chunks_mut(c.q_width())
            .enumerate()
            .for_each(|(t, q)| prep(q, t, &l.q_norm, self.attn_scale));
        s.k[..n * c.k_width()]
            .par_chunks_mut(c.k_width())
            .enumerate()
            .for_each(|(t, k)| prep(k, t, &l.k_norm, 1.0));
        let shape = AttnShape {
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: hd,
            head_dim_v: c.head_dim_v,
            kq_scale: 1.0,
        };
        kv.write_and_attend(il, shape, batch, &s.k, &s.v, &s.q, &mut s.attn);
        s.acts.invalidate();
        matmul(bytes, &l.wo, &mut s.acts, &s.attn, n, &mut s.proj);
        add_normed_rows(
            &mut s.x[..n * d],
            &mut s.proj[..n * d],
            &l.post_attn_norm,
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
        let gelu = &self.gelu;
        s.gate[..n * ff]
            .par_chunks_mut(ff)
            .zip(s.up[..n * ff].par_chunks(ff))
            .for_each(|(g, u)| gelu.geglu(g, u));
        s.acts.invalidate();
        matmul(bytes, &l.down, &mut s.acts, &s.gate, n, &mut s.proj);
        add_normed_rows(
            &mut s.x[..n * d],
            &mut s.proj[..n * d],
            &l.post_ffw_norm,
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

/// Quantizes the first `n` rows of `x` for `w` (reusing a quantization already held) and
/// multiplies: `out[..n][..w.n_rows]`.
fn matmul(
    bytes: &[u8],
    w: &Tensor,
    acts: &mut super::scratch::QuantActs,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    let q = acts.prepare(w.act_type(), x, n, w.row_len);
    w.matmul(bytes, q, n, out);
}

/// `dst[t] = rms_norm(src[t]) * w` for every row.
fn norm_rows(dst: &mut [f32], src: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    dst.par_chunks_mut(d)
        .zip(src.par_chunks(d))
        .for_each(|(h, x)| {
            h.copy_from_slice(x);
            ops::rms_norm(h, w, eps);
        });
}

/// `x[t] += rms_norm(y[t]) * w` for every row (`y` is overwritten).
fn add_normed_rows(x: &mut [f32], y: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    x.par_chunks_mut(d)
        .zip(y.par_chunks_mut(d))
        .for_each(|(x, y)| {
            ops::rms_norm(y, w, eps);
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
