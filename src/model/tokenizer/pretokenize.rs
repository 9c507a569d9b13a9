//! BPE pre-tokenizers: split a raw-text fragment into the words that BPE merges within.
//!
//! Each GGUF names its pre-tokenizer in `tokenizer.ggml.pre`; llama.cpp maps the name to a list of
//! regexes applied one after the other, each splitting every piece left by the previous one
//! (matches become pieces and so does the text between them — nothing is dropped). The regexes
//! are fixed, so instead of a regex engine each one is a hand-written scanner here:
//!
//! - the whole-pattern splitters [`gpt2`] (`'s|'t|…| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`)
//!   and [`llama3`] (`(?i:'s|…)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//!   \s*[\r\n]+|\s+(?!\S)|\s+`, with Qwen 2's single digits and Qwen 3.5's marks-as-letters);
//! - small leftmost-first matchers for the simple patterns (`\s?X+`, `X`, `[0-9]{3}`, `\s+$`).
//!
//! Character classes follow llama.cpp: `\s` is Unicode White_Space, and a non-ASCII white-space
//! character matches nothing but `\s` (llama.cpp rewrites it to U+000B before running
//! `std::regex`, so it never falls inside a literal range such as deepseek's `　-。`).
//!
//! Boundary: knows nothing of vocabularies or merges; works on one fragment at a time.

use std::ops::Range;

use super::char_class::CharClass;

/// The word-splitting rule of a BPE vocabulary (one per llama.cpp pre-tokenizer family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PreTokenizer {
    /// llama.cpp's fallback for "default" or a missing name: punctuation runs, the GPT-2 rule,
    /// digit runs, then groups of three ASCII digits.
    #[default]
    Default,
    /// GPT-2 (also MPT, OLMo, Phi-2 …).
    Gpt2,
    /// Llama 3: digits in groups of up to three, contractions case-insensitive.
    Llama3,
    /// Qwen 2: as Llama 3 with single digits.
    Qwen2,
    /// Qwen 3.5: as Qwen 2, with combining marks counted as letters.
    Qwen35,
    /// StarCoder, Refact, Command-R …: each digit alone, then the GPT-2 rule.
    Starcoder,
    /// Falcon: punctuation runs (with '`'), the GPT-2 rule, groups of three ASCII digits.
    Falcon,
    /// DeepSeek LLM: newlines, Latin/Greek/Cyrillic… letter runs, ASCII and full-width
    /// punctuation runs, trailing white space, CJK runs, digit runs.
    DeepseekLlm,
    /// DeepSeek Coder: newlines, letter runs, punctuation runs, CJK runs, single digits.
    DeepseekCoder,
    /// Gemma 4 (SentencePiece-style BPE over raw UTF-8 with "▁" for spaces): only runs of
    /// newlines and runs of everything else.
    Gemma4,
}

/// How a `tokenizer.ggml.pre` name configures BPE (llama.cpp's table, restricted to the rules
/// implemented here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PreSpec {
    pub pre: PreTokenizer,
    /// A word that is itself a token is emitted whole, without merging (Llama 3).
    pub ignore_merges: bool,
    /// The default of `add_bos_token` when the metadata does not say.
    pub add_bos: bool,
}

/// Every supported `tokenizer.ggml.pre` name. Names that llama.cpp maps to the same regexes are
/// aliases here; names it gives other regexes or extra behaviour (separator tokens, stripped
/// specials) are not listed, so they are refused rather than tokenized differently.
const PRE_NAMES: &[(&str, PreTokenizer, bool, bool)] = {
    use PreTokenizer::*;
    &[
        ("default", Default, false, false),
        ("llama3", Llama3, true, true),
        ("llama-v3", Llama3, true, true),
        ("llama-bpe", Llama3, true, true),
        ("falcon3", Llama3, true, true),
        ("falcon-h1", Llama3, true, true),
        ("pixtral", Llama3, true, true),
        ("midm-2.0", Llama3, true, true),
        ("lfm2", Llama3, true, true),
        ("dbrx", Llama3, false, false),
        ("smaug-bpe", Llama3, false, false),
        ("deepseek-llm", DeepseekLlm, false, false),
        ("deepseek-coder", DeepseekCoder, false, false),
        ("falcon", Falcon, false, false),
        ("mpt", Gpt2, false, false),
        ("gpt-2", Gpt2, false, false),
        ("phi-2", Gpt2, false, false),
        ("gigachat", Gpt2, false, false),
        ("a.x-4.0", Gpt2, false, false),
        ("mellum", Gpt2, false, false),
        ("olmo", Gpt2, false, false),
        ("jais", Gpt2, false, false),
        ("trillion", Gpt2, false, false),
        ("granite-docling", Gpt2, false, false),
        ("exaone4", Gpt2, false, false),
        ("starcoder", Starcoder, false, false),
        ("refact", Starcoder, false, false),
        ("command-r", Starcoder, false, false),
        ("smollm", Starcoder, false, false),
        ("codeshell", Starcoder, false, false),
        ("exaone", Starcoder, false, false),
        ("minerva-7b", Starcoder, false, false),
        ("mellum2", Starcoder, false, false),
        ("qwen2", Qwen2, false, false),
        ("deepseek-r1-qwen", Qwen2, false, false),
        ("kormo", Qwen2, false, false),
        ("f2llmv2", Qwen2, false, false),
        ("megrez", Qwen2, false, false),
        ("stablelm2", Qwen2, false, false),
        ("hunyuan", Qwen2, false, false),
        ("solar-open", Qwen2, false, false),
        ("qwen35", Qwen35, false, false),
        // Gemma 4 also forces add_bos on, whatever the metadata says (see `mod.rs`).
        ("gemma4", Gemma4, false, true),
    ]
};

impl PreSpec {
    pub fn from_name(name: &str) -> Option<PreSpec> {
        PRE_NAMES
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|&(_, pre, ignore_merges, add_bos)| PreSpec {
                pre,
                ignore_merges,
                add_bos,
            })
    }
}

impl PreTokenizer {
    /// The `tokenizer.ggml.pre` names this crate accepts for byte-level BPE.
    pub fn supported_names() -> impl Iterator<Item = &'static str> {
        PRE_NAMES
            .iter()
            .map(|(n, ..)| *n)
            .filter(|n| *n != "gemma4")
    }

    /// The rule a `tokenizer.ggml.pre` name selects, if supported.
    pub fn from_name(name: &str) -> Option<PreTokenizer> {
        PreSpec::from_name(name).map(|s| s.pre)
    }

    /// Whether words are GPT-2 byte-encoded before merging (every rule but Gemma 4's, which
    /// merges raw UTF-8 with "▁" for spaces and falls back to "<0xXX>" tokens).
    pub fn byte_encoded(self) -> bool {
        self != PreTokenizer::Gemma4
    }

    /// Split `text` into words, returned as byte ranges that cover `text` in order.
    pub fn split(self, text: &str) -> Vec<Range<usize>> {
        let t = Chars::new(text);
        // One piece: the whole text.
        let mut segs: Vec<Range<usize>> = std::iter::once(0..t.len()).collect();
        for stage in self.stages() {
            let mut next = Vec::with_capacity(segs.len() * 2);
            for seg in segs {
                stage.apply(&t, seg.start, seg.end, &mut next);
            }
            segs = next;
        }
        segs.into_iter()
            .map(|r| t.byte_at[r.start]..t.byte_at[r.end])
            .collect()
    }

    fn stages(self) -> &'static [Stage] {
        use Pred::*;
        use Stage::*;
        const P: u8 = CharClass::PUNCT;
        const N: u8 = CharClass::NUMBER;
        const L: u8 = CharClass::LETTER;
        match self {
            PreTokenizer::Default => &[
                Runs(false, ClassOr(P, "$+<=>^~|")),
                Gpt2,
                Runs(false, Class(N)),
                DigitTriples,
            ],
            PreTokenizer::Gpt2 => &[Gpt2],
            PreTokenizer::Llama3 => &[Llama3 {
                digits_max: 3,
                marks: false,
            }],
            PreTokenizer::Qwen2 => &[Llama3 {
                digits_max: 1,
                marks: false,
            }],
            PreTokenizer::Qwen35 => &[Llama3 {
                digits_max: 1,
                marks: true,
            }],
            PreTokenizer::Starcoder => &[Single(Class(N)), Gpt2],
            PreTokenizer::Falcon => &[Runs(false, ClassOr(P, "$+<=>^~|`")), Gpt2, DigitTriples],
            PreTokenizer::DeepseekLlm => &[
                Single(Newline),
                Runs(true, Ranges(DEEPSEEK_LETTERS)),
                Runs(true, Ranges(DEEPSEEK_PUNCT)),
                TrailingSpace,
                Runs(false, Ranges(CJK)),
                Runs(false, Class(N)),
            ],
            PreTokenizer::DeepseekCoder => &[
                Single(Newline),
                Runs(true, Class(L)),
                Runs(true, Class(P)),
                Runs(false, Ranges(CJK)),
                Single(Class(N)),
            ],
            PreTokenizer::Gemma4 => &[NewlineRuns],
        }
    }
}

/// DeepSeek LLM's letter class, `[A-Za-zµÀ-ÖØ-öø-ƺ…𞤀-𞥃]` in its tokenizer.json.
const DEEPSEEK_LETTERS: &[(u32, u32)] = &[
    (0x0041, 0x005A),
    (0x0061, 0x007A),
    (0x00B5, 0x00B5),
    (0x00C0, 0x00D6),
    (0x00D8, 0x00F6),
    (0x00F8, 0x01BA),
    (0x01BC, 0x01BF),
    (0x01C4, 0x0293),
    (0x0295, 0x02AF),
    (0x0370, 0x0373),
    (0x0376, 0x0377),
    (0x037B, 0x037D),
    (0x037F, 0x037F),
    (0x0386, 0x0386),
    (0x0388, 0x038A),
    (0x038C, 0x038C),
    (0x038E, 0x03A1),
    (0x03A3, 0x03F5),
    (0x03F7, 0x0481),
    (0x048A, 0x052F),
    (0x0531, 0x0556),
    (0x10A0, 0x10C5),
    (0x13A0, 0x13F5),
    (0x13F8, 0x13FD),
    (0x1C90, 0x1CBA),
    (0x1CBD, 0x1CBF),
    (0x1D00, 0x1D2B),
    (0x1D6B, 0x1D77),
    (0x1D79, 0x1D9A),
    (0x1E00, 0x1F15),
    (0x1F18, 0x1F1D),
    (0x1F20, 0x1F45),
    (0x1F48, 0x1F4D),
    (0x1F50, 0x1F57),
    (0x1F59, 0x1F59),
    (0x1F5B, 0x1F5B),
    (0x1F5D, 0x1F5D),
    (0x1F5F, 0x1F7D),
    (0x1F80, 0x1FB4),
    (0x1FB6, 0x1FBC),
    (0x1FBE, 0x1FBE),
    (0x1FC2, 0x1FC4),
    (0x1FC6, 0x1FCC),
    (0x1FD0, 0x1FD3),
    (0x1FD6, 0x1FDB),
    (0x1FE0, 0x1FEC),
    (0x1FF2, 0x1FF4),
    (0x1FF6, 0x1FFC),
    (0x2102, 0x2102),
    (0x2107, 0x2107),
    (0x210A, 0x2113),
    (0x2115, 0x2115),
    (0x2119, 0x211D),
    (0x2124, 0x2124),
    (0x2126, 0x2126),
    (0x2128, 0x2128),
    (0x212A, 0x212D),
    (0x212F, 0x2134),
    (0x2139, 0x2139),
    (0x213C, 0x213F),
    (0x2145, 0x2149),
    (0x214E, 0x214E),
    (0x2183, 0x2184),
    (0x2C00, 0x2C7B),
    (0x2C7E, 0x2CE4),
    (0x2CEB, 0x2CEE),
    (0x2CF2, 0x2CF3),
    (0xA640, 0xA66D),
    (0xA680, 0xA69B),
    (0xA722, 0xA76F),
    (0xA771, 0xA787),
    (0xA78B, 0xA78E),
    (0xAB70, 0xABBF),
    (0xFB00, 0xFB06),
    (0xFB13, 0xFB17),
    (0xFF21, 0xFF3A),
    (0xFF41, 0xFF5A),
    (0x10400, 0x1044F),
    (0x104B0, 0x104D3),
    (0x104D8, 0x104FB),
    (0x10C80, 0x10CB2),
    (0x10CC0, 0x10CF2),
    (0x118A0, 0x118DF),
    (0x1E900, 0x1E943),
];

/// DeepSeek LLM's punctuation class `[!-/:-~！-／：-～‘-‟　-。]` (note `:-~` spans the ASCII
/// letters too).
const DEEPSEEK_PUNCT: &[(u32, u32)] = &[
    (0x0021, 0x002F),
    (0x003A, 0x007E),
    (0xFF01, 0xFF0F),
    (0xFF1A, 0xFF5E),
    (0x2018, 0x201F),
    (0x3000, 0x3002),
];

/// The CJK class of both DeepSeek rules, `[一-龥ࠀ-一가-퟿]`.
const CJK: &[(u32, u32)] = &[(0x4E00, 0x9FA5), (0x0800, 0x4E00), (0xAC00, 0xD7FF)];

/// The text as code points, with their classes and byte offsets.
struct Chars {
    chars: Vec<char>,
    class: Vec<CharClass>,
    /// Byte offset of each char, plus the text length at the end.
    byte_at: Vec<usize>,
}

impl Chars {
    fn new(text: &str) -> Chars {
        let n = text.len();
        let mut chars = Vec::with_capacity(n);
        let mut class = Vec::with_capacity(n);
        let mut byte_at = Vec::with_capacity(n + 1);
        for (i, c) in text.char_indices() {
            chars.push(c);
            class.push(CharClass::of(c));
            byte_at.push(i);
        }
        byte_at.push(n);
        Chars {
            chars,
            class,
            byte_at,
        }
    }

    fn len(&self) -> usize {
        self.chars.len()
    }
}

/// A view of one piece `[lo, hi)`: lookups outside it see nothing, as the regex would.
struct Piece<'t> {
    t: &'t Chars,
    lo: usize,
    hi: usize,
}

impl Piece<'_> {
    #[inline]
    fn class(&self, i: usize) -> CharClass {
        if (self.lo..self.hi).contains(&i) {
            self.t.class[i]
        } else {
            CharClass::NONE
        }
    }

    #[inline]
    fn char(&self, i: usize) -> Option<char> {
        if (self.lo..self.hi).contains(&i) {
            Some(self.t.chars[i])
        } else {
            None
        }
    }

    /// First index at or after `i` whose char does not satisfy `f`.
    #[inline]
    fn run_end(&self, mut i: usize, f: impl Fn(usize) -> bool) -> usize {
        while i < self.hi && f(i) {
            i += 1;
        }
        i
    }

    /// A character class predicate evaluated at `i`.
    #[inline]
    fn pred(&self, p: Pred, i: usize) -> bool {
        let Some(c) = self.char(i) else {
            return false;
        };
        let class = self.t.class[i];
        match p {
            Pred::Class(bits) => class.any(bits),
            Pred::ClassOr(bits, ascii) => class.any(bits) || (c.is_ascii() && ascii.contains(c)),
            // llama.cpp matches literal ranges on text where non-ASCII white space became U+000B.
            Pred::Ranges(ranges) => {
                (c.is_ascii() || !class.is_space())
                    && ranges.iter().any(|&(a, b)| (a..=b).contains(&(c as u32)))
            }
            Pred::Newline => c == '\r' || c == '\n',
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Pred {
    Class(u8),
    /// A class or one of these ASCII characters.
    ClassOr(u8, &'static str),
    /// Literal code point ranges (inclusive).
    Ranges(&'static [(u32, u32)]),
    Newline,
}

#[derive(Clone, Copy, Debug)]
enum Stage {
    Gpt2,
    Llama3 {
        digits_max: usize,
        marks: bool,
    },
    /// `\s?X+` (with the optional leading white space) or `X+`.
    Runs(bool, Pred),
    /// `X`: every matching character alone.
    Single(Pred),
    /// `[0-9][0-9][0-9]`.
    DigitTriples,
    /// `\s+$`.
    TrailingSpace,
    /// `[^\n]+|[\n]+`.
    NewlineRuns,
}

impl Stage {
    fn apply(self, t: &Chars, lo: usize, hi: usize, out: &mut Vec<Range<usize>>) {
        let p = Piece { t, lo, hi };
        match self {
            Stage::Gpt2 => gpt2(&p, out),
            Stage::Llama3 { digits_max, marks } => llama3(&p, digits_max, marks, out),
            Stage::Runs(lead_space, pred) => matches(&p, out, |i| {
                if lead_space && p.class(i).is_space() && p.pred(pred, i + 1) {
                    Some(p.run_end(i + 1, |j| p.pred(pred, j)))
                } else if p.pred(pred, i) {
                    Some(p.run_end(i, |j| p.pred(pred, j)))
                } else {
                    None
                }
            }),
            Stage::Single(pred) => matches(&p, out, |i| p.pred(pred, i).then_some(i + 1)),
            Stage::DigitTriples => matches(&p, out, |i| {
                (i..i + 3)
                    .all(|j| p.char(j).is_some_and(|c| c.is_ascii_digit()))
                    .then_some(i + 3)
            }),
            Stage::TrailingSpace => {
                let mut start = hi;
                while start > lo && t.class[start - 1].is_space() {
                    start -= 1;
                }
                push(out, lo, start);
                push(out, start, hi);
            }
            Stage::NewlineRuns => {
                let mut i = lo;
                while i < hi {
                    let nl = t.chars[i] == '\n';
                    let end = p.run_end(i, |j| (t.chars[j] == '\n') == nl);
                    push(out, i, end);
                    i = end;
                }
            }
        }
    }
}

#[inline]
fn push(out: &mut Vec<Range<usize>>, start: usize, end: usize) {
    if end > start {
        out.push(start..end);
    }
}

/// Split like a regex iterator: at each position, `m` gives the end of the match starting
/// there, if any (leftmost-first); matches and the gaps between them become pieces.
fn matches(p: &Piece, out: &mut Vec<Range<usize>>, m: impl Fn(usize) -> Option<usize>) {
    let (mut gap, mut i) = (p.lo, p.lo);
    while i < p.hi {
        match m(i) {
            Some(end) => {
                debug_assert!(end > i && end <= p.hi);
                push(out, gap, i);
                push(out, i, end);
                i = end;
                gap = end;
            }
            None => i += 1,
        }
    }
    push(out, gap, p.hi);
}

/// The length of an English contraction (`'s 't 'm 'd 're 've 'll`) starting at `i`, if any.
fn contraction(p: &Piece, i: usize, any_case: bool) -> Option<usize> {
    if p.char(i) != Some('\'') {
        return None;
    }
    let lower = |j: usize| {
        p.char(j)
            .map(|c| if any_case { c.to_ascii_lowercase() } else { c })
    };
    match (lower(i + 1)?, lower(i + 2)) {
        ('s' | 't' | 'm' | 'd', _) => Some(2),
        ('r', Some('e')) | ('v', Some('e')) | ('l', Some('l')) => Some(3),
        _ => None,
    }
}

/// How a run of white space starting at `i` ends (shared tail of both whole-pattern rules):
/// `\s*[\r\n]+` when `newlines` (ends after the last newline in the run), else `\s+(?!\S)`
/// (all but the last when more text follows) or `\s+`; a lone character otherwise.
fn space_end(p: &Piece, i: usize, newlines: bool) -> usize {
    let end = p.run_end(i, |j| p.class(j).is_space());
    if newlines {
        if let Some(last_nl) = (i..end)
            .rev()
            .find(|&j| matches!(p.char(j), Some('\r' | '\n')))
        {
            return last_nl + 1;
        }
    }
    let n = end - i;
    if n > 1 && end < p.hi {
        end - 1
    } else if n > 0 {
        end
    } else {
        i + 1
    }
}

/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
fn gpt2(p: &Piece, out: &mut Vec<Range<usize>>) {
    const WLN: u8 = CharClass::SPACE | CharClass::LETTER | CharClass::NUMBER;
    let other = |c: CharClass| c.exists() && !c.any(WLN);
    let mut i = p.lo;
    while i < p.hi {
        let end = if let Some(n) = contraction(p, i, false) {
            i + n
        } else {
            // An optional single ' ' before a letter, number or "other" run.
            let skip = usize::from(p.char(i) == Some(' '));
            let c = p.class(i + skip);
            if c.is_letter() {
                p.run_end(i + skip, |j| p.class(j).is_letter())
            } else if c.is_number() {
                p.run_end(i + skip, |j| p.class(j).is_number())
            } else if other(c) {
                p.run_end(i + skip, |j| other(p.class(j)))
            } else {
                space_end(p, i, false)
            }
        };
        out.push(i..end);
        i = end;
    }
}

/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
/// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+` — with `\p{N}` alone when `digits_max`
/// is 1 (Qwen 2) and `[\p{L}\p{M}]` for letters when `marks` (Qwen 3.5).
fn llama3(p: &Piece, digits_max: usize, marks: bool, out: &mut Vec<Range<usize>>) {
    let letter_bits = if marks {
        CharClass::LETTER | CharClass::MARK
    } else {
        CharClass::LETTER
    };
    let not_other = CharClass::SPACE | CharClass::NUMBER | letter_bits;
    let other = |c: CharClass| c.exists() && !c.any(not_other);
    let newline = |j: usize| matches!(p.char(j), Some('\r' | '\n'));
    let mut i = p.lo;
    while i < p.hi {
        let c = p.class(i);
        let end = if let Some(n) = contraction(p, i, true) {
            i + n
        } else if !newline(i)
            && !c.is_number()
            && (c.any(letter_bits) || p.class(i + 1).any(letter_bits))
        {
            // One optional non-letter, non-digit, non-newline prefix, then letters.
            p.run_end(i + 1, |j| p.class(j).any(letter_bits))
        } else if c.is_number() {
            // At most `digits_max`: scanning the whole run each time would be quadratic.
            let stop = (i + digits_max).min(p.hi);
            (i..stop).find(|&j| !p.class(j).is_number()).unwrap_or(stop)
        } else if other(if p.char(i) == Some(' ') {
            p.class(i + 1)
        } else {
            c
        }) {
            let skip = usize::from(p.char(i) == Some(' '));
            let run = p.run_end(i + skip, |j| other(p.class(j)));
            p.run_end(run, newline)
        } else {
            space_end(p, i, true)
        };
        out.push(i..end);
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: PreTokenizer, text: &str) -> Vec<String> {
        pre.split(text)
            .into_iter()
            .map(|r| text[r].to_string())
            .collect()
    }

    #[test]
    fn gpt2_rule() {
        let w = words(PreTokenizer::Gpt2, "Hello world's  3.14\t\tok  \n x");
        assert_eq!(
            w,
            ["Hello", " world", "'s", " ", " 3", ".", "14", "\t", "\t", "ok", "  \n", " x"]
        );
        // Contractions are case-sensitive in GPT-2; trailing white space stays whole.
        assert_eq!(
            words(PreTokenizer::Gpt2, "I'M ok   "),
            ["I", "'", "M", " ok", "   "]
        );
    }

    #[test]
    fn llama3_and_qwen_rules() {
        let text = "I'M 12345 ab!!\n\n  x\t  y  ";
        assert_eq!(
            words(PreTokenizer::Llama3, text),
            ["I", "'M", " ", "123", "45", " ab", "!!\n\n", " ", " x", "\t ", " y", "  "]
        );
        assert_eq!(
            words(PreTokenizer::Qwen2, "a12"),
            ["a", "1", "2"],
            "single digits"
        );
        // A combining mark joins the letters only for Qwen 3.5.
        assert_eq!(words(PreTokenizer::Qwen2, "e\u{301}x"), ["e", "\u{301}x"]);
        assert_eq!(words(PreTokenizer::Qwen35, "e\u{301}x"), ["e\u{301}x"]);
    }

    #[test]
    fn default_and_falcon_rules() {
        // Punctuation runs first, then GPT-2, then digit runs, then ASCII digit triples.
        assert_eq!(
            words(PreTokenizer::Default, "a+=b 1234567 x"),
            ["a", "+=", "b", " ", "123", "456", "7", " x"]
        );
        assert_eq!(words(PreTokenizer::Falcon, "a`b"), ["a", "`", "b"]);
    }

    #[test]
    fn deepseek_rules() {
        assert_eq!(
            words(PreTokenizer::DeepseekCoder, "ab 12\n東京"),
            ["ab", " ", "1", "2", "\n", "東京"]
        );
        // Non-ASCII white space is only `\s`: U+3000 is not in the punctuation range.
        assert_eq!(
            words(PreTokenizer::DeepseekLlm, "hi\u{3000}!  "),
            ["hi", "\u{3000}!", "  "]
        );
    }

    #[test]
    fn pieces_cover_the_text() {
        let text = "Ünïcödé 東京 🚀\r\n\t 'll 9 ,,, \u{a0}x";
        for &(name, ..) in PRE_NAMES {
            let pre = PreTokenizer::from_name(name).expect("listed name");
            let ranges = pre.split(text);
            assert_eq!(ranges.first().map(|r| r.start), Some(0));
            assert_eq!(ranges.last().map(|r| r.end), Some(text.len()));
            assert!(ranges
                .windows(2)
                .all(|w| w[0].end == w[1].start && w[0].start < w[0].end));
        }
        assert!(PreTokenizer::Gpt2.split("").is_empty());
    }
}
