//! Byte-level BPE ("gpt2" vocabularies, and Gemma 4's raw-UTF-8 variant) as llama.cpp runs it.
//!
//! A raw-text fragment is split into words by the [`PreTokenizer`]; each word is mapped to
//! GPT-2's printable byte alphabet (one symbol per byte) and its symbols are merged pair by pair,
//! always the adjacent pair with the lowest merge rank (ties: the leftmost), until no pair has a
//! rank. Each final symbol is its token; a symbol that is not a token falls back to the tokens of
//! its single bytes (llama.cpp finds those only for printable ASCII).
//!
//! Merges are looked up by the pair of symbol ids, never by text: every text that occurs in the
//! merge list gets an id once at load (the token id when it is a token, an id past the
//! vocabulary otherwise), and `(left id, right id)` maps to `(rank, merged id)`. A word of n bytes
//! costs O(n log n) (a heap of candidate pairs, stale entries skipped when popped).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasherDefault;

use super::fx_hash::{FastMap, FxHasher};
use super::pretokenize::PreTokenizer;
use super::{invalid, TokenizerError, SPACE_SYMBOL};

/// Largest merge list accepted (Gemma 4 has ~515k merges).
pub const MERGES_MAX: usize = 1 << 22;

/// Symbol id of a text that is neither a token nor part of any merge: it never merges.
const NO_ID: u32 = u32::MAX;

/// GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the other 68
/// bytes (controls, space, 0x7F-0xA0, 0xAD) for U+0100 upwards in byte order.
pub(super) const BYTE_CHARS: [char; 256] = byte_chars();

const fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_extra = 0x100u32;
    let mut b = 0usize;
    while b < 256 {
        let printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        let cp = if printable {
            b as u32
        } else {
            next_extra += 1;
            next_extra - 1
        };
        table[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => panic!("byte map code points are valid"),
        };
        b += 1;
    }
    table
}

/// The inverse of [`BYTE_CHARS`], indexed by code point (all mapped characters are < U+0144).
const CHAR_BYTES: [i16; 0x144] = char_bytes();

const fn char_bytes() -> [i16; 0x144] {
    let mut table = [-1i16; 0x144];
    let mut b = 0usize;
    while b < 256 {
        table[BYTE_CHARS[b] as usize] = b as i16;
        b += 1;
    }
    table
}

/// The byte a byte-level character stands for.
fn char_to_byte(c: char) -> Option<u8> {
    CHAR_BYTES
        .get(c as usize)
        .and_then(|&b| u8::try_from(b).ok())
}

/// The bytes a NORMAL byte-level token stands for. A character outside the byte alphabet is
/// rendered the way llama.cpp renders it (`[UNK_BYTE_0x…<token>]`), so output stays comparable.
pub(crate) fn byte_level_piece(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut utf8 = [0u8; 4];
                for b in c.encode_utf8(&mut utf8).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

/// (left symbol id, right symbol id) → (rank, merged symbol id).
type PairMap = HashMap<u64, (u32, u32), BuildHasherDefault<FxHasher>>;

#[inline]
fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// The merge table and word encoder of one BPE vocabulary. Immutable after load.
pub(crate) struct Bpe {
    pre: PreTokenizer,
    ignore_merges: bool,
    n_vocab: u32,
    pairs: PairMap,
    /// Ids of merge texts that are not tokens (ids from `n_vocab` up).
    extra: FastMap<u32>,
    /// Symbol id of each byte's byte-level character.
    byte_ids: [u32; 256],
}

impl Bpe {
    pub fn new(
        pre: PreTokenizer,
        ignore_merges: bool,
        merges: &[String],
        token_to_id: &FastMap<u32>,
        n_vocab: usize,
    ) -> Result<Bpe, TokenizerError> {
        if merges.len() > MERGES_MAX {
            return Err(invalid(format!(
                "{} merges exceed the cap of {MERGES_MAX}",
                merges.len()
            )));
        }
        let n_vocab = u32::try_from(n_vocab).map_err(|_| invalid("vocabulary too large"))?;
        let mut bpe = Bpe {
            pre,
            ignore_merges,
            n_vocab,
            pairs: PairMap::with_capacity_and_hasher(merges.len(), Default::default()),
            // Merge parts that are not tokens are rare (none in most vocabularies).
            extra: FastMap::default(),
            byte_ids: [NO_ID; 256],
        };
        let mut joined = String::new();
        for (rank, m) in merges.iter().enumerate() {
            // "left right", split at the first space after the first byte (llama.cpp's rule);
            // an entry without one can never apply.
            let Some(sp) = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (left, right) = (&m[..sp], &m[sp + 1..]);
            if right.is_empty() {
                continue;
            }
            let l = bpe.intern(left, token_to_id);
            let r = bpe.intern(right, token_to_id);
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let merged = bpe.intern(&joined, token_to_id);
            // The first listing of a pair wins.
            bpe.pairs
                .entry(pair_key(l, r))
                .or_insert((rank as u32, merged));
        }
        let mut buf = [0u8; 4];
        for (b, c) in BYTE_CHARS.iter().enumerate() {
            bpe.byte_ids[b] = bpe.symbol_id(c.encode_utf8(&mut buf), token_to_id);
        }
        Ok(bpe)
    }

    pub fn pre(&self) -> PreTokenizer {
        self.pre
    }

    fn intern(&mut self, text: &str, token_to_id: &FastMap<u32>) -> u32 {
        let id = self.symbol_id(text, token_to_id);
        if id != NO_ID {
            return id;
        }
        let id = self.n_vocab + self.extra.len() as u32;
        self.extra.insert(text.to_string(), id);
        id
    }

    fn symbol_id(&self, text: &str, token_to_id: &FastMap<u32>) -> u32 {
        token_to_id
            .get(text)
            .or_else(|| self.extra.get(text))
            .copied()
            .unwrap_or(NO_ID)
    }

    /// Encode one raw-text fragment (no special tokens in it), appending ids to `out`.
    pub fn encode(
        &self,
        text: &str,
        token_to_id: &FastMap<u32>,
        byte_tokens: &[Option<u32>; 256],
        out: &mut Vec<u32>,
    ) {
        let escaped;
        let text = if self.pre.byte_encoded() {
            text
        } else {
            escaped = text.replace(' ', SPACE_SYMBOL);
            &escaped
        };
        let mut scratch = Scratch::default();
        for range in self.pre.split(text) {
            let word = &text[range];
            if self.pre.byte_encoded() {
                self.encode_bytes(word, token_to_id, &mut scratch, out);
            } else {
                self.encode_chars(word, token_to_id, byte_tokens, &mut scratch, out);
            }
        }
    }

    /// A byte-level word: one symbol per byte.
    fn encode_bytes(
        &self,
        word: &str,
        token_to_id: &FastMap<u32>,
        s: &mut Scratch,
        out: &mut Vec<u32>,
    ) {
        let bytes = word.as_bytes();
        if self.ignore_merges {
            s.text.clear();
            s.text.extend(bytes.iter().map(|&b| BYTE_CHARS[b as usize]));
            if let Some(&id) = token_to_id.get(s.text.as_str()) {
                out.push(id);
                return;
            }
        }
        s.syms.clear();
        s.syms
            .extend(bytes.iter().enumerate().map(|(k, &b)| Symbol {
                start: k,
                len: 1,
                id: self.byte_ids[b as usize],
                prev: k.checked_sub(1),
                next: (k + 1 < bytes.len()).then_some(k + 1),
            }));
        self.merge(s);
        for sym in s.live() {
            if sym.id < self.n_vocab {
                out.push(sym.id);
                continue;
            }
            // Not a token: llama.cpp looks up each byte of the byte-level text as a
            // one-byte string, which only printable ASCII can match.
            for &b in &bytes[sym.start..sym.start + sym.len] {
                let id = self.byte_ids[b as usize];
                if (0x21..=0x7E).contains(&b) && id < self.n_vocab {
                    out.push(id);
                }
            }
        }
    }

    /// A raw UTF-8 word (Gemma 4): one symbol per character, "<0xXX>" tokens as the fallback.
    fn encode_chars(
        &self,
        word: &str,
        token_to_id: &FastMap<u32>,
        byte_tokens: &[Option<u32>; 256],
        s: &mut Scratch,
        out: &mut Vec<u32>,
    ) {
        // A run of newlines that is a token is taken whole (llama.cpp's Gemma 4 rule).
        if word.bytes().all(|b| b == b'\n') {
            if let Some(&id) = token_to_id.get(word) {
                out.push(id);
                return;
            }
        }
        s.syms.clear();
        let n_chars = word.chars().count();
        for (k, (start, c)) in word.char_indices().enumerate() {
            let len = c.len_utf8();
            s.syms.push(Symbol {
                start,
                len,
                id: self.symbol_id(&word[start..start + len], token_to_id),
                prev: k.checked_sub(1),
                next: (k + 1 < n_chars).then_some(k + 1),
            });
        }
        self.merge(s);
        for sym in s.live() {
            if sym.id < self.n_vocab {
                out.push(sym.id);
            } else {
                let bytes = &word.as_bytes()[sym.start..sym.start + sym.len];
                out.extend(bytes.iter().filter_map(|&b| byte_tokens[b as usize]));
            }
        }
    }

    /// Merge the symbols of `s.syms` (a linked list in order) until no adjacent pair has a rank.
    fn merge(&self, s: &mut Scratch) {
        s.heap.clear();
        for k in 1..s.syms.len() {
            self.push_pair(&s.syms, k - 1, k, &mut s.heap);
        }
        while let Some(p) = s.heap.pop() {
            let (l, r) = (p.left, p.right);
            // Stale: a side was merged away or grew since the pair was pushed. (Both alive
            // with the ids they had means they are still adjacent: merges only remove.)
            let (sl, sr) = (&s.syms[l], &s.syms[r]);
            if sl.len == 0 || sr.len == 0 || sl.id != p.left_id || sr.id != p.right_id {
                continue;
            }
            let next = sr.next;
            s.syms[l].len += s.syms[r].len;
            s.syms[l].id = p.merged_id;
            s.syms[l].next = next;
            s.syms[r].len = 0;
            if let Some(nx) = next {
                s.syms[nx].prev = Some(l);
            }
            if let Some(pv) = s.syms[l].prev {
                self.push_pair(&s.syms, pv, l, &mut s.heap);
            }
            if let Some(nx) = next {
                self.push_pair(&s.syms, l, nx, &mut s.heap);
            }
        }
    }

    fn push_pair(&self, syms: &[Symbol], left: usize, right: usize, heap: &mut BinaryHeap<Pair>) {
        let (left_id, right_id) = (syms[left].id, syms[right].id);
        if left_id == NO_ID || right_id == NO_ID {
            return;
        }
        if let Some(&(rank, merged_id)) = self.pairs.get(&pair_key(left_id, right_id)) {
            heap.push(Pair {
                rank,
                left,
                right,
                left_id,
                right_id,
                merged_id,
            });
        }
    }
}

/// Buffers reused across the words of one fragment.
#[derive(Default)]
struct Scratch {
    syms: Vec<Symbol>,
    heap: BinaryHeap<Pair>,
    /// The byte-level text of the current word.
    text: String,
}

impl Scratch {
    /// The symbols left after merging, in text order.
    fn live(&self) -> impl Iterator<Item = &Symbol> {
        let mut cur = if self.syms.is_empty() { None } else { Some(0) };
        std::iter::from_fn(move || {
            let sym = &self.syms[cur?];
            cur = sym.next;
            Some(sym)
        })
    }
}

/// A byte range of the word in a doubly linked list.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: usize,
    /// Zero once merged into its left neighbour.
    len: usize,
    id: u32,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of two adjacent symbols.
#[derive(Debug)]
struct Pair {
    rank: u32,
    left: usize,
    right: usize,
    /// The ids when pushed (detects stale entries).
    left_id: u32,
    right_id: u32,
    merged_id: u32,
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pair {}
impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pair {
    /// The max-heap pops the lowest rank first; equal ranks: the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_gpt2s() {
        assert_eq!(BYTE_CHARS[b'a' as usize], 'a');
        assert_eq!(BYTE_CHARS[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_CHARS[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_CHARS[0], '\u{100}');
        assert_eq!(BYTE_CHARS[0xAD], '\u{143}');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(BYTE_CHARS[b as usize]), Some(b));
        }
        assert_eq!(char_to_byte('ж'), None);
        assert_eq!(byte_level_piece("ĠhiĊ"), b" hi\n");
    }
}
