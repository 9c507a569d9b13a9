//! Scratch buffers of the forward pass, sized once at load for the largest batch, so a forward
//! pass allocates nothing on the heap.

use crate::kernels::{self, GgmlType};

/// Activations quantized to one activation type, reused across the matmuls that share an input.
pub struct QuantActs {
    buf: Vec<u8>,
    /// The type `buf` currently holds, or `None` when the input changed since.
    ty: Option<GgmlType>,
}

impl QuantActs {
    pub fn new(bytes_max: usize) -> QuantActs {
        QuantActs {
            buf: vec![0; bytes_max],
            ty: None,
        }
    }

    /// Marks the held quantization stale (its input is about to change).
    pub fn invalidate(&mut self) {
        self.ty = None;
    }

    /// Quantizes `n_rows` rows of `x` (each `row_len` long) to `ty` unless already held.
    pub fn prepare(&mut self, ty: GgmlType, x: &[f32], n_rows: usize, row_len: usize) -> &[u8] {
        let row_bytes = ty
            .row_bytes(row_len)
            .expect("row length is a whole number of blocks (checked at load)");
        let out = &mut self.buf[..n_rows * row_bytes];
        if self.ty != Some(ty) {
            crate::team::for_each_chunk_mut(out, row_bytes, |t, dst| {
                kernels::quantize_row(ty, &x[t * row_len..][..row_len], dst)
            });
            self.ty = Some(ty);
        }
        &self.buf[..n_rows * row_bytes]
    }
}

/// Every buffer a forward pass writes, `[max_batch_tokens][width]` each.
pub struct Scratch {
    /// Residual stream.
    pub x: Vec<f32>,
    /// Normed input of a sub-block.
    pub h: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// Attention output (all heads).
    pub attn: Vec<f32>,
    /// Output of a projection back to the model width.
    pub proj: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    /// RoPE cos/sin per token: `[max_batch_tokens][n_rot / 2]` for each RoPE frequency set
    /// of the model (e.g. Gemma 3's global and sliding layers).
    pub rope_cos: Vec<Vec<f32>>,
    pub rope_sin: Vec<Vec<f32>>,
    /// Quantized activations for the current matmul input.
    pub acts: QuantActs,
    /// Indices (in the batch) of the tokens that want logits.
    pub logit_rows: Vec<usize>,
    /// Final normed hidden states of those tokens, `[max_logit_rows][n_embd]`.
    pub out_h: Vec<f32>,
    /// Logits, `[max_logit_rows][n_vocab]`.
    pub logits: Vec<f32>,
}

/// Widths that size the scratch buffers.
pub struct ScratchShape {
    pub max_batch_tokens: usize,
    pub max_logit_rows: usize,
    pub n_embd: usize,
    pub q_width: usize,
    pub k_width: usize,
    pub v_width: usize,
    /// Width of the attention output of all heads (`n_head * head_dim_v`).
    pub attn_width: usize,
    pub n_ff: usize,
    pub n_rot: usize,
    /// Distinct RoPE frequency sets among the layers.
    pub n_rope_variants: usize,
    pub n_vocab: usize,
    /// Largest quantized activation row of any matmul input.
    pub act_row_bytes_max: usize,
}

impl Scratch {
    pub fn new(s: &ScratchShape) -> Scratch {
        let t = s.max_batch_tokens;
        Scratch {
            x: vec![0.0; t * s.n_embd],
            h: vec![0.0; t * s.n_embd],
            q: vec![0.0; t * s.q_width],
            k: vec![0.0; t * s.k_width],
            v: vec![0.0; t * s.v_width],
            attn: vec![0.0; t * s.attn_width],
            proj: vec![0.0; t * s.n_embd],
            gate: vec![0.0; t * s.n_ff],
            up: vec![0.0; t * s.n_ff],
            rope_cos: vec![vec![0.0; t * s.n_rot / 2]; s.n_rope_variants],
            rope_sin: vec![vec![0.0; t * s.n_rot / 2]; s.n_rope_variants],
            acts: QuantActs::new(t.max(s.max_logit_rows) * s.act_row_bytes_max),
            logit_rows: Vec::with_capacity(s.max_logit_rows),
            out_h: vec![0.0; s.max_logit_rows * s.n_embd],
            logits: vec![0.0; s.max_logit_rows * s.n_vocab],
        }
    }

    /// Bytes held by the scratch buffers.
    pub fn bytes(&self) -> usize {
        let f = [
            &self.x, &self.h, &self.q, &self.k, &self.v, &self.attn, &self.proj, &self.gate,
            &self.up,
        ];
        let rope: usize = self
            .rope_cos
            .iter()
            .chain(&self.rope_sin)
            .map(Vec::len)
            .sum();
        (f.iter().map(|v| v.len()).sum::<usize>() + rope + self.out_h.len() + self.logits.len()) * 4
            + self.acts.buf.len()
    }
}
