//! The KV cache: per layer, per sequence slot, the keys and values of past positions.
//!
//! Full-attention layers keep every position up to `n_ctx`. Sliding-window layers keep a ring of
//! `window + max_batch_tokens` positions: enough for the oldest token of a batch to still see its
//! whole window after the newest token of that batch has been written.
//! Keys and values are stored as f16, as llama.cpp stores them; attention follows llama.cpp's
//! CPU flash attention (f16 query, f16 running sum of values, online softmax in f32) so greedy
//! tokens match its tokens.

use rayon::prelude::*;

use crate::kernels::f16;

/// Widest attention head the stack buffers of [`attention`] hold.
pub const HEAD_DIM_MAX: usize = 1024;

/// One token of a batch: which sequence slot it belongs to and its position there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchToken {
    pub token: u32,
    pub pos: usize,
    pub seq: usize,
    /// Whether the caller wants logits for this token.
    pub logits: bool,
}

/// Keys and values of one layer for every sequence slot.
pub struct LayerCache {
    /// Positions held per sequence.
    capacity: usize,
    window: Option<usize>,
    k_width: usize,
    v_width: usize,
    /// f16 bits, `[n_seq][capacity][k_width]`.
    k: Vec<u16>,
    /// f16 bits, `[n_seq][capacity][v_width]`.
    v: Vec<u16>,
}

impl LayerCache {
    fn new(
        n_seq: usize,
        capacity: usize,
        window: Option<usize>,
        k_width: usize,
        v_width: usize,
    ) -> LayerCache {
        LayerCache {
            capacity,
            window,
            k_width,
            v_width,
            k: vec![0; n_seq * capacity * k_width],
            v: vec![0; n_seq * capacity * v_width],
        }
    }

    fn slot(&self, seq: usize, pos: usize) -> usize {
        seq * self.capacity + pos % self.capacity
    }

    /// Stores the key and value of `seq` at `pos`.
    pub fn write(&mut self, seq: usize, pos: usize, k: &[f32], v: &[f32]) {
        let s = self.slot(seq, pos);
        f16::from_f32_row(k, &mut self.k[s * self.k_width..(s + 1) * self.k_width]);
        f16::from_f32_row(v, &mut self.v[s * self.v_width..(s + 1) * self.v_width]);
    }

    /// First position a query at `pos` may attend to.
    fn first_visible(&self, pos: usize) -> usize {
        match self.window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        }
    }

    fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * std::mem::size_of::<u16>()
    }
}

/// The shape of the attention computation.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub head_dim_v: usize,
    /// Multiplies every score q·k (llama.cpp's `kq_scale`); 1.0 when the queries come
    /// pre-scaled, as Gemma 3's do.
    pub kq_scale: f32,
}

/// Causal attention for every token and head of a batch, parallel over (token, head) pairs.
/// `q` is `[n_tokens][n_head * head_dim]`, already normed, rotated and scaled; `out` is
/// `[n_tokens][n_head * head_dim_v]`. The keys and values of the batch must already be written.
/// Each (token, head) is computed alone, so a token's output never depends on the batch.
pub fn attention(
    cache: &LayerCache,
    shape: AttnShape,
    tokens: &[BatchToken],
    q: &[f32],
    out: &mut [f32],
) {
    let AttnShape {
        n_head,
        n_head_kv,
        head_dim,
        head_dim_v,
        kq_scale,
    } = shape;
    let group = n_head / n_head_kv;
    out[..tokens.len() * n_head * head_dim_v]
        .par_chunks_mut(head_dim_v)
        .enumerate()
        .for_each(|(i, o)| {
            let (t, h) = (i / n_head, i % n_head);
            let tok = tokens[t];
            let qh = &q[(t * n_head + h) * head_dim..][..head_dim];
            attend_one(
                cache,
                tok,
                h / group,
                qh,
                o,
                (head_dim, head_dim_v),
                kq_scale,
            );
        });
}

/// Online-softmax attention of one query head over its visible positions, in llama.cpp's order:
/// the query rounded to f16, `s = q·k`, and on a new maximum the f16 value sum rescaled.
fn attend_one(
    cache: &LayerCache,
    tok: BatchToken,
    kv_head: usize,
    q: &[f32],
    out: &mut [f32],
    (hd, hd_v): (usize, usize),
    kq_scale: f32,
) {
    let mut q16 = [0u16; HEAD_DIM_MAX];
    let mut acc16 = [0u16; HEAD_DIM_MAX];
    let (q16, acc16) = (&mut q16[..hd], &mut acc16[..hd_v]);
    f16::from_f32_row(q, q16);
    let mut max = f32::NEG_INFINITY;
    let mut sum = 0.0f32;
    for p in cache.first_visible(tok.pos)..=tok.pos {
        let s = cache.slot(tok.seq, p);
        let k = &cache.k[s * cache.k_width + kv_head * hd..][..hd];
        let score = f16::dot(k, q16) * kq_scale;
        let (mut ms, mut vs) = (1.0f32, 1.0f32);
        if score > max {
            let old = max;
            max = score;
            ms = (old - max).exp();
            f16::scale(acc16, ms);
        } else {
            vs = (score - max).exp();
        }
        let v = &cache.v[s * cache.v_width + kv_head * hd_v..][..hd_v];
        f16::mad(acc16, v, vs);
        sum = sum * ms + vs;
    }
    f16::to_f32_row(acc16, out);
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// The whole cache: one [`LayerCache`] per layer.
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    n_seq: usize,
    n_ctx: usize,
}

/// What a cache must hold, decided at load.
#[derive(Clone, Copy, Debug)]
pub struct KvShape {
    pub n_seq: usize,
    pub n_ctx: usize,
    pub max_batch_tokens: usize,
    pub k_width: usize,
    pub v_width: usize,
}

impl KvCache {
    /// A cache for `shape`; `windows[l]` is layer l's sliding window (`None` = full attention).
    pub fn new(shape: KvShape, windows: &[Option<usize>]) -> KvCache {
        let layers = windows
            .iter()
            .map(|&w| {
                let cap = match w {
                    Some(w) => (w + shape.max_batch_tokens).min(shape.n_ctx),
                    None => shape.n_ctx,
                };
                LayerCache::new(shape.n_seq, cap, w, shape.k_width, shape.v_width)
            })
            .collect();
        KvCache {
            layers,
            n_seq: shape.n_seq,
            n_ctx: shape.n_ctx,
        }
    }

    pub fn n_seq(&self) -> usize {
        self.n_seq
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Stores the batch's keys and values of layer `il`, then computes its attention
    /// (see [`attention`]). `k`/`v`/`q` are `[n_tokens][width]`.
    #[allow(clippy::too_many_arguments)]
    pub fn write_and_attend(
        &mut self,
        il: usize,
        shape: AttnShape,
        batch: &[BatchToken],
        k: &[f32],
        v: &[f32],
        q: &[f32],
        out: &mut [f32],
    ) {
        let cache = &mut self.layers[il];
        let (kw, vw) = (cache.k_width, cache.v_width);
        for (t, tok) in batch.iter().enumerate() {
            cache.write(tok.seq, tok.pos, &k[t * kw..][..kw], &v[t * vw..][..vw]);
        }
        attention(cache, shape, batch, q, out);
    }

    /// Bytes held by keys and values.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerCache::bytes).sum()
    }
}
