//! SentencePiece ("llama"/SPM) tokenizer built from GGUF metadata, reproducing llama.cpp's ids.
//!
//! Encoding has three stages (see `docs/facts/gguf-and-models.md` §4):
//! 1. the special-token partition: texts of CONTROL / USER_DEFINED / UNKNOWN tokens are cut out of
//!    the input, longest candidate first (CONTROL and UNKNOWN only when `parse_special`);
//! 2. BOS (and EOS) when `add_special` and the vocabulary asks for them;
//! 3. the SPM merge on every remaining text fragment: spaces become "▁", the text is split into
//!    UTF-8 characters, and adjacent symbols are merged greedily by the score of the merged token
//!    (a max-heap; ties go to the leftmost pair); symbols that are not tokens fall back to
//!    "<0xXX>" byte tokens.
//!
//! Decoding maps each id to a byte piece (BYTE tokens give one raw byte, so a piece may be a
//! partial UTF-8 sequence; see [`crate::model::detokenizer`] for streaming).
//!
//! Nothing here panics on bad data: the vocabulary is validated once in
//! [`Tokenizer::from_vocab`], and out-of-range ids decode to an empty piece.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::gguf::{GgufError, GgufFile};

/// Largest vocabulary accepted (llama.cpp models use up to ~262k).
pub const VOCAB_MAX: usize = 1 << 21;
/// Longest token text accepted, in bytes (Gemma 3's longest is 48).
pub const TOKEN_BYTES_MAX: usize = 1 << 12;

/// The SentencePiece meta-symbol that stands for a space inside token texts.
const SPACE_SYMBOL: &str = "\u{2581}";

/// Token texts that llama.cpp treats as end-of-generation even when the metadata does not list
/// them (it detects them by text and forces them to CONTROL).
const EOG_TEXTS: &[&str] = &[
    "<end_of_turn>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
];

/// Errors building a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata: {0}")]
    Gguf(#[from] GgufError),
    #[error("tokenizer metadata key '{key}' is missing")]
    Missing { key: &'static str },
    #[error(
        "tokenizer model '{0}' (metadata key 'tokenizer.ggml.model') is not supported yet; \
         only 'llama' (SentencePiece) is"
    )]
    UnsupportedModel(String),
    #[error("invalid vocabulary: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::Invalid(msg.into())
}

/// The kind of a token, as stored in `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenType {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    /// llama.cpp maps values it does not know to "undefined" rather than failing.
    pub fn from_gguf(v: i32) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// The raw vocabulary, as read from GGUF metadata (or made by hand in tests).
#[derive(Clone, Debug, Default)]
pub struct Vocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub token_types: Vec<i32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    /// Extra end-of-generation ids (eot/eom); eos and the ids found by text are added.
    pub eot_ids: Vec<u32>,
}

/// A validated SPM tokenizer. Immutable and `Sync`: share it across requests.
pub struct Tokenizer {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<TokenType>,
    /// Decoded bytes of every token (specials hold their text; the type decides if it shows).
    pieces: Vec<Box<[u8]>>,
    token_to_id: FastMap<u32>,
    /// Special tokens (CONTROL, USER_DEFINED, UNKNOWN; non-empty text) in partition order:
    /// longest text first, equal lengths by id. Indexed by "rank".
    specials: Vec<u32>,
    /// Special text to its rank (the lowest rank if texts repeat).
    special_by_text: FastMap<usize>,
    /// For each first byte, the distinct lengths of special texts starting with it.
    special_lens_by_first: Vec<Vec<usize>>,
    /// The "<0xXX>" token for each byte.
    byte_tokens: [Option<u32>; 256],
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    unk_id: Option<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    /// End-of-generation ids, sorted and deduplicated.
    eog: Vec<u32>,
}

/// A summary: the full vocabulary would be megabytes of log.
impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.tokens.len())
            .field("n_special", &self.specials.len())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("unk_id", &self.unk_id)
            .field("pad_id", &self.pad_id)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .field("add_space_prefix", &self.add_space_prefix)
            .field("eog", &self.eog)
            .finish_non_exhaustive()
    }
}

/// Parse "<0xXX>" (uppercase or lowercase hex) to its byte.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Tokenizer {
    /// Validate a vocabulary and precompute the lookup tables.
    pub fn from_vocab(v: Vocab) -> Result<Tokenizer, TokenizerError> {
        let n = v.tokens.len();
        if n == 0 {
            return Err(invalid("the vocabulary is empty"));
        }
        if n > VOCAB_MAX {
            return Err(invalid(format!("{n} tokens exceed the cap of {VOCAB_MAX}")));
        }
        if v.scores.len() != n {
            return Err(invalid(format!("{} scores for {n} tokens", v.scores.len())));
        }
        if v.token_types.len() != n {
            return Err(invalid(format!(
                "{} token types for {n} tokens",
                v.token_types.len()
            )));
        }
        for (i, t) in v.tokens.iter().enumerate() {
            if t.len() > TOKEN_BYTES_MAX {
                return Err(invalid(format!(
                    "token {i} is {} bytes long (cap {TOKEN_BYTES_MAX})",
                    t.len()
                )));
            }
        }
        if let Some(i) = v.scores.iter().position(|s| s.is_nan()) {
            return Err(invalid(format!("token {i} has a NaN score")));
        }
        let check = |name: &str, id: Option<u32>| -> Result<(), TokenizerError> {
            match id {
                Some(id) if id as usize >= n => Err(invalid(format!(
                    "{name} id {id} is out of range for {n} tokens"
                ))),
                _ => Ok(()),
            }
        };
        check("bos", v.bos_id)?;
        check("eos", v.eos_id)?;
        check("unknown", v.unk_id)?;
        check("padding", v.pad_id)?;
        for &id in &v.eot_ids {
            check("end-of-turn", Some(id))?;
        }

        let mut types: Vec<TokenType> = v
            .token_types
            .iter()
            .map(|&t| TokenType::from_gguf(t))
            .collect();
        let mut token_to_id = FastMap::with_capacity_and_hasher(n, Default::default());
        for (i, t) in v.tokens.iter().enumerate() {
            // Later duplicates win, as in llama.cpp's text-to-id map.
            token_to_id.insert(t.clone(), i as u32);
        }

        let mut eog: Vec<u32> = v.eot_ids.clone();
        eog.extend(v.eos_id);
        for text in EOG_TEXTS {
            if let Some(&id) = token_to_id.get(*text) {
                eog.push(id);
                // llama.cpp forces these to CONTROL so they never print and are parsed as specials.
                types[id as usize] = TokenType::Control;
            }
        }
        eog.sort_unstable();
        eog.dedup();

        let mut byte_tokens = [None; 256];
        let mut pieces = Vec::with_capacity(n);
        for (i, t) in v.tokens.iter().enumerate() {
            let piece: Box<[u8]> = match types[i] {
                TokenType::Normal => t.replace(SPACE_SYMBOL, " ").into_bytes().into(),
                TokenType::Byte => match parse_byte_token(t) {
                    Some(b) => {
                        byte_tokens[b as usize].get_or_insert(i as u32);
                        Box::new([b])
                    }
                    None => return Err(invalid(format!("byte token {i} has text {t:?}"))),
                },
                TokenType::Control | TokenType::Unknown | TokenType::UserDefined => {
                    t.as_bytes().into()
                }
                TokenType::Unused | TokenType::Undefined => Box::new([]),
            };
            pieces.push(piece);
        }

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(
                    types[i as usize],
                    TokenType::Control | TokenType::UserDefined | TokenType::Unknown
                ) && !v.tokens[i as usize].is_empty()
            })
            .collect();
        specials.sort_by_key(|&i| (std::cmp::Reverse(v.tokens[i as usize].len()), i));
        let mut special_by_text =
            FastMap::with_capacity_and_hasher(specials.len(), Default::default());
        let mut special_lens_by_first = vec![Vec::new(); 256];
        for (rank, &id) in specials.iter().enumerate() {
            let t = &v.tokens[id as usize];
            special_by_text.entry(t.clone()).or_insert(rank);
            let lens: &mut Vec<usize> = &mut special_lens_by_first[t.as_bytes()[0] as usize];
            if !lens.contains(&t.len()) {
                lens.push(t.len());
            }
        }

        Ok(Tokenizer {
            tokens: v.tokens,
            scores: v.scores,
            types,
            pieces,
            token_to_id,
            specials,
            special_by_text,
            special_lens_by_first,
            byte_tokens,
            bos_id: v.bos_id,
            eos_id: v.eos_id,
            unk_id: v.unk_id,
            pad_id: v.pad_id,
            add_bos: v.add_bos,
            add_eos: v.add_eos,
            add_space_prefix: v.add_space_prefix,
            eog,
        })
    }

    /// Read the vocabulary from `tokenizer.ggml.*` metadata, with llama.cpp's SPM defaults for
    /// absent keys (bos 1, eos 2, unk 0, add_bos true, add_eos false, add_space_prefix true).
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let md = file.metadata();
        let model = md
            .get_str("tokenizer.ggml.model")?
            .ok_or(TokenizerError::Missing {
                key: "tokenizer.ggml.model",
            })?;
        if model != "llama" {
            return Err(TokenizerError::UnsupportedModel(model.to_string()));
        }
        let tokens = md
            .get_array("tokenizer.ggml.tokens")?
            .ok_or(TokenizerError::Missing {
                key: "tokenizer.ggml.tokens",
            })?
            .as_strings()
            .ok_or_else(|| invalid("'tokenizer.ggml.tokens' is not an array of strings"))?
            .to_vec();
        let n = tokens.len();
        let scores = match md.get_array("tokenizer.ggml.scores")? {
            None => vec![0.0; n],
            Some(a) => a
                .as_f32()
                .ok_or_else(|| invalid("'tokenizer.ggml.scores' is not an array of f32"))?
                .to_vec(),
        };
        let token_types = match md.get_array("tokenizer.ggml.token_type")? {
            None => vec![1; n],
            Some(a) => match (a.as_i32(), a.as_u32()) {
                (Some(v), _) => v.to_vec(),
                // Values above i32::MAX are not valid types; map them to "undefined" (0).
                (None, Some(v)) => v.iter().map(|&x| i32::try_from(x).unwrap_or(0)).collect(),
                _ => {
                    return Err(invalid(
                        "'tokenizer.ggml.token_type' is not an array of i32",
                    ))
                }
            },
        };
        // Default special ids exist only if the vocabulary is that large.
        let default_id = |id: u32| (id as usize) < n;
        let id_key = |key: &str, default: Option<u32>| -> Result<Option<u32>, TokenizerError> {
            Ok(match md.get_u32(key)? {
                Some(id) => Some(id),
                None => default.filter(|&d| default_id(d)),
            })
        };
        let bos_id = id_key("tokenizer.ggml.bos_token_id", Some(1))?;
        let eos_id = id_key("tokenizer.ggml.eos_token_id", Some(2))?;
        let unk_id = id_key("tokenizer.ggml.unknown_token_id", Some(0))?;
        let pad_id = id_key("tokenizer.ggml.padding_token_id", None)?;
        let mut eot_ids = Vec::new();
        eot_ids.extend(id_key("tokenizer.ggml.eot_token_id", None)?);
        eot_ids.extend(id_key("tokenizer.ggml.eom_token_id", None)?);
        let add_bos = md.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(true);
        let add_eos = md
            .get_bool("tokenizer.ggml.add_eos_token")?
            .unwrap_or(false);
        let add_space_prefix = md
            .get_bool("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(true);
        Tokenizer::from_vocab(Vocab {
            tokens,
            scores,
            token_types,
            bos_id,
            eos_id,
            unk_id,
            pad_id,
            add_bos,
            add_eos,
            add_space_prefix,
            eot_ids,
        })
    }

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.unk_id
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// The end-of-generation ids (eos, end-of-turn and the like), sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether generation should stop at this token.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// The raw text of a token as stored in the vocabulary ("▁" not replaced).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn token_score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// The id of a token with exactly this text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// The bytes a token stands for in output text. CONTROL and UNKNOWN tokens are empty unless
    /// `render_special`; UNUSED tokens and out-of-range ids are always empty. BYTE tokens give one
    /// raw byte, which may be part of a multi-byte character.
    pub fn token_to_piece(&self, id: u32, render_special: bool) -> &[u8] {
        let i = id as usize;
        let Some(piece) = self.pieces.get(i) else {
            return &[];
        };
        match self.types[i] {
            TokenType::Control | TokenType::Unknown if !render_special => &[],
            _ => piece,
        }
    }

    /// Decode ids to text the way llama.cpp's detokenizer does (specials not rendered; invalid
    /// UTF-8 becomes U+FFFD). With `add_space_prefix` the first piece's leading space is dropped.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, false)
    }

    /// [`Tokenizer::decode`] with a choice to render CONTROL/UNKNOWN tokens as their text.
    pub fn decode_with(&self, ids: &[u32], render_special: bool) -> String {
        let mut bytes = Vec::new();
        for (k, &id) in ids.iter().enumerate() {
            let piece = self.token_to_piece(id, render_special);
            let piece = if k == 0 && self.add_space_prefix {
                piece.strip_prefix(b" ").unwrap_or(piece)
            } else {
                piece
            };
            bytes.extend_from_slice(piece);
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// Tokenize `text`. `add_special` adds BOS/EOS as the vocabulary asks; `parse_special` lets
    /// CONTROL tokens such as "<start_of_turn>" be recognised in the text (use it for templated
    /// prompts, not for untrusted user text).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos_id);
        }
        // "Previous piece was special or the start": where llama.cpp adds the space prefix.
        let mut prev_special = true;
        for frag in self.partition(text, parse_special) {
            match frag {
                Fragment::Text(s) => {
                    let mut buf;
                    let s = if self.add_space_prefix && prev_special {
                        buf = String::with_capacity(s.len() + 1);
                        buf.push(' ');
                        buf.push_str(s);
                        buf.as_str()
                    } else {
                        s
                    };
                    self.spm_encode(s, &mut out);
                    prev_special = false;
                }
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos_id);
        }
        out
    }

    /// Split `text` into raw-text fragments and special tokens, as llama.cpp's
    /// `tokenizer_st_partition`: special candidates longest first (equal lengths by id); each
    /// takes its leftmost non-overlapping occurrences in the text not yet claimed by a longer
    /// one.
    ///
    /// llama.cpp searches for every special token (6414 for Gemma 3); here one pass over the
    /// text first finds which candidates occur at all, and only those are searched. Claimed
    /// bytes record the end of the token that claimed them, so a search that hits a claimed
    /// region jumps past it; this gives the same tokens as searching each fragment separately.
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let bytes = text.as_bytes();
        // First and last start of each candidate in the text, indexed by rank.
        let mut span: Vec<Option<(usize, usize)>> = vec![None; self.specials.len()];
        let mut present: Vec<usize> = Vec::new();
        for (i, &b) in bytes.iter().enumerate() {
            for &len in &self.special_lens_by_first[b as usize] {
                let Some(s) = text.get(i..i + len) else {
                    continue;
                };
                let Some(&rank) = self.special_by_text.get(s) else {
                    continue;
                };
                if let Some((_, last)) = &mut span[rank] {
                    *last = i;
                    continue;
                }
                span[rank] = Some((i, i));
                let id = self.specials[rank];
                let allowed = parse_special
                    || !matches!(
                        self.types[id as usize],
                        TokenType::Control | TokenType::Unknown
                    );
                if allowed {
                    present.push(rank);
                }
            }
        }
        if present.is_empty() {
            return if text.is_empty() {
                Vec::new()
            } else {
                vec![Fragment::Text(text)]
            };
        }
        present.sort_unstable();
        // For a claimed byte, the end of the token that claimed it; 0 = free (ends are > 0).
        let mut claim_end = vec![0usize; bytes.len()];
        let mut accepted: Vec<(usize, usize, u32)> = Vec::new();
        for rank in present {
            let id = self.specials[rank];
            let pat = self.tokens[id as usize].as_str();
            let len = pat.len();
            let Some((first, last)) = span[rank] else {
                continue;
            };
            // Only search where the candidate occurs at all. `from` is always a char boundary:
            // an occurrence start, a match end or a claimed token's end.
            let mut from = first;
            let end = last + len;
            while let Some(off) = text.get(from..end).and_then(|rest| rest.find(pat)) {
                let p = from + off;
                if let Some(q) = (p..p + len).find(|&i| claim_end[i] != 0) {
                    // Any later match starting before that token's end overlaps it.
                    from = claim_end[q];
                    continue;
                }
                claim_end[p..p + len].iter_mut().for_each(|c| *c = p + len);
                accepted.push((p, len, id));
                from = p + len;
            }
        }
        accepted.sort_unstable();
        let mut frags = Vec::with_capacity(accepted.len() * 2 + 1);
        let mut at = 0;
        for (pos, len, id) in accepted {
            if pos > at {
                frags.push(Fragment::Text(&text[at..pos]));
            }
            frags.push(Fragment::Token(id));
            at = pos + len;
        }
        if at < text.len() {
            frags.push(Fragment::Text(&text[at..]));
        }
        frags
    }

    /// SentencePiece merge of one raw-text fragment, appending ids to `out`.
    fn spm_encode(&self, text: &str, out: &mut Vec<u32>) {
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

/// Map from token text. The keys are the model's own vocabulary, not attacker-chosen, and the
/// lookups (one per candidate merge, up to ~30 per byte in the partition scan) dominate encoding,
/// so a fast multiplicative hash (FxHash) replaces SipHash here.
type FastMap<V> = HashMap<String, V, BuildHasherDefault<FxHasher>>;

#[derive(Default)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny vocabulary: specials, a few merges, and byte tokens for 0x00..=0xFF.
    pub(crate) fn tiny_vocab() -> Vocab {
        let mut tokens: Vec<String> = [
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<start>",
            "<end_of_turn>",
            "\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut types = vec![3, 3, 3, 2, 3, 3, 4];
        let mut scores = vec![0.0; tokens.len()];
        for b in 0..=255u32 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
            scores.push(0.0);
        }
        for (t, s) in [
            ("▁", -1.0),
            ("a", -2.0),
            ("b", -3.0),
            ("c", -4.0),
            ("ab", -5.0),
            ("bc", -5.0),
            ("▁a", -6.0),
            ("abc", -7.0),
            ("é", -8.0),
            ("xy", -5.0),
            ("yz", -5.0),
        ] {
            tokens.push(t.to_string());
            types.push(1);
            scores.push(s);
        }
        // Overlapping specials: the partition must prefer the longest text over the leftmost.
        for (t, ty) in [("<a><b>", 4), ("x<a>", 4), ("<a>", 3)] {
            tokens.push(t.to_string());
            types.push(ty);
            scores.push(0.0);
        }
        Vocab {
            tokens,
            scores,
            token_types: types,
            bos_id: Some(2),
            eos_id: Some(1),
            unk_id: Some(3),
            pad_id: Some(0),
            add_bos: true,
            add_eos: false,
            add_space_prefix: false,
            eot_ids: vec![],
        }
    }

    fn tiny() -> Tokenizer {
        Tokenizer::from_vocab(tiny_vocab()).expect("valid vocab")
    }

    fn id(t: &Tokenizer, s: &str) -> u32 {
        t.token_id(s).expect("token in vocab")
    }

    #[test]
    fn byte_fallback_for_unknown_char() {
        let t = tiny();
        // "ж" (U+0436) is not in the vocabulary: two byte tokens D0 B6.
        let ids = t.encode("aж", false, false);
        assert_eq!(ids, vec![id(&t, "a"), id(&t, "<0xD0>"), id(&t, "<0xB6>")]);
        assert_eq!(t.decode(&ids), "aж");
        // A character in the vocabulary is not split.
        assert_eq!(t.encode("é", false, false), vec![id(&t, "é")]);
    }

    #[test]
    fn merges_follow_scores_and_ties_go_left() {
        let t = tiny();
        // "xy" and "yz" have equal scores: the leftmost pair merges first; "z" alone is not a
        // token and falls back to its byte.
        assert_eq!(
            t.encode("xyz", false, false),
            vec![id(&t, "xy"), id(&t, "<0x7A>")]
        );
        assert_eq!(t.encode("abc", false, false), vec![id(&t, "abc")]);
        assert_eq!(
            t.encode("bcb", false, false),
            vec![id(&t, "bc"), id(&t, "b")]
        );
        // Spaces become "▁"; "▁a" merges.
        assert_eq!(
            t.encode(" ab", false, false),
            vec![id(&t, "▁"), id(&t, "ab")],
            "'ab' (-5) outranks '▁a' (-6)"
        );
        assert_eq!(t.encode(" a", false, false), vec![id(&t, "▁a")]);
    }

    #[test]
    fn special_partition_and_bos() {
        let t = tiny();
        let ids = t.encode("a<start>b\nc", true, true);
        assert_eq!(
            ids,
            vec![2, id(&t, "a"), 4, id(&t, "b"), id(&t, "\n"), id(&t, "c")]
        );
        // Without parse_special the CONTROL token is plain text (byte fallback for '<', '>'),
        // but the USER_DEFINED "\n" is still split out.
        let ids = t.encode("<start>\n", false, false);
        assert!(!ids.contains(&4));
        assert_eq!(ids.last(), Some(&id(&t, "\n")));
        assert_eq!(t.decode(&ids), "<start>\n");
        // Control tokens do not render unless asked.
        assert_eq!(t.decode(&[4, id(&t, "a")]), "a");
        assert_eq!(t.decode_with(&[4, id(&t, "a")], true), "<start>a");
        assert!(t.encode("", false, true).is_empty());
        assert_eq!(t.encode("", true, true), vec![2]);
    }

    #[test]
    fn partition_is_longest_first_not_leftmost() {
        let t = tiny();
        let (ab, xa, a) = (id(&t, "<a><b>"), id(&t, "x<a>"), id(&t, "<a>"));
        let x = id(&t, "<0x78>");
        // Leftmost-first would take "x<a>" and strand "<b>".
        assert_eq!(t.encode("x<a><b>", false, true), vec![x, ab]);
        assert_eq!(t.encode("x<a><a><b>", false, true), vec![xa, ab]);
        assert_eq!(t.encode("<a>x<a><a>", false, true), vec![a, xa, a]);
        // Without parse_special the CONTROL "<a>" stays text, USER_DEFINED ones still split.
        let ids = t.encode("<a>x<a>", false, false);
        assert_eq!(ids.last(), Some(&xa));
        assert!(!ids.contains(&a));
        // Repeated, adjacent and overlapping occurrences of one special.
        assert_eq!(t.encode("<a><a><a>", false, true), vec![a, a, a]);
    }

    #[test]
    fn eog_and_bounds() {
        let t = tiny();
        assert!(t.is_eog(1));
        assert!(t.is_eog(5), "<end_of_turn> detected by text");
        assert!(!t.is_eog(2));
        assert_eq!(t.token_to_piece(u32::MAX, true), b"");
        assert_eq!(t.decode(&[u32::MAX, 99_999]), "");
        assert_eq!(t.token_text(u32::MAX), None);
    }

    #[test]
    fn invalid_vocabs_are_errors() {
        let mut v = tiny_vocab();
        v.scores.pop();
        assert!(Tokenizer::from_vocab(v).is_err());
        let mut v = tiny_vocab();
        v.bos_id = Some(100_000);
        assert!(Tokenizer::from_vocab(v).is_err());
        let mut v = tiny_vocab();
        v.tokens[10] = "<0xZZ>".into();
        assert!(Tokenizer::from_vocab(v).is_err());
        assert!(Tokenizer::from_vocab(Vocab::default()).is_err());
    }

    #[test]
    fn long_input_is_fast() {
        let t = tiny();
        let text = "abc ab<start>é ж\n".repeat(6000); // ~100 KB
        let start = std::time::Instant::now();
        let ids = t.encode(&text, true, true);
        assert!(start.elapsed().as_secs_f64() < 1.0, "{:?}", start.elapsed());
        assert_eq!(t.decode(&ids), text.replace("<start>", ""));
    }

    fn gguf(model: Option<&str>, extra: Vec<(&str, crate::gguf::Value)>) -> GgufFile {
        use crate::gguf::{writer::GgufWriter, Array, Value};
        let v = tiny_vocab();
        let mut w = GgufWriter::new(3)
            .kv(
                "tokenizer.ggml.tokens",
                Value::Array(Array::String(v.tokens)),
            )
            .kv("tokenizer.ggml.scores", Value::Array(Array::F32(v.scores)))
            .kv(
                "tokenizer.ggml.token_type",
                Value::Array(Array::I32(v.token_types)),
            );
        if let Some(m) = model {
            w = w.kv("tokenizer.ggml.model", Value::String(m.to_string()));
        }
        for (k, val) in extra {
            w = w.kv(k, val);
        }
        GgufFile::from_bytes("test.gguf", w.to_bytes()).expect("valid GGUF image")
    }

    #[test]
    fn from_gguf_models_and_defaults() {
        use crate::gguf::Value;
        for other in ["gpt2", "bert"] {
            let err = Tokenizer::from_gguf(&gguf(Some(other), vec![])).expect_err("unsupported");
            let msg = err.to_string();
            assert!(
                msg.contains("tokenizer.ggml.model") && msg.contains(other),
                "{msg}"
            );
        }
        let err = Tokenizer::from_gguf(&gguf(None, vec![])).expect_err("missing model");
        assert!(err.to_string().contains("tokenizer.ggml.model"));

        // llama.cpp's SPM defaults: bos 1, eos 2, unk 0, add_bos, add_space_prefix.
        let t = Tokenizer::from_gguf(&gguf(Some("llama"), vec![])).expect("llama vocab");
        assert_eq!(
            (t.bos_id(), t.eos_id(), t.unk_id()),
            (Some(1), Some(2), Some(0))
        );
        assert!(t.add_bos() && !t.add_eos() && t.add_space_prefix());
        // The space prefix goes at the start and after each special token.
        let ids = t.encode("a<start>a", false, true);
        assert_eq!(ids, vec![id(&t, "▁a"), 4, id(&t, "▁a")]);
        // Decoding drops the first piece's leading space only.
        assert_eq!(t.decode(&ids), "a a");

        let t = Tokenizer::from_gguf(&gguf(
            Some("llama"),
            vec![
                ("tokenizer.ggml.bos_token_id", Value::U32(2)),
                ("tokenizer.ggml.eos_token_id", Value::U32(1)),
                ("tokenizer.ggml.eot_token_id", Value::U32(4)),
                ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
                ("tokenizer.ggml.add_eos_token", Value::Bool(true)),
                ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
            ],
        ))
        .expect("llama vocab");
        assert_eq!(t.encode("a", true, false), vec![id(&t, "a"), 1]);
        assert_eq!(t.eog_ids(), &[1, 4, 5]);
        // Wrong types and out-of-range ids are errors, not panics.
        assert!(Tokenizer::from_gguf(&gguf(
            Some("llama"),
            vec![("tokenizer.ggml.bos_token_id", Value::U32(1 << 20))]
        ))
        .is_err());
        assert!(Tokenizer::from_gguf(&gguf(
            Some("llama"),
            vec![("tokenizer.ggml.add_bos_token", Value::U32(1))]
        ))
        .is_err());
    }
}
