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
//! With the prefix cache on ([`KvCache::set_prefix_cache`]), a whole block can be named by a
//! [`BlockKey`]: a hash chained over the model, the previous block's key and the block's token
//! ids. Named blocks outlive their sequence: blocks are reference-counted (a block table entry
//! is one reference), a named block no slot uses is *idle* and sits in an LRU, and a block is
//! evicted from it (its name forgotten) only when a reservation finds no free block. A new
//! sequence attaches the longest named chain of its prompt ([`KvCache::cached_prefix`],
//! [`KvCache::attach`]) instead of computing it. Attached blocks are only read: a sequence
//! writes positions past its attached prefix, which lie in blocks of its own. The cache lives
//! in the pool's blocks: an idle block is a free block that still remembers its contents.
//! A sliding group names its blocks with the same keys (a position's K/V depend on every
//! earlier token, in every layer), and a hit needs the blocks of the window before the hit
//! point in every sliding group too, so it restores exactly what prefilling would have left.
//!
//! Keys and values are stored as f16, as llama.cpp stores them; attention follows llama.cpp's
//! CPU flash attention (f16 query, f16 running sum of values, online softmax in f32) so greedy
//! tokens match its tokens.

use std::collections::HashMap;
use std::hash::Hasher;
use std::num::NonZeroUsize;

use lru::LruCache;

use crate::kernels::f16;

/// Widest attention head the stack buffers of [`attention`] hold.
pub const HEAD_DIM_MAX: usize = 1024;

/// Positions per KV block.
pub const BLOCK_POSITIONS: usize = 16;

/// Marks a block-table entry with no block.
const NO_BLOCK: u32 = u32::MAX;

/// The name of a whole block of positions: see [`block_key`].
pub type BlockKey = u128;

/// 128 bits of SipHash-1-3 (two fixed-key passes): in-process names, never stored.
fn hash128(parts: &[&[u8]]) -> BlockKey {
    let half = |salt: u8| {
        #[allow(deprecated)] // SipHasher13's successor in std is DefaultHasher: same function.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write_u8(salt);
        for p in parts {
            h.write_usize(p.len());
            h.write(p);
        }
        h.finish()
    };
    (u128::from(half(0x5a)) << 64) | u128::from(half(0xa5))
}

/// The key a model's chains start from: `identity` names the model (its file and whatever
/// else changes its keys and values).
pub fn chain_root(identity: &[u8]) -> BlockKey {
    hash128(&[b"ryzanstein-kv-chain", identity])
}

/// The key of a block holding `tokens` ([`BLOCK_POSITIONS`] of them) after the block named
/// `parent` (or after [`chain_root`] for a sequence's first block). Equal keys mean equal
/// token prefixes, so equal keys and values.
pub fn block_key(parent: BlockKey, tokens: &[u32]) -> BlockKey {
    debug_assert_eq!(tokens.len(), BLOCK_POSITIONS);
    let mut bytes = [0u8; 4 * BLOCK_POSITIONS];
    for (b, t) in bytes.chunks_exact_mut(4).zip(tokens) {
        b.copy_from_slice(&t.to_le_bytes());
    }
    hash128(&[&parent.to_le_bytes(), &bytes[..4 * tokens.len()]])
}

/// The name of a sequence's last, partial block holding `tokens` (fewer than
/// [`BLOCK_POSITIONS`]) after the block named `parent`: kept when its sequence ends, so that a
/// prompt continuing those tokens (a chat's next turn) can copy them ([`KvCache::copy_partial`]).
/// A name space of its own: never equal to a [`block_key`].
pub fn tail_key(parent: BlockKey, tokens: &[u32]) -> BlockKey {
    debug_assert!(tokens.len() < BLOCK_POSITIONS);
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    hash128(&[b"tail", &parent.to_le_bytes(), &bytes])
}

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
    /// Blocks no slot uses and no key names; taken from the end.
    free: Vec<u32>,
    /// `[n_seq][ceil(n_ctx / BLOCK_POSITIONS)]` block ids or `NO_BLOCK`.
    tables: Vec<Vec<u32>>,
    /// Blocks each slot holds.
    held: Vec<usize>,
    /// Block-table entries that point at each block.
    refs: Vec<u32>,
    /// Each block's key, while the prefix cache names it.
    key_of: Vec<Option<BlockKey>>,
    /// Named blocks, in use or idle.
    by_key: HashMap<BlockKey, u32>,
    /// Named blocks no slot uses, least recently used first: taken (and forgotten) only when
    /// `free` is empty.
    idle: LruCache<u32, ()>,
    /// Named blocks taken from `idle` for other contents.
    evictions: u64,
}

impl Group {
    fn new(window: Option<usize>, n_blocks: usize, n_seq: usize, n_ctx: usize) -> Group {
        Group {
            window,
            n_blocks,
            free: (0..n_blocks as u32).rev().collect(),
            tables: vec![vec![NO_BLOCK; n_ctx.div_ceil(BLOCK_POSITIONS)]; n_seq],
            held: vec![0; n_seq],
            refs: vec![0; n_blocks],
            key_of: vec![None; n_blocks],
            by_key: HashMap::new(),
            idle: LruCache::new(NonZeroUsize::new(n_blocks.max(1)).expect("at least 1")),
            evictions: 0,
        }
    }

    /// Blocks a reservation may take: free ones, then idle named ones.
    fn available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// A block for new contents: a free one, else the least recently used idle one (evicted).
    fn take(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (b, ()) = self.idle.pop_lru()?;
                let key = self.key_of[b as usize]
                    .take()
                    .expect("idle blocks are named");
                self.by_key.remove(&key);
                self.evictions += 1;
                b
            }
        };
        debug_assert_eq!(self.refs[b as usize], 0);
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Drops one reference to `b`; unused, it goes idle if named, else back to `free`.
    fn unref(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        debug_assert!(*r > 0, "block {b} has no reference to drop");
        *r -= 1;
        if *r == 0 {
            if self.key_of[b as usize].is_some() {
                self.idle.put(b, ());
            } else {
                self.free.push(b);
            }
        }
    }

    /// Points entry `i` of `seq`'s table at the named block `b`.
    fn attach(&mut self, seq: usize, i: usize, b: u32) {
        debug_assert_eq!(self.tables[seq][i], NO_BLOCK);
        if self.refs[b as usize] == 0 {
            self.idle.pop(&b);
        }
        self.refs[b as usize] += 1;
        self.tables[seq][i] = b;
        self.held[seq] += 1;
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
        for i in 0..until.min(self.tables[seq].len()) {
            let b = std::mem::replace(&mut self.tables[seq][i], NO_BLOCK);
            if b != NO_BLOCK {
                self.unref(b);
                self.held[seq] -= 1;
            }
        }
    }

    fn reserve(&mut self, seq: usize, first_pos: usize, end: usize) -> bool {
        if self.window.is_some() {
            self.drop_out_of_window(seq, first_pos);
        }
        if self.blocks_missing(seq, first_pos, end) > self.available() {
            return false;
        }
        let from = self.first_needed_block(first_pos);
        let n = end.div_ceil(BLOCK_POSITIONS);
        for i in from.min(n)..n {
            if self.tables[seq][i] == NO_BLOCK {
                self.tables[seq][i] = self.take().expect("counted above");
                self.held[seq] += 1;
            }
        }
        true
    }

    /// Frees every block of `seq`, the last first: named ones go idle with the chain's head
    /// most recently used, so an eviction takes a chain's tail before its head.
    fn release(&mut self, seq: usize) {
        for i in (0..self.tables[seq].len()).rev() {
            let b = std::mem::replace(&mut self.tables[seq][i], NO_BLOCK);
            if b != NO_BLOCK {
                self.unref(b);
            }
        }
        self.held[seq] = 0;
    }

    /// Names block `i` of `seq` (whole and written) `key`, unless it is named already or
    /// another block holds that key (the same prefix computed twice: this copy stays
    /// unnamed and is freed with its sequence).
    fn register(&mut self, seq: usize, i: usize, key: BlockKey) -> bool {
        let b = self.tables[seq][i];
        if b == NO_BLOCK || self.key_of[b as usize].is_some() || self.by_key.contains_key(&key) {
            return false;
        }
        self.key_of[b as usize] = Some(key);
        self.by_key.insert(key, b);
        true
    }

    /// Whether `seq` could attach `keys[from..k]` here (it holds its blocks before `from`):
    /// a full group needs all of them, a sliding group the ones a query at `k` blocks sees.
    fn can_attach(&self, seq: usize, keys: &[BlockKey], from: usize, k: usize) -> bool {
        let lo = self.first_needed_block(k * BLOCK_POSITIONS);
        (lo..k).all(|i| {
            if i < from {
                self.tables[seq][i] != NO_BLOCK
            } else {
                self.by_key.contains_key(&keys[i])
            }
        })
    }

    /// Attaches `keys[from..k]` (checked by [`Group::can_attach`]) to `seq`; a sliding group
    /// drops what a query at `k` blocks no longer sees.
    fn attach_range(&mut self, seq: usize, keys: &[BlockKey], from: usize, k: usize) {
        let first_pos = k * BLOCK_POSITIONS;
        if self.window.is_some() {
            self.drop_out_of_window(seq, first_pos);
        }
        for (i, key) in keys.iter().enumerate().take(k).skip(from) {
            if i < self.first_needed_block(first_pos) {
                continue;
            }
            let b = self.by_key[key];
            self.attach(seq, i, b);
        }
    }

    /// Gives `seq` a new block at entry `i` for a copy of the named block `src` (whose id it
    /// returns with the new one's), or `None` (nothing changed) without room. `src` is kept out
    /// of reach of the eviction while the new block is taken, and ends most recently used.
    fn take_for_copy(&mut self, seq: usize, i: usize, src: u32) -> Option<(u32, u32)> {
        debug_assert_eq!(self.tables[seq][i], NO_BLOCK);
        if self.refs[src as usize] == 0 {
            self.idle.pop(&src);
        }
        self.refs[src as usize] += 1;
        let dst = self.take();
        self.unref(src);
        let dst = dst?;
        self.tables[seq][i] = dst;
        self.held[seq] += 1;
        Some((src, dst))
    }

    /// Checks that every block is in exactly one of: used (its reference count equals the
    /// table entries pointing at it), idle (named, unused) or free (unnamed, unused).
    fn audit(&self) -> Result<(), String> {
        let mut refs = vec![0u32; self.n_blocks];
        for (seq, t) in self.tables.iter().enumerate() {
            let held = t.iter().filter(|&&b| b != NO_BLOCK).count();
            if held != self.held[seq] {
                return Err(format!(
                    "slot {seq} holds {held} blocks, counted {}",
                    self.held[seq]
                ));
            }
            for &b in t.iter().filter(|&&b| b != NO_BLOCK) {
                refs[b as usize] += 1;
            }
        }
        if refs != self.refs {
            return Err("reference counts differ from the block tables".into());
        }
        let mut in_free = vec![false; self.n_blocks];
        for &b in &self.free {
            if in_free[b as usize] || refs[b as usize] != 0 || self.key_of[b as usize].is_some() {
                return Err(format!("free block {b} is used, named or listed twice"));
            }
            in_free[b as usize] = true;
        }
        for (&b, ()) in self.idle.iter() {
            if refs[b as usize] != 0 || self.key_of[b as usize].is_none() || in_free[b as usize] {
                return Err(format!("idle block {b} is used, unnamed or free"));
            }
        }
        for (b, key) in self.key_of.iter().enumerate() {
            if let Some(k) = key {
                if self.by_key.get(k) != Some(&(b as u32)) {
                    return Err(format!("block {b}'s key is not indexed to it"));
                }
            }
        }
        let used = refs.iter().filter(|&&r| r > 0).count();
        if used + self.free.len() + self.idle.len() != self.n_blocks
            || self.by_key.len() != self.key_of.iter().flatten().count()
        {
            return Err("blocks are lost or counted twice".into());
        }
        Ok(())
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
    /// Whether [`KvCache::register`] names blocks (off: nothing is ever cached).
    prefix_cache: bool,
}

/// What the prefix cache holds, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Named blocks of the full-attention pool (in use or idle).
    pub cached_blocks: usize,
    /// Bytes of K/V that named blocks hold, every layer of every group.
    pub cached_bytes: usize,
    /// Named blocks no sequence uses (reclaimable at once), full-attention pool.
    pub idle_blocks: usize,
    /// Named blocks evicted for other contents, every group.
    pub evictions: u64,
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
            prefix_cache: false,
        }
    }

    /// Turns the prefix cache on or off (off by default: blocks are never named). Turning it
    /// off forgets nothing already named; use it on an empty cache.
    pub fn set_prefix_cache(&mut self, on: bool) {
        self.prefix_cache = on;
    }

    pub fn prefix_cache(&self) -> bool {
        self.prefix_cache
    }

    /// An empty cache of the same shape whose full-attention pool holds `pool_positions`.
    pub fn with_pool_positions(&self, pool_positions: usize) -> KvCache {
        let mut kv = Self::with_pool(self.shape, &self.windows, pool_positions);
        kv.prefix_cache = self.prefix_cache;
        kv
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
            .find(|g| g.window.is_none() && g.blocks_missing(seq, first_pos, end) > g.available())
        {
            return Err(KvFull {
                needed: g.blocks_missing(seq, first_pos, end),
                free: g.available(),
            });
        }
        for g in &mut self.groups {
            if !g.reserve(seq, first_pos, end) {
                // Sized never to run out (see the module comment).
                let (needed, free) = (g.blocks_missing(seq, first_pos, end), g.available());
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

    /// Blocks of the full-attention pool a reservation may take (a model with only sliding
    /// layers: of its sliding pool): free ones and idle cached ones.
    pub fn free_blocks(&self) -> usize {
        self.limiting_group().available()
    }

    /// How many blocks of `keys` (block `i` of a sequence is `keys[i]`) `seq`, which holds its
    /// blocks before `from`, can attach: `k >= from` such that blocks `from..k` are cached in
    /// every full-attention group and the blocks a query at `k` blocks sees in every sliding
    /// group. `from` when the cache is off or holds nothing more.
    pub fn cached_prefix(&self, seq: usize, keys: &[BlockKey], from: usize) -> usize {
        if !self.prefix_cache || from >= keys.len() {
            return from;
        }
        let full = self.groups.iter().filter(|g| g.window.is_none());
        let mut k = from;
        while k < keys.len() && full.clone().all(|g| g.by_key.contains_key(&keys[k])) {
            k += 1;
        }
        let sliding = || self.groups.iter().filter(|g| g.window.is_some());
        while k > from && !sliding().all(|g| g.can_attach(seq, keys, from, k)) {
            k -= 1;
        }
        k
    }

    /// Full-attention blocks that attaching `keys[from..k]` takes out of the idle set (so a
    /// reservation can no longer take them).
    pub fn idle_among(&self, keys: &[BlockKey], from: usize, k: usize) -> usize {
        let g = self.limiting_group();
        keys[from..k]
            .iter()
            .filter(|key| g.by_key.get(key).is_some_and(|&b| g.refs[b as usize] == 0))
            .count()
    }

    /// Points blocks `from..k` of `seq` at the cached blocks named `keys[from..k]`, as
    /// [`KvCache::cached_prefix`] allowed: `seq` then holds positions `..k * BLOCK_POSITIONS`
    /// as if it had computed them.
    pub fn attach(&mut self, seq: usize, keys: &[BlockKey], from: usize, k: usize) {
        debug_assert!(self.cached_prefix(seq, keys, from) >= k);
        for g in &mut self.groups {
            g.attach_range(seq, keys, from, k);
        }
    }

    /// Names block `i` of `seq` `key` in every group that holds it: the block must be whole
    /// and written. Returns whether the full-attention pool cached it (false: the cache is
    /// off, or another block holds that key already).
    pub fn register(&mut self, seq: usize, i: usize, key: BlockKey) -> bool {
        if !self.prefix_cache {
            return false;
        }
        let mut cached = false;
        for g in &mut self.groups {
            let now = g.register(seq, i, key);
            cached |= now && g.window.is_none();
        }
        cached
    }

    /// Whether a block named `key` is cached (in every group).
    pub fn is_cached(&self, key: &BlockKey) -> bool {
        self.groups.iter().all(|g| g.by_key.contains_key(key))
    }

    /// Gives `seq` (which holds blocks `..i`, as a hit leaves them) a block of its own at `i`
    /// holding a copy of positions `0..n` of the cached block named `src` (a [`tail_key`]), in
    /// every group: `seq` then holds positions `..i * BLOCK_POSITIONS + n` as if it had
    /// computed them. False, and nothing changed, if a group lacks `src` or has no room.
    pub fn copy_partial(&mut self, seq: usize, i: usize, src: BlockKey, n: usize) -> bool {
        let ok = self.prefix_cache
            && n < BLOCK_POSITIONS
            && self.groups.iter().all(|g| {
                g.by_key.contains_key(&src)
                    && g.tables[seq][i] == NO_BLOCK
                    && g.available() > usize::from(g.refs[g.by_key[&src] as usize] == 0)
            });
        if !ok {
            return false;
        }
        for gi in 0..self.groups.len() {
            let g = &mut self.groups[gi];
            let src_b = g.by_key[&src];
            let (src_b, dst) = g.take_for_copy(seq, i, src_b).expect("room checked above");
            for l in self.layers.iter_mut().filter(|l| l.group == gi) {
                let (from, to) = (
                    src_b as usize * BLOCK_POSITIONS,
                    dst as usize * BLOCK_POSITIONS,
                );
                l.k.copy_within(from * l.k_width..(from + n) * l.k_width, to * l.k_width);
                l.v.copy_within(from * l.v_width..(from + n) * l.v_width, to * l.v_width);
            }
        }
        true
    }

    /// What the prefix cache holds.
    pub fn prefix_stats(&self) -> PrefixCacheStats {
        let g = self.limiting_group();
        PrefixCacheStats {
            cached_blocks: g.by_key.len(),
            cached_bytes: self
                .layers
                .iter()
                .map(|l| {
                    self.groups[l.group].by_key.len() * BLOCK_POSITIONS * l.bytes_per_position()
                })
                .sum(),
            idle_blocks: g.idle.len(),
            evictions: self.groups.iter().map(|g| g.evictions).sum(),
        }
    }

    /// Checks the pools' bookkeeping (every block used, idle or free, exactly once; reference
    /// counts equal to the tables): for tests and debug builds.
    pub fn audit(&self) -> Result<(), String> {
        self.groups.iter().try_for_each(Group::audit)
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

    /// Bytes of keys and values that blocks in use occupy (idle cached blocks not counted).
    pub fn bytes_used(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let g = &self.groups[l.group];
                (g.n_blocks - g.available()) * BLOCK_POSITIONS * l.bytes_per_position()
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
        let group = &self.groups[cache.group];
        let tables = &group.tables;
        let (kw, vw) = (cache.k_width, cache.v_width);
        for (t, tok) in batch.iter().enumerate() {
            let row = Group::row(&tables[tok.seq], tok.pos);
            let b = row / BLOCK_POSITIONS;
            // A shared or named block is never written: it holds someone's whole prefix.
            debug_assert!(
                group.refs[b] == 1 && group.key_of[b].is_none(),
                "write to block {b}"
            );
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

    /// Keys of `n` whole blocks of `tokens`.
    fn keys_of(tokens: &[u32]) -> Vec<BlockKey> {
        let mut keys: Vec<BlockKey> = Vec::new();
        for (i, b) in tokens.chunks_exact(BLOCK_POSITIONS).enumerate() {
            let parent = if i == 0 {
                chain_root(b"test")
            } else {
                keys[i - 1]
            };
            keys.push(block_key(parent, b));
        }
        keys
    }

    fn cache_on(kv: KvCache) -> KvCache {
        let mut kv = kv;
        kv.set_prefix_cache(true);
        kv
    }

    /// Reserves and names `n_blocks` whole blocks for `seq`, as the engine does after a step.
    fn fill(kv: &mut KvCache, seq: usize, keys: &[BlockKey], from: usize, n_blocks: usize) {
        for (i, &key) in keys.iter().enumerate().take(n_blocks).skip(from) {
            kv.reserve(seq, i * BLOCK_POSITIONS, (i + 1) * BLOCK_POSITIONS)
                .unwrap();
            kv.register(seq, i, key);
        }
        kv.audit().unwrap();
    }

    #[test]
    fn block_keys_chain_the_whole_prefix() {
        let a: Vec<u32> = (0..48).collect();
        let mut b = a.clone();
        b[3] = 99; // differs in block 0 only
        let (ka, kb) = (keys_of(&a), keys_of(&b));
        assert_eq!(ka.len(), 3);
        assert!(
            ka.iter().zip(&kb).all(|(x, y)| x != y),
            "a change names every later block anew"
        );
        assert_eq!(keys_of(&a[..32]), ka[..2], "same prefix, same keys");
        assert_ne!(chain_root(b"model a"), chain_root(b"model b"));
    }

    #[test]
    fn named_blocks_outlive_their_sequence_and_are_shared() {
        let mut kv = cache_on(KvCache::with_pool(
            shape(3, 256),
            &[None],
            8 * BLOCK_POSITIONS,
        ));
        let keys = keys_of(&(0..64).collect::<Vec<u32>>());
        fill(&mut kv, 0, &keys, 0, 4);
        assert_eq!(kv.prefix_stats().cached_blocks, 4);
        kv.release(0);
        kv.audit().unwrap();
        assert_eq!(kv.free_blocks(), 8, "idle cached blocks can still be taken");
        assert_eq!(kv.bytes_used(), 0, "idle blocks are not in use");
        assert_eq!(kv.prefix_stats().idle_blocks, 4);
        // Two slots attach the same three blocks: shared, not copied.
        assert_eq!(kv.cached_prefix(1, &keys[..3], 0), 3);
        assert_eq!(kv.idle_among(&keys, 0, 3), 3);
        kv.attach(1, &keys, 0, 3);
        kv.attach(2, &keys, 0, 3);
        kv.audit().unwrap();
        assert_eq!(kv.idle_among(&keys, 0, 3), 0);
        assert_eq!(kv.prefix_stats().idle_blocks, 1);
        assert_eq!(kv.free_blocks(), 5);
        // Each writes its own next block.
        kv.reserve(1, 48, 49).unwrap();
        kv.reserve(2, 48, 49).unwrap();
        kv.audit().unwrap();
        assert_eq!(kv.free_blocks(), 3, "block 3's idle copy was free to take");
        // A pool that must evict takes idle blocks only, never one in use.
        kv.reserve(0, 0, 3 * BLOCK_POSITIONS).unwrap();
        kv.audit().unwrap();
        assert_eq!(kv.free_blocks(), 0);
        assert!(
            kv.reserve(0, 48, 64).is_err(),
            "blocks in use are never evicted"
        );
        assert_eq!(
            kv.cached_prefix(0, &keys[..3], 0),
            3,
            "the shared chain is intact"
        );
        kv.audit().unwrap();
    }

    #[test]
    fn eviction_takes_a_chains_tail_before_its_head() {
        let mut kv = cache_on(KvCache::with_pool(
            shape(2, 256),
            &[None],
            4 * BLOCK_POSITIONS,
        ));
        let keys = keys_of(&(0..64).collect::<Vec<u32>>());
        fill(&mut kv, 0, &keys, 0, 4);
        kv.release(0);
        // Another sequence needs two blocks: the chain keeps its first two.
        kv.reserve(1, 0, 32).unwrap();
        kv.audit().unwrap();
        assert_eq!(kv.prefix_stats().evictions, 2);
        assert_eq!(kv.cached_prefix(0, &keys, 0), 2);
    }

    #[test]
    fn duplicate_blocks_stay_unnamed_and_are_freed() {
        let mut kv = cache_on(KvCache::with_pool(
            shape(2, 256),
            &[None],
            8 * BLOCK_POSITIONS,
        ));
        let keys = keys_of(&(0..32).collect::<Vec<u32>>());
        fill(&mut kv, 0, &keys, 0, 2);
        fill(&mut kv, 1, &keys, 0, 2); // the same prompt computed side by side
        assert_eq!(kv.prefix_stats().cached_blocks, 2);
        kv.release(1);
        kv.release(0);
        kv.audit().unwrap();
        assert_eq!(kv.prefix_stats().idle_blocks, 2);
        assert_eq!(kv.free_blocks(), 8);
    }

    #[test]
    fn a_cache_that_is_off_names_nothing() {
        let mut kv = KvCache::with_pool(shape(2, 256), &[None], 8 * BLOCK_POSITIONS);
        let keys = keys_of(&(0..32).collect::<Vec<u32>>());
        fill(&mut kv, 0, &keys, 0, 2);
        kv.release(0);
        assert_eq!(kv.prefix_stats(), PrefixCacheStats::default());
        assert_eq!(kv.cached_prefix(1, &keys, 0), 0);
    }

    #[test]
    fn a_sliding_hit_needs_the_window_before_it() {
        // Window 32 (two blocks); a sequence of 10 blocks keeps only its last window, but the
        // blocks it dropped stay idle and named.
        let windows = [Some(32), None];
        let mut kv = cache_on(KvCache::with_pool(shape(2, 1024), &windows, 1024));
        let keys = keys_of(&(0..160).collect::<Vec<u32>>());
        fill(&mut kv, 0, &keys, 0, 10);
        assert!(
            kv.groups[0].held[0] <= 3,
            "the sliding group dropped old blocks"
        );
        kv.release(0);
        assert_eq!(kv.cached_prefix(1, &keys, 0), 10);
        // Forget the sliding copy of block 8: a hit at 10 or 9 blocks (queries at 160 or 144
        // see positions 129.. or 113..) needs it, a hit at 8 blocks (128 sees 97.., blocks 6
        // and 7) does not: the hit shrinks to 8.
        let b8 = kv.groups[0].by_key[&keys[8]];
        kv.groups[0].idle.pop(&b8);
        kv.groups[0].by_key.remove(&keys[8]);
        kv.groups[0].key_of[b8 as usize] = None;
        kv.groups[0].free.push(b8);
        kv.audit().unwrap();
        assert_eq!(kv.cached_prefix(1, &keys, 0), 8);
        kv.attach(1, &keys, 0, 8);
        kv.audit().unwrap();
        // Full group: all 8 blocks; sliding group: only what position 128 sees (blocks 6, 7).
        assert_eq!(kv.groups[1].held[1], 8);
        assert_eq!(kv.groups[0].held[1], 2);
        kv.reserve(1, 128, 144).unwrap();
        kv.audit().unwrap();
    }

    /// Writes positions `from..to` of `seq` (inputs `x[pos * 4..]`, one 4-wide head) through
    /// two layers and returns the attention outputs: what a forward pass does to the cache.
    fn attend(kv: &mut KvCache, x: &[f32], seq: usize, from: usize, to: usize) -> Vec<f32> {
        let attn = AttnShape {
            n_head: 1,
            n_head_kv: 1,
            head_dim: 4,
            head_dim_v: 4,
            kq_scale: 0.5,
        };
        let batch: Vec<BatchToken> = (from..to)
            .map(|pos| BatchToken {
                token: 0,
                pos,
                seq,
                logits: true,
            })
            .collect();
        kv.reserve_batch(&batch).unwrap();
        let xs = &x[from * 4..to * 4];
        let mut out = vec![0.0; (to - from) * 4];
        for il in 0..2 {
            kv.write_and_attend(il, attn, &batch, xs, xs, xs, &mut out);
        }
        out
    }

    fn inputs(n_pos: usize) -> Vec<f32> {
        (0..n_pos * 4)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 4.0)
            .collect()
    }

    /// A cache (sliding window 24 and full attention, 3 slots) in which seq 0 has computed
    /// positions `..n_pos` and named its whole blocks `keys`.
    fn computed_by_seq_0(x: &[f32], keys: &[BlockKey], n_pos: usize) -> KvCache {
        let mut kv = cache_on(KvCache::new(shape(3, 128), &[Some(24), None]));
        attend(&mut kv, x, 0, 0, n_pos);
        for (i, &key) in keys.iter().enumerate() {
            kv.register(0, i, key);
        }
        kv
    }

    #[test]
    fn attached_blocks_give_the_attention_of_computed_ones() {
        // Seq 0 computes 48 positions; seq 1 attaches its first two blocks and computes the
        // third; seq 2 computes all 48 alone. Seq 1's and seq 2's outputs are identical.
        let x = inputs(48);
        let keys = keys_of(&[7u32; 48]);
        let mut kv = computed_by_seq_0(&x, &keys, 48);
        kv.release(0);
        assert_eq!(kv.cached_prefix(1, &keys[..2], 0), 2);
        kv.attach(1, &keys, 0, 2);
        let hit = attend(&mut kv, &x, 1, 32, 48);
        let alone = attend(&mut kv, &x, 2, 0, 48);
        assert_eq!(hit, alone[32 * 4..]);
        kv.audit().unwrap();
    }

    #[test]
    fn a_partial_block_is_copied_not_shared() {
        // Seq 0 computes 40 positions and keeps its partial block (8 of 16) under a tail key;
        // seq 1 attaches the two whole blocks, copies 5 positions of the partial one into a
        // block of its own and computes the rest: the same attention as seq 2 computing alone.
        let x = inputs(48);
        let keys = keys_of(&[3u32; 32]);
        let mut kv = computed_by_seq_0(&x, &keys, 40);
        let tail = tail_key(keys[1], &[3; 8]);
        assert!(kv.register(0, 2, tail));
        kv.release(0);
        kv.audit().unwrap();
        kv.attach(1, &keys, 0, 2);
        assert!(
            !kv.copy_partial(1, 2, tail_key(keys[1], &[4; 8]), 5),
            "unknown tail"
        );
        assert!(kv.copy_partial(1, 2, tail, 5));
        kv.audit().unwrap();
        assert!(kv.is_cached(&tail), "the source stays cached, unshared");
        let hit = attend(&mut kv, &x, 1, 37, 48);
        let alone = attend(&mut kv, &x, 2, 0, 48);
        assert_eq!(hit, alone[37 * 4..]);
        kv.audit().unwrap();
    }
}
