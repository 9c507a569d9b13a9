//! SentencePiece ("llama"/SPM) merge of one raw-text fragment: spaces become "▁", the text is
//! split into UTF-8 characters, and adjacent symbols are merged greedily by the score of the
//! merged token (a max-heap; ties go to the leftmost pair); symbols that are not tokens fall back
//! to "<0xXX>" byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::{Tokenizer, SPACE_SYMBOL};

impl Tokenizer {
    /// SentencePiece merge of one raw-text fragment, appending ids to `out`.
    pub(super) fn spm_encode(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let text = text.replace(' ', SPACE_SYMBOL);
        let mut syms: Vec<Symbol> = Vec::with_capacity(text.len());
        let n_chars = text.chars().count();
        for (k, (start, ch)) in text.char_indices().enumerate() {
            syms.push(Symbol {
                start,
                len: ch.len_utf8(),
                prev: k.checked_sub(1),
                next: if k + 1 < n_chars { Some(k + 1) } else { None },
            });
        }
        let mut heap = BinaryHeap::with_capacity(syms.len());
        for k in 1..syms.len() {
            self.try_add_bigram(&text, &syms, k - 1, k, &mut heap);
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (bg.left, bg.right);
            // Stale entries: one side already merged away, or changed length since pushed.
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != bg.size {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(nx) = syms[r].next {
                syms[nx].prev = Some(l);
            }
            if let Some(p) = syms[l].prev {
                self.try_add_bigram(&text, &syms, p, l, &mut heap);
            }
            if let Some(nx) = syms[l].next {
                self.try_add_bigram(&text, &syms, l, nx, &mut heap);
            }
        }
        let mut cur = Some(0);
        while let Some(k) = cur {
            let s = &syms[k];
            self.resegment(&text[s.start..s.start + s.len], out);
            cur = s.next;
        }
    }

    fn try_add_bigram(
        &self,
        text: &str,
        syms: &[Symbol],
        left: usize,
        right: usize,
        heap: &mut BinaryHeap<Bigram>,
    ) {
        let start = syms[left].start;
        let size = syms[left].len + syms[right].len;
        let Some(&id) = self.token_to_id.get(&text[start..start + size]) else {
            return;
        };
        heap.push(Bigram {
            score: self.scores[id as usize],
            left,
            right,
            size,
        });
    }

    /// Emit a final symbol. A merged symbol is always a vocabulary token (merges only happen
    /// into existing tokens), so llama.cpp's recursive split of non-token merges never applies;
    /// what is left is a single character that is not a token: byte fallback.
    fn resegment(&self, s: &str, out: &mut Vec<u32>) {
        if let Some(&id) = self.token_to_id.get(s) {
            out.push(id);
            return;
        }
        for &b in s.as_bytes() {
            if let Some(id) = self.byte_tokens[b as usize] {
                out.push(id);
            } else if let Some(&id) = std::str::from_utf8(std::slice::from_ref(&b))
                .ok()
                .and_then(|c| self.token_to_id.get(c))
            {
                out.push(id);
            } else if let Some(unk) = self.unk_id {
                // No byte tokens: the best we can do is one unknown per byte.
                out.push(unk);
            }
        }
    }
}

/// One symbol of the SPM merge: a byte range of the escaped text in a doubly linked list.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: usize,
    /// Zero once merged into its left neighbour.
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of two adjacent symbols.
#[derive(Debug)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the merged text when pushed (detects stale entries).
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Highest score first; equal scores: the leftmost pair first.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}
