//! Streaming detokenizer: turns ids into text one token at a time without splitting a character.
//!
//! A BYTE token ("<0xE2>") can carry a fraction of a UTF-8 character, so the text of a token is
//! not always printable on its own. [`IncrementalDecoder`] keeps the incomplete tail of the byte
//! stream and returns only complete characters. An invalid sequence becomes U+FFFD at once (the
//! same replacement `String::from_utf8_lossy` makes), so the stream never stalls; concatenating
//! every returned chunk plus [`IncrementalDecoder::finish`] equals `Tokenizer::decode` of the
//! whole sequence (for vocabularies without `add_space_prefix`).

use super::tokenizer::Tokenizer;

/// Incremental id-to-text decoder. Reuses its buffers: after warm-up, `push` does not allocate.
#[derive(Debug, Default)]
pub struct IncrementalDecoder {
    render_special: bool,
    /// Bytes of an incomplete trailing character (at most 3).
    pending: Vec<u8>,
    /// The text returned by the last call.
    out: String,
}

impl IncrementalDecoder {
    /// `render_special`: show CONTROL tokens (like "<end_of_turn>") as their text.
    pub fn new(render_special: bool) -> Self {
        IncrementalDecoder {
            render_special,
            pending: Vec::with_capacity(8),
            out: String::with_capacity(64),
        }
    }

    /// Feed one token; returns the text completed by it (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> &str {
        self.out.clear();
        let piece = tok.token_to_piece(id, self.render_special);
        if self.pending.is_empty() {
            // Fast path: most pieces are whole characters.
            let rest = Self::take_valid(piece, &mut self.out);
            self.pending.extend_from_slice(rest);
        } else {
            self.pending.extend_from_slice(piece);
            let pending = std::mem::take(&mut self.pending);
            let rest = Self::take_valid(&pending, &mut self.out);
            let keep = rest.len();
            self.pending = pending;
            let start = self.pending.len() - keep;
            self.pending.drain(..start);
        }
        &self.out
    }

    /// Flush: an incomplete trailing sequence becomes U+FFFD. Resets the decoder.
    pub fn finish(&mut self) -> &str {
        self.out.clear();
        if !self.pending.is_empty() {
            self.out.push(char::REPLACEMENT_CHARACTER);
            self.pending.clear();
        }
        &self.out
    }

    /// Forget any pending bytes (e.g. when a request is cancelled and the decoder reused).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.out.clear();
    }

    /// Append the complete characters of `bytes` to `out` (invalid sequences as U+FFFD) and
    /// return the incomplete tail that may still become valid with more bytes.
    fn take_valid<'b>(mut bytes: &'b [u8], out: &mut String) -> &'b [u8] {
        loop {
            match std::str::from_utf8(bytes) {
                Ok(s) => {
                    out.push_str(s);
                    return &[];
                }
                Err(e) => {
                    let (good, bad) = bytes.split_at(e.valid_up_to());
                    // Safe by construction: `valid_up_to` bytes are valid UTF-8.
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        // Truncated at the end: wait for more bytes.
                        None => return bad,
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            bytes = &bad[n..];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::{Tokenizer, Vocab};

    fn byte_vocab() -> Tokenizer {
        let mut tokens = vec!["<eos>".to_string(), "<bos>".to_string()];
        let mut types = vec![3, 3];
        for b in 0..=255u32 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
        }
        tokens.push("▁hi".into());
        types.push(1);
        let n = tokens.len();
        Tokenizer::from_vocab(Vocab {
            tokens,
            scores: vec![0.0; n],
            token_types: types,
            bos_id: Some(1),
            eos_id: Some(0),
            add_bos: true,
            ..Vocab::default()
        })
        .expect("valid vocab")
    }

    fn byte_id(b: u8) -> u32 {
        2 + b as u32
    }

    #[test]
    fn multibyte_char_split_across_byte_tokens() {
        let t = byte_vocab();
        let mut d = IncrementalDecoder::new(false);
        // "€" = E2 82 AC, then "▁hi".
        assert_eq!(d.push(&t, byte_id(0xE2)), "");
        assert_eq!(d.push(&t, byte_id(0x82)), "");
        assert_eq!(d.push(&t, byte_id(0xAC)), "€");
        assert_eq!(d.push(&t, 258), " hi");
        assert_eq!(d.push(&t, 0), "", "control token not rendered");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn invalid_bytes_do_not_stall() {
        let t = byte_vocab();
        let mut d = IncrementalDecoder::new(false);
        let ids = [
            byte_id(0xE2),
            byte_id(0x41),
            byte_id(0xFF),
            byte_id(0xC3),
            258,
            byte_id(0xF0),
        ];
        let mut got = String::new();
        for &id in &ids {
            got.push_str(d.push(&t, id));
        }
        got.push_str(d.finish());
        assert_eq!(got, t.decode(&ids));
        assert_eq!(got, "\u{FFFD}A\u{FFFD}\u{FFFD} hi\u{FFFD}");
    }
}
