//! Unicode character classes for the BPE pre-tokenizers: the general-category groups the
//! pre-tokenizer regexes name (`\p{L}`, `\p{N}`, `\p{P}`, `\p{S}`, `\p{M}`) and `\s`
//! (the White_Space property, as llama.cpp's table).
//!
//! The ranges come from `regex-syntax`'s Unicode tables, once per process: code points below
//! U+10000 get a direct lookup table (64 KB), the rest a binary search over merged ranges.
//! llama.cpp generates its own table from the UnicodeData file; the two differ only on code
//! points assigned in different Unicode versions.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

/// The class bits of one character. Every character has at least one bit (`OTHER` when it is in
/// none of the named groups), so zero means "outside the text".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct CharClass(u8);

impl CharClass {
    pub const NONE: CharClass = CharClass(0);
    pub const LETTER: u8 = 1;
    pub const NUMBER: u8 = 2;
    pub const PUNCT: u8 = 4;
    pub const SYMBOL: u8 = 8;
    pub const MARK: u8 = 16;
    pub const SPACE: u8 = 32;
    /// Separators that are not white space, controls, format characters, unassigned.
    pub const OTHER: u8 = 64;

    #[inline]
    pub fn of(c: char) -> CharClass {
        table().get(c)
    }

    #[inline]
    pub fn any(self, bits: u8) -> bool {
        self.0 & bits != 0
    }

    #[inline]
    pub fn is_letter(self) -> bool {
        self.any(Self::LETTER)
    }

    #[inline]
    pub fn is_number(self) -> bool {
        self.any(Self::NUMBER)
    }

    #[inline]
    pub fn is_space(self) -> bool {
        self.any(Self::SPACE)
    }

    /// Inside the text (not the "past the end" class).
    #[inline]
    pub fn exists(self) -> bool {
        self.0 != 0
    }
}

struct Table {
    /// Class bits of U+0000..=U+FFFF.
    bmp: Box<[u8]>,
    /// (first, last, bits) for the code points above U+FFFF that are not `OTHER`, sorted.
    astral: Vec<(u32, u32, u8)>,
}

impl Table {
    #[inline]
    fn get(&self, c: char) -> CharClass {
        let cp = c as u32;
        if let Some(&bits) = self.bmp.get(cp as usize) {
            return CharClass(bits);
        }
        let i = self.astral.partition_point(|&(_, last, _)| last < cp);
        match self.astral.get(i) {
            Some(&(first, _, bits)) if first <= cp => CharClass(bits),
            _ => CharClass(CharClass::OTHER),
        }
    }
}

/// The code point ranges of a regex class such as `\p{L}` (always a Unicode class).
fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    let hir = regex_syntax::parse(pattern).expect("built-in class pattern parses");
    match hir.kind() {
        HirKind::Class(Class::Unicode(cls)) => cls
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => panic!("{pattern} is not a Unicode class: {other:?}"),
    }
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let groups = [
            (r"\p{L}", CharClass::LETTER),
            (r"\p{N}", CharClass::NUMBER),
            (r"\p{P}", CharClass::PUNCT),
            (r"\p{S}", CharClass::SYMBOL),
            (r"\p{M}", CharClass::MARK),
        ];
        let mut bmp = vec![0u8; 0x1_0000].into_boxed_slice();
        let mut astral: Vec<(u32, u32, u8)> = Vec::new();
        let mut mark = |first: u32, last: u32, bits: u8, astral: &mut Vec<(u32, u32, u8)>| {
            for cp in first..=last.min(0xFFFF) {
                bmp[cp as usize] |= bits;
            }
            if last > 0xFFFF {
                astral.push((first.max(0x1_0000), last, bits));
            }
        };
        for (pattern, bits) in groups {
            for (first, last) in class_ranges(pattern) {
                mark(first, last, bits, &mut astral);
            }
        }
        // Unicode White_Space (no white-space character is in the groups above).
        for (first, last) in class_ranges(r"\s") {
            mark(first, last, CharClass::SPACE, &mut astral);
        }
        for b in bmp.iter_mut() {
            if *b == 0 {
                *b = CharClass::OTHER;
            }
        }
        // The groups are disjoint, so sorted ranges do not overlap.
        astral.sort_unstable();
        Table { bmp, astral }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_of_sample_characters() {
        let c = CharClass::of;
        assert!(c('a').is_letter() && c('Ж').is_letter() && c('東').is_letter());
        assert!(c('7').is_number() && c('٣').is_number() && c('Ⅻ').is_number());
        assert!(c('!').any(CharClass::PUNCT) && c('「').any(CharClass::PUNCT));
        assert!(c('$').any(CharClass::SYMBOL) && c('🚀').any(CharClass::SYMBOL));
        assert!(c('\u{301}').any(CharClass::MARK));
        for s in [' ', '\t', '\n', '\u{b}', '\u{85}', '\u{a0}', '\u{3000}'] {
            assert!(c(s).is_space(), "{s:?}");
        }
        assert!(!c('\u{1c}').is_space(), "U+001C is not White_Space");
        assert_eq!(c('\u{200d}'), CharClass(CharClass::OTHER));
        assert!(c('𝐀').is_letter(), "astral letter");
        assert!(c('\u{10FFFF}').exists());
    }
}
