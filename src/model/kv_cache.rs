//! The KV cache: per layer, the keys and values of past positions, in fixed-size blocks from a
//! bounded pool.
//!
//! Layers are grouped by attention kind: full-attention layers form one group, sliding-window
//! layers (all sharing one window) another. Each group has a pool of blocks of
//! [`BLOCK_POSITIONS`] positions and, per sequence slot, a block table mapping position / block
//! size to a block. A block id means the same positions in every layer of its group.
//! A sliding group frees a sequence's blocks once they fall out of its window, so it never needs
//! more than `window + max_batch_tokens` positions per slot; it gets that many (or as many as the
//! full group, if fewer), so only the full-attention pool can run out. The engine reserves
//! positions ([`KvCache::reserve`]) before a step and releases a finished sequence's blocks
//! ([`KvCache::release`]); the forward pass reserves whatever a batch still lacks.
//!
//! Keys and values are stored as f16, as llama.cpp stores them; attention follows llama.cpp's
//! CPU flash attention (f16 query, f16 running sum of values, online softmax in f32) so greedy
//! tokens match its tokens.

use crate::kernels::f16;

/// Widest attention head the stack buffers of [`attention`] hold.
pub const HEAD_DIM_MAX: usize = 1024;

/// Positions per KV block.
pub const BLOCK_POSITIONS: usize = 16;

/// Marks a block-table entry with no block.
const NO_BLOCK: u32 = u32::MAX;

/// One token of a batch: which sequence slot it belongs to and its position there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchToken {
    pub token: u32,
    pub pos: usize,
    pub seq: usize,
    /// Whether the caller wants logits for this token.
    pub logits: bool,
}

/// The pool and the per-slot block tables of one group of layers.
struct Group {
    window: Option<usize>,
    n_blocks: usize,
    /// Free block ids; taken from the end.
    free: Vec<u32>,
    /// `[n_seq][ceil(n_ctx / BLOCK_POSITIONS)]` block ids or `NO_BLOCK`.
    tables: Vec<Vec<u32>>,
    /// Blocks each slot holds.
    held: Vec<usize>,
}

impl Group {
    fn new(window: Option<usize>, n_blocks: usize, n_seq: usize, n_ctx: usize) -> Group {
        Group {
            window,
            n_blocks,
            free: (0..n_blocks as u32).rev().collect(),
            tables: vec![vec![NO_BLOCK; n_ctx.div_ceil(BLOCK_POSITIONS)]; n_seq],
            held: vec![0; n_seq],
        }
    }

    /// First block a batch whose oldest token is at `first_pos` still reads.
    fn first_needed_block(&self, first_pos: usize) -> usize {
        match self.window {
            Some(w) => (first_pos + 1).saturating_sub(w) / BLOCK_POSITIONS,
            None => 0,
        }
    }

    /// New blocks needed so that `seq` holds positions `first_pos..end`.
    fn blocks_missing(&self, seq: usize, first_pos: usize, end: usize) -> usize {
        let from = self.first_needed_block(first_pos);
        let table = &self.tables[seq][..end.div_ceil(BLOCK_POSITIONS)];
        table[from.min(table.len())..]
            .iter()
            .filter(|&&b| b == NO_BLOCK)
            .count()
    }

    /// Drops the blocks of a sliding group that no query at or after `first_pos` can see.
    fn drop_out_of_window(&mut self, seq: usize, first_pos: usize) {
        let until = self.first_needed_block(first_pos);
        for b in &mut self.tables[seq][..until] {
            if *b != NO_BLOCK {
                self.free.push(*b);
                self.held[seq] -= 1;
                *b = NO_BLOCK;
            }
        }
    }

    fn reserve(&mut self, seq: usize, first_pos: usize, end: usize) -> bool {
        if self.window.is_some() {
            self.drop_out_of_window(seq, first_pos);
        }
        if self.blocks_missing(seq, first_pos, end) > self.free.len() {
            return false;
        }
        let from = self.first_needed_block(first_pos);
        let n = end.div_ceil(BLOCK_POSITIONS);
        for b in &mut self.tables[seq][from.min(n)..n] {
            if *b == NO_BLOCK {
                *b = self.free.pop().expect("counted above");
                self.held[seq] += 1;
            }
        }
        true
    }

    fn release(&mut self, seq: usize) {
        for b in &mut self.tables[seq] {
            if *b != NO_BLOCK {
                self.free.push(*b);
                *b = NO_BLOCK;
            }
        }
        self.held[seq] = 0;
    }

    /// Index of the row holding `pos` of `seq` in the group's layer arrays.
    #[inline]
    fn row(table: &[u32], pos: usize) -> usize {
        let b = table[pos / BLOCK_POSITIONS];
        debug_assert!(b != NO_BLOCK, "position {pos} has no KV block");
        b as usize * BLOCK_POSITIONS + pos % BLOCK_POSITIONS
    }
}

/// Keys and values of one layer, `[n_blocks * BLOCK_POSITIONS][width]` f16 bits.
pub struct LayerCache {
    group: usize,
    window: Option<usize>,
    k_width: usize,
    v_width: usize,
    k: Vec<u16>,
    v: Vec<u16>,
}

impl LayerCache {
    fn new(group: usize, window: Option<usize>, n_blocks: usize, kw: usize, vw: usize) -> Self {
        // Zeroed allocations are mapped lazily: untouched blocks cost no resident memory.
        let rows = n_blocks * BLOCK_POSITIONS;
        LayerCache {
            group,
            window,
            k_width: kw,
            v_width: vw,
            k: vec![0; rows * kw],
            v: vec![0; rows * vw],
        }
    }

    fn write(&mut self, row: usize, k: &[f32], v: &[f32]) {
        f16::from_f32_row(k, &mut self.k[row * self.k_width..][..self.k_width]);
        f16::from_f32_row(v, &mut self.v[row * self.v_width..][..self.v_width]);
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

    fn bytes_per_position(&self) -> usize {
        (self.k_width + self.v_width) * std::mem::size_of::<u16>()
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
fn attention(
    cache: &LayerCache,
    tables: &[Vec<u32>],
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
    let out = &mut out[..tokens.len() * n_head * head_dim_v];
    crate::team::for_each_chunk_mut(out, head_dim_v, |i, o| {
        let (t, h) = (i / n_head, i % n_head);
        let tok = tokens[t];
        let qh = &q[(t * n_head + h) * head_dim..][..head_dim];
        let table = &tables[tok.seq];
        attend_one(
            cache,
            table,
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
#[allow(clippy::too_many_arguments)]
fn attend_one(
    cache: &LayerCache,
    table: &[u32],
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
        let s = Group::row(table, p);
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

/// The whole cache: block pools per layer group and one [`LayerCache`] per layer.
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    groups: Vec<Group>,
    shape: KvShape,
    windows: Vec<Option<usize>>,
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

/// The pool has too few free blocks for a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the KV pool has {free} free blocks; {needed} are needed")]
pub struct KvFull {
    pub needed: usize,
    pub free: usize,
}

impl KvCache {
    /// A cache for `shape` with room for every slot's whole context; `windows[l]` is layer l's
    /// sliding window (`None` = full attention).
    pub fn new(shape: KvShape, windows: &[Option<usize>]) -> KvCache {
        Self::with_pool(shape, windows, shape.n_seq * shape.n_ctx)
    }

    /// A cache whose full-attention pool holds `pool_positions` positions (rounded up to whole
    /// blocks) shared by all slots.
    pub fn with_pool(shape: KvShape, windows: &[Option<usize>], pool_positions: usize) -> KvCache {
        let blocks_per_ctx = shape.n_ctx.div_ceil(BLOCK_POSITIONS);
        let full_blocks = pool_positions
            .div_ceil(BLOCK_POSITIONS)
            .clamp(1, shape.n_seq * blocks_per_ctx);
        let mut group_windows: Vec<Option<usize>> = Vec::new();
        for w in windows {
            if !group_windows.contains(w) {
                group_windows.push(*w);
            }
        }
        let groups: Vec<Group> = group_windows
            .iter()
            .map(|&w| {
                let n = match w {
                    // Blocks a slot can span: its window plus one batch, plus one partial block
                    // at each end.
                    Some(w) => {
                        let ring = (w + shape.max_batch_tokens).div_ceil(BLOCK_POSITIONS) + 1;
                        (shape.n_seq * ring.min(blocks_per_ctx)).min(full_blocks)
                    }
                    None => full_blocks,
                };
                Group::new(w, n, shape.n_seq, shape.n_ctx)
            })
            .collect();
        let layers = windows
            .iter()
            .map(|w| {
                let g = group_windows
                    .iter()
                    .position(|x| x == w)
                    .expect("grouped above");
                LayerCache::new(g, *w, groups[g].n_blocks, shape.k_width, shape.v_width)
            })
            .collect();
        KvCache {
            layers,
            groups,
            shape,
            windows: windows.to_vec(),
            n_seq: shape.n_seq,
            n_ctx: shape.n_ctx,
        }
    }

    /// An empty cache of the same shape whose full-attention pool holds `pool_positions`.
    pub fn with_pool_positions(&self, pool_positions: usize) -> KvCache {
        Self::with_pool(self.shape, &self.windows, pool_positions)
    }

    pub fn n_seq(&self) -> usize {
        self.n_seq
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Makes `seq` hold positions `first_pos..end` in every group (earlier positions of a
    /// sliding group may be dropped). All or nothing.
    pub fn reserve(&mut self, seq: usize, first_pos: usize, end: usize) -> Result<(), KvFull> {
        let end = end.min(self.n_ctx);
        if let Some(g) = self
            .groups
            .iter()
            .find(|g| g.window.is_none() && g.blocks_missing(seq, first_pos, end) > g.free.len())
        {
            return Err(KvFull {
                needed: g.blocks_missing(seq, first_pos, end),
                free: g.free.len(),
            });
        }
        for g in &mut self.groups {
            if !g.reserve(seq, first_pos, end) {
                // Sized never to run out (see the module comment).
                let (needed, free) = (g.blocks_missing(seq, first_pos, end), g.free.len());
                return Err(KvFull { needed, free });
            }
        }
        Ok(())
    }

    /// Reserves every position of a batch.
    pub fn reserve_batch(&mut self, batch: &[BatchToken]) -> Result<(), KvFull> {
        for seq in 0..self.n_seq {
            let mut span: Option<(usize, usize)> = None;
            for t in batch.iter().filter(|t| t.seq == seq) {
                let (lo, hi) = span.unwrap_or((t.pos, t.pos));
                span = Some((lo.min(t.pos), hi.max(t.pos)));
            }
            if let Some((lo, hi)) = span {
                self.reserve(seq, lo, hi + 1)?;
            }
        }
        Ok(())
    }

    /// Frees every block of `seq`.
    pub fn release(&mut self, seq: usize) {
        for g in &mut self.groups {
            g.release(seq);
        }
    }

    /// Full-attention blocks `seq` would still need to hold `first_pos..end`.
    pub fn blocks_missing(&self, seq: usize, first_pos: usize, end: usize) -> usize {
        let end = end.min(self.n_ctx);
        self.groups
            .iter()
            .filter(|g| g.window.is_none())
            .map(|g| g.blocks_missing(seq, first_pos, end))
            .max()
            .unwrap_or(0)
    }

    /// Free blocks of the full-attention pool (a model with only sliding layers: of its
    /// sliding pool).
    pub fn free_blocks(&self) -> usize {
        self.limiting_group().free.len()
    }

    /// Blocks of the full-attention pool.
    pub fn total_blocks(&self) -> usize {
        self.limiting_group().n_blocks
    }

    fn limiting_group(&self) -> &Group {
        self.groups
            .iter()
            .find(|g| g.window.is_none())
            .or(self.groups.first())
            .expect("a model has layers")
    }

    /// Bytes of keys and values that held blocks occupy.
    pub fn bytes_used(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let g = &self.groups[l.group];
                (g.n_blocks - g.free.len()) * BLOCK_POSITIONS * l.bytes_per_position()
            })
            .sum()
    }

    /// Bytes of K/V per position of a full-attention group (every layer of it).
    pub fn bytes_per_position(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| l.window.is_none())
            .map(LayerCache::bytes_per_position)
            .sum()
    }

    /// Stores the batch's keys and values of layer `il`, then computes its attention
    /// (see [`attention`]). `k`/`v`/`q` are `[n_tokens][width]`. The batch's positions must be
    /// reserved.
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
        let tables = &self.groups[cache.group].tables;
        let (kw, vw) = (cache.k_width, cache.v_width);
        for (t, tok) in batch.iter().enumerate() {
            let row = Group::row(&tables[tok.seq], tok.pos);
            cache.write(row, &k[t * kw..][..kw], &v[t * vw..][..vw]);
        }
        attention(cache, tables, shape, batch, q, out);
    }

    /// Bytes held by keys and values (the whole pool).
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerCache::bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(n_seq: usize, n_ctx: usize) -> KvShape {
        KvShape {
            n_seq,
            n_ctx,
            max_batch_tokens: 16,
            k_width: 4,
            v_width: 4,
        }
    }

    #[test]
    fn reservations_take_and_return_blocks() {
        let mut kv = KvCache::with_pool(shape(2, 256), &[None, None], 64);
        assert_eq!(kv.total_blocks(), 4);
        kv.reserve(0, 0, 17).unwrap();
        assert_eq!(kv.free_blocks(), 2);
        kv.reserve(0, 17, 18).unwrap();
        assert_eq!(kv.free_blocks(), 2, "position 17 is in a held block");
        assert_eq!(kv.blocks_missing(1, 0, 48), 3);
        assert_eq!(kv.reserve(1, 0, 48), Err(KvFull { needed: 3, free: 2 }));
        assert_eq!(kv.free_blocks(), 2, "a failed reservation takes nothing");
        kv.release(0);
        assert_eq!(kv.free_blocks(), 4);
        kv.reserve(1, 0, 48).unwrap();
        assert_eq!(kv.bytes_used(), 3 * BLOCK_POSITIONS * 2 * 16);
    }

    #[test]
    fn sliding_layers_drop_blocks_out_of_their_window() {
        let windows = [Some(32), None];
        let mut kv = KvCache::with_pool(shape(1, 1024), &windows, 1024);
        let sliding = &kv.groups[0];
        assert_eq!(sliding.window, Some(32));
        // One slot: its window plus a batch, plus a partial block at each end.
        assert_eq!(sliding.n_blocks, (32 + 16) / BLOCK_POSITIONS + 1);
        for pos in 0..600 {
            kv.reserve(0, pos, pos + 1).unwrap();
        }
        assert_eq!(kv.groups[0].held[0], 3, "positions 568..600 span 3 blocks");
        assert_eq!(kv.groups[1].held[0], 600usize.div_ceil(BLOCK_POSITIONS));
    }

    #[test]
    fn attention_reads_through_the_block_table() {
        // The same keys and values written through two different block layouts give the
        // same attention output.
        let sh = shape(2, 64);
        let attn = AttnShape {
            n_head: 1,
            n_head_kv: 1,
            head_dim: 4,
            head_dim_v: 4,
            kq_scale: 0.5,
        };
        let run = |kv: &mut KvCache, seq: usize| {
            let batch: Vec<BatchToken> = (0..40)
                .map(|pos| BatchToken {
                    token: 0,
                    pos,
                    seq,
                    logits: true,
                })
                .collect();
            let x: Vec<f32> = (0..40 * 4)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 4.0)
                .collect();
            kv.reserve_batch(&batch).unwrap();
            let mut out = vec![0.0; 40 * 4];
            kv.write_and_attend(0, attn, &batch, &x, &x, &x, &mut out);
            out
        };
        let mut a = KvCache::new(sh, &[None]);
        let mut b = KvCache::new(sh, &[None]);
        b.reserve(0, 0, 24).unwrap(); // seq 1 of `b` gets other blocks than seq 0 of `a`
        assert_eq!(run(&mut a, 0), run(&mut b, 1));
    }
}
