//! Tokenizers built from GGUF metadata, reproducing llama.cpp's ids: SentencePiece ("llama"/SPM)
//! and byte-level BPE ("gpt2", plus Gemma 4's raw-UTF-8 BPE).
//!
//! Encoding has three stages (see `docs/facts/gguf-and-models.md` §4):
//! 1. the special-token partition: texts of CONTROL / USER_DEFINED / UNKNOWN tokens are cut out of
//!    the input, longest candidate first (CONTROL and UNKNOWN only when `parse_special`);
//! 2. BOS (and EOS) when `add_special` and the vocabulary asks for them;
//! 3. every remaining text fragment goes through the model's merge:
//!    - SPM (`spm.rs`): spaces become "▁", characters merge greedily by token score, unknown
//!      characters fall back to "<0xXX>" byte tokens;
//!    - BPE (`bpe.rs`): the pre-tokenizer named by `tokenizer.ggml.pre` (`pretokenize.rs`) splits
//!      the fragment into words, each word is mapped to GPT-2's byte alphabet and merged by
//!      merge rank (`tokenizer.ggml.merges`).
//!
//! Decoding maps each id to a byte piece (BYTE tokens and byte-level BPE tokens may carry part
//! of a UTF-8 character; see [`crate::model::detokenizer`] for streaming).
//!
//! Nothing here panics on bad data: the vocabulary is validated once in
//! [`Tokenizer::from_vocab`], and out-of-range ids decode to an empty piece. Tokenizer kinds or
//! pre-tokenizers that are not implemented are refused with an error naming them, never
//! approximated.

mod bpe;
mod char_class;
mod fx_hash;
mod pretokenize;
mod spm;
#[cfg(test)]
mod tests;

use crate::gguf::{GgufError, GgufFile, Metadata};

use bpe::Bpe;
pub use bpe::MERGES_MAX;
use fx_hash::FastMap;
use pretokenize::PreSpec;
pub use pretokenize::PreTokenizer;

/// Largest vocabulary accepted (llama.cpp models use up to ~262k).
pub const VOCAB_MAX: usize = 1 << 21;
/// Longest token text accepted, in bytes (Gemma 3's longest is 48).
pub const TOKEN_BYTES_MAX: usize = 1 << 12;

/// The SentencePiece meta-symbol that stands for a space inside token texts.
const SPACE_SYMBOL: &str = "\u{2581}";

/// Token texts that llama.cpp treats as end-of-generation even when the metadata does not list
/// them (it detects them by text and forces them to CONTROL).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Fill-in-the-middle token texts llama.cpp detects by text and forces to CONTROL; the pad,
/// repository and file-separator ones also end generation.
const FIM_TEXTS: &[(&str, bool)] = &[
    ("<|fim_prefix|>", false),
    ("<fim-prefix>", false),
    ("<fim_prefix>", false),
    ("<｜fim▁begin｜>", false),
    ("<PRE>", false),
    ("▁<PRE>", false),
    ("<|code_prefix|>", false),
    ("<|prefix|>", false),
    ("<|fim_suffix|>", false),
    ("<fim-suffix>", false),
    ("<fim_suffix>", false),
    ("<｜fim▁hole｜>", false),
    ("<SUF>", false),
    ("▁<SUF>", false),
    ("<|code_suffix|>", false),
    ("<|suffix|>", false),
    ("<|fim_middle|>", false),
    ("<fim-middle>", false),
    ("<fim_middle>", false),
    ("<｜fim▁end｜>", false),
    ("<MID>", false),
    ("▁<MID>", false),
    ("<|code_middle|>", false),
    ("<|middle|>", false),
    ("<|fim_pad|>", true),
    ("<fim-pad>", true),
    ("<fim_pad>", true),
    ("<PAD>", true),
    ("[PAD]", true),
    ("<|fim_repo|>", true),
    ("<|repo_name|>", true),
    ("<fim-repo>", true),
    ("<REPO>", true),
    ("<reponame>", true),
    ("<|file_sep|>", true),
];

/// Special tokens that keep the white space after them even in Phi-3 vocabularies.
const RSTRIP_EXCEPT: &[&str] = &["<unk>", "<s>", "<|endoftext|>"];

/// Errors building a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata: {0}")]
    Gguf(#[from] GgufError),
    #[error("tokenizer metadata key '{key}' is missing")]
    Missing { key: &'static str },
    #[error(
        "tokenizer model '{0}' (metadata key 'tokenizer.ggml.model') is not supported; \
         supported: 'llama' (SentencePiece), 'gpt2' (byte-level BPE), 'gemma4'"
    )]
    UnsupportedModel(String),
    #[error(
        "pre-tokenizer '{pre}' (metadata key 'tokenizer.ggml.pre') of tokenizer model '{model}' \
         is not supported; supported: {}",
        PreTokenizer::supported_names().collect::<Vec<_>>().join(", ")
    )]
    UnsupportedPre { model: String, pre: String },
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

/// The tokenization algorithm of a vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TokenizerKind {
    /// SentencePiece (`tokenizer.ggml.model` = "llama"): merges by token score.
    #[default]
    Spm,
    /// BPE (`tokenizer.ggml.model` = "gpt2" or "gemma4"): merges by rank after pre-tokenizing.
    Bpe,
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
    /// SPM: prepend a space to the text (and drop it again when decoding).
    pub add_space_prefix: bool,
    /// Extra end-of-generation ids (eot/eom, FIM pad/repo/separator); eos and the ids found by
    /// text are added.
    pub eot_ids: Vec<u32>,
    pub kind: TokenizerKind,
    /// BPE only: the word-splitting rule.
    pub pre: PreTokenizer,
    /// BPE only: a word that is itself a token is emitted without merging (Llama 3).
    pub ignore_merges: bool,
    /// BPE only: "left right" pairs, highest priority first (rank = index).
    pub merges: Vec<String>,
    /// Special tokens found in the text swallow the white space after them, except "<unk>",
    /// "<s>" and "<|endoftext|>" (llama.cpp sets this for models named Phi-3).
    pub rstrip_specials: bool,
}

/// A validated tokenizer. Immutable and `Sync`: share it across requests.
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
    /// The merge table when `kind` is BPE.
    bpe: Option<Bpe>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    unk_id: Option<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    /// See [`Vocab::rstrip_specials`].
    rstrip_specials: bool,
    /// End-of-generation ids, sorted and deduplicated.
    eog: Vec<u32>,
}

/// A summary: the full vocabulary would be megabytes of log.
impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind())
            .field("pre", &self.pre_tokenizer())
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

/// How the model in a GGUF file tokenizes: its kind, pre-tokenizer and llama.cpp's defaults.
struct ModelDefaults {
    kind: TokenizerKind,
    pre: Option<PreSpec>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    unk_id: Option<u32>,
    add_bos: bool,
    add_space_prefix: bool,
}

impl ModelDefaults {
    fn from_metadata(md: &Metadata) -> Result<ModelDefaults, TokenizerError> {
        let model = md
            .get_str("tokenizer.ggml.model")?
            .ok_or(TokenizerError::Missing {
                key: "tokenizer.ggml.model",
            })?;
        match model {
            "llama" => Ok(ModelDefaults {
                kind: TokenizerKind::Spm,
                pre: None,
                bos_id: Some(1),
                eos_id: Some(2),
                unk_id: Some(0),
                add_bos: true,
                add_space_prefix: true,
            }),
            "gpt2" => {
                // llama.cpp falls back to "default" (with a warning) when the name is missing.
                let name = match md.get_str("tokenizer.ggml.pre")? {
                    None | Some("") => "default",
                    Some(name) => name,
                };
                let spec = PreSpec::from_name(name)
                    .filter(|s| s.pre != PreTokenizer::Gemma4)
                    .ok_or_else(|| TokenizerError::UnsupportedPre {
                        model: model.to_string(),
                        pre: name.to_string(),
                    })?;
                Ok(ModelDefaults {
                    kind: TokenizerKind::Bpe,
                    pre: Some(spec),
                    // llama.cpp's BPE defaults (Falcon's ids).
                    bos_id: Some(11),
                    eos_id: Some(11),
                    unk_id: None,
                    add_bos: spec.add_bos,
                    add_space_prefix: false,
                })
            }
            // Gemma 4 names its own model; llama.cpp ignores its `tokenizer.ggml.pre`.
            "gemma4" => Ok(ModelDefaults {
                kind: TokenizerKind::Bpe,
                pre: PreSpec::from_name("gemma4"),
                bos_id: None,
                eos_id: None,
                unk_id: None,
                add_bos: true,
                add_space_prefix: false,
            }),
            other => Err(TokenizerError::UnsupportedModel(other.to_string())),
        }
    }
}

impl Tokenizer {
    /// Validate a vocabulary and precompute the lookup tables.
    pub fn from_vocab(mut v: Vocab) -> Result<Tokenizer, TokenizerError> {
        let merges = std::mem::take(&mut v.merges);
        Tokenizer::build(v, &merges)
    }

    /// [`Tokenizer::from_vocab`] with the merges borrowed (GGUF metadata holds up to ~500k).
    fn build(v: Vocab, merges: &[String]) -> Result<Tokenizer, TokenizerError> {
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

        let mut tokens = v.tokens;
        for (i, t) in tokens.iter_mut().enumerate() {
            if t.is_empty() {
                // As llama.cpp: an empty text would match everywhere in the partition.
                *t = format!("[EMPTY_{i}]");
            }
        }
        let mut types: Vec<TokenType> = v
            .token_types
            .iter()
            .map(|&t| TokenType::from_gguf(t))
            .collect();
        let mut token_to_id = FastMap::with_capacity_and_hasher(n, Default::default());
        for (i, t) in tokens.iter().enumerate() {
            // Later duplicates win, as in llama.cpp's text-to-id map.
            token_to_id.insert(t.clone(), i as u32);
        }
        let eog = detect_eog(&token_to_id, &mut types, &v.eot_ids, v.eos_id);

        let byte_level = v.kind == TokenizerKind::Bpe && v.pre.byte_encoded();
        let mut byte_tokens = [None; 256];
        let mut pieces = Vec::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            let piece: Box<[u8]> = match types[i] {
                TokenType::Normal if byte_level => bpe::byte_level_piece(t).into(),
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
                )
            })
            .collect();
        specials.sort_by_key(|&i| (std::cmp::Reverse(tokens[i as usize].len()), i));
        let mut special_by_text =
            FastMap::with_capacity_and_hasher(specials.len(), Default::default());
        let mut special_lens_by_first = vec![Vec::new(); 256];
        for (rank, &id) in specials.iter().enumerate() {
            let t = &tokens[id as usize];
            special_by_text.entry(t.clone()).or_insert(rank);
            let lens: &mut Vec<usize> = &mut special_lens_by_first[t.as_bytes()[0] as usize];
            if !lens.contains(&t.len()) {
                lens.push(t.len());
            }
        }

        let bpe = match v.kind {
            TokenizerKind::Spm => None,
            TokenizerKind::Bpe => Some(Bpe::new(v.pre, v.ignore_merges, merges, &token_to_id, n)?),
        };

        Ok(Tokenizer {
            tokens,
            scores: v.scores,
            types,
            pieces,
            token_to_id,
            specials,
            special_by_text,
            special_lens_by_first,
            byte_tokens,
            bpe,
            bos_id: v.bos_id,
            eos_id: v.eos_id,
            unk_id: v.unk_id,
            pad_id: v.pad_id,
            add_bos: v.add_bos,
            add_eos: v.add_eos,
            add_space_prefix: v.add_space_prefix,
            rstrip_specials: v.rstrip_specials,
            eog,
        })
    }

    /// Read the vocabulary from `tokenizer.ggml.*` metadata with llama.cpp's defaults for absent
    /// keys: SPM bos 1, eos 2, unk 0, add_bos, add_space_prefix; BPE bos = eos = 11, add_bos
    /// only for the Llama 3 pre-tokenizers (and always for Gemma 4). An unknown model or
    /// pre-tokenizer is [`TokenizerError::UnsupportedModel`] / [`TokenizerError::UnsupportedPre`].
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let md = file.metadata();
        let defaults = ModelDefaults::from_metadata(md)?;
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
            Some(a) => match (a.as_f32(), a.as_i32()) {
                (Some(v), _) => v.to_vec(),
                (None, Some(v)) => v.iter().map(|&x| x as f32).collect(),
                _ => return Err(invalid("'tokenizer.ggml.scores' is not an array of f32")),
            },
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
        let merges: &[String] = match defaults.kind {
            TokenizerKind::Spm => &[],
            TokenizerKind::Bpe => md
                .get_array("tokenizer.ggml.merges")?
                .ok_or(TokenizerError::Missing {
                    key: "tokenizer.ggml.merges",
                })?
                .as_strings()
                .ok_or_else(|| invalid("'tokenizer.ggml.merges' is not an array of strings"))?,
        };
        // Default special ids exist only if the vocabulary is that large.
        let id_key = |key: &str, default: Option<u32>| -> Result<Option<u32>, TokenizerError> {
            Ok(match md.get_u32(key)? {
                Some(id) => Some(id),
                None => default.filter(|&d| (d as usize) < n),
            })
        };
        let bos_id = id_key("tokenizer.ggml.bos_token_id", defaults.bos_id)?;
        let eos_id = id_key("tokenizer.ggml.eos_token_id", defaults.eos_id)?;
        let unk_id = id_key("tokenizer.ggml.unknown_token_id", defaults.unk_id)?;
        let pad_id = id_key("tokenizer.ggml.padding_token_id", None)?;
        let mut eot_ids = Vec::new();
        for key in [
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
            "tokenizer.ggml.fim_pad_token_id",
            "tokenizer.ggml.fim_rep_token_id",
            "tokenizer.ggml.fim_sep_token_id",
        ] {
            eot_ids.extend(id_key(key, None)?);
        }
        let mut add_bos = md
            .get_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(defaults.add_bos);
        let pre = defaults.pre.map_or(PreTokenizer::default(), |s| s.pre);
        if pre == PreTokenizer::Gemma4 {
            // llama.cpp forces BOS on for Gemma 4 whatever the metadata says.
            add_bos = true;
        }
        let add_eos = md
            .get_bool("tokenizer.ggml.add_eos_token")?
            .unwrap_or(false);
        let add_space_prefix = md
            .get_bool("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(defaults.add_space_prefix);
        // llama.cpp recognises Phi-3 by its name.
        let name = md.get_str("general.name")?.unwrap_or("").to_lowercase();
        let rstrip_specials = name.contains("phi-3") || name.contains("phi3");
        let vocab = Vocab {
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
            kind: defaults.kind,
            pre,
            ignore_merges: defaults.pre.is_some_and(|s| s.ignore_merges),
            merges: Vec::new(),
            rstrip_specials,
        };
        Tokenizer::build(vocab, merges)
    }

    /// The tokenization algorithm.
    pub fn kind(&self) -> TokenizerKind {
        if self.bpe.is_some() {
            TokenizerKind::Bpe
        } else {
            TokenizerKind::Spm
        }
    }

    /// The BPE word-splitting rule (`None` for SPM).
    pub fn pre_tokenizer(&self) -> Option<PreTokenizer> {
        self.bpe.as_ref().map(Bpe::pre)
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
                Fragment::Text(s) if self.bpe.is_some() => {
                    if let Some(bpe) = &self.bpe {
                        bpe.encode(s, &self.token_to_id, &self.byte_tokens, &mut out);
                    }
                    prev_special = false;
                }
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
        let mut accepted: Vec<(usize, usize, Option<u32>)> = Vec::new();
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
                accepted.push((p, len, Some(id)));
                from = p + len;
                if self.rstrip_specials && !RSTRIP_EXCEPT.contains(&pat) {
                    // Phi-3: the token swallows the ASCII white space after it, up to the next
                    // claimed token (llama.cpp's RSTRIP attribute, C `isspace`).
                    let ws_end = (from..bytes.len())
                        .find(|&i| claim_end[i] != 0 || !is_c_space(bytes[i]))
                        .unwrap_or(bytes.len());
                    if ws_end > from {
                        claim_end[from..ws_end].iter_mut().for_each(|c| *c = ws_end);
                        accepted.push((from, ws_end - from, None));
                        from = ws_end;
                    }
                }
            }
        }
        accepted.sort_unstable();
        let mut frags = Vec::with_capacity(accepted.len() * 2 + 1);
        let mut at = 0;
        for (pos, len, id) in accepted {
            if pos > at {
                frags.push(Fragment::Text(&text[at..pos]));
            }
            // `None`: white space stripped after a token.
            frags.extend(id.map(Fragment::Token));
            at = pos + len;
        }
        if at < text.len() {
            frags.push(Fragment::Text(&text[at..]));
        }
        frags
    }
}

/// C `isspace` in the "C" locale, which llama.cpp's strip attributes use.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

/// llama.cpp's end-of-generation set: eos, the metadata's eot/eom/FIM ids, and the tokens it
/// recognises by text, which are forced to CONTROL (they never print and parse as specials).
/// Its two text-based exceptions are kept: "<|end|>" is an ordinary token next to "<|return|>"
/// and "<|call|>" (or "<|calls|>" and "<|flush|>"), and "</s>" is a NORMAL token in vocabularies
/// with "<|tool_response>" (Gemma 4) or "<|plamo:eos|>".
///
/// Unlike llama.cpp, FIM texts are recognised even when the metadata names a FIM id too.
fn detect_eog(
    token_to_id: &FastMap<u32>,
    types: &mut [TokenType],
    metadata_ids: &[u32],
    eos_id: Option<u32>,
) -> Vec<u32> {
    let mut eog: Vec<u32> = metadata_ids.to_vec();
    for text in EOG_TEXTS {
        if let Some(&id) = token_to_id.get(*text) {
            eog.push(id);
            types[id as usize] = TokenType::Control;
        }
    }
    for &(text, ends_generation) in FIM_TEXTS {
        if let Some(&id) = token_to_id.get(text) {
            types[id as usize] = TokenType::Control;
            if ends_generation {
                eog.push(id);
            }
        }
    }
    eog.extend(eos_id);
    eog.sort_unstable();
    eog.dedup();

    let eog_id = |text: &str| {
        token_to_id
            .get(text)
            .copied()
            .filter(|id| eog.binary_search(id).is_ok())
    };
    let has = |text: &str| eog_id(text).is_some();
    let call = has("<|call|>") || has("<|calls|>");
    let end = eog_id("<|end|>").filter(|_| call && (has("<|return|>") || has("<|flush|>")));
    let slash_s = eog_id("</s>").filter(|_| has("<|tool_response>") || has("<|plamo:eos|>"));
    for (id, ty) in [(end, TokenType::UserDefined), (slash_s, TokenType::Normal)] {
        if let Some(id) = id {
            eog.retain(|&e| e != id);
            types[id as usize] = ty;
        }
    }
    eog
}
