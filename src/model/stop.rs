//! Stop strings over streamed text.
//!
//! Generated text arrives in chunks (one token's worth at a time) and a stop string may span
//! chunks, so text that could be the beginning of a stop string is held back until it is known
//! not to be one. When a stop string matches, the text before it is released and the stop
//! string and everything after it are dropped. The held text is always shorter than the longest
//! stop string, so each `push` costs O((chunk + longest) × number of stops × longest) at worst.

/// Errors configuring stop strings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StopError {
    #[error("{given} stop strings given; at most {max} are allowed")]
    TooMany { given: usize, max: usize },
    #[error("stop string {index} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        index: usize,
        len: usize,
        max: usize,
    },
    #[error("stop string {index} is empty")]
    Empty { index: usize },
}

/// What one `push` released.
#[derive(Debug, PartialEq, Eq)]
pub struct StopResult<'a> {
    /// Text safe to emit now.
    pub text: &'a str,
    /// Index of the stop string that matched, if one did (generation should end).
    pub stopped: Option<usize>,
}

/// Matcher for a set of stop strings over a text stream.
#[derive(Debug, Clone)]
pub struct StopStrings {
    stops: Vec<String>,
    /// Text received but not yet released (a possible prefix of a stop string).
    held: String,
    /// The text returned by the last call.
    out: String,
    stopped: Option<usize>,
}

impl StopStrings {
    /// `max_count`/`max_len` (bytes) cap what a request may ask for.
    pub fn new<S: AsRef<str>>(
        stops: &[S],
        max_count: usize,
        max_len: usize,
    ) -> Result<StopStrings, StopError> {
        if stops.len() > max_count {
            return Err(StopError::TooMany {
                given: stops.len(),
                max: max_count,
            });
        }
        for (index, s) in stops.iter().enumerate() {
            let len = s.as_ref().len();
            if len == 0 {
                return Err(StopError::Empty { index });
            }
            if len > max_len {
                return Err(StopError::TooLong {
                    index,
                    len,
                    max: max_len,
                });
            }
        }
        let longest = stops.iter().map(|s| s.as_ref().len()).max().unwrap_or(0);
        Ok(StopStrings {
            stops: stops.iter().map(|s| s.as_ref().to_string()).collect(),
            held: String::with_capacity(longest * 2 + 16),
            out: String::with_capacity(64),
            stopped: None,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Whether a stop string has matched; further input is ignored.
    pub fn stopped(&self) -> Option<usize> {
        self.stopped
    }

    /// Add streamed text; returns the text that can be emitted now.
    pub fn push(&mut self, chunk: &str) -> StopResult<'_> {
        self.out.clear();
        if self.stopped.is_some() {
            return StopResult {
                text: &self.out,
                stopped: self.stopped,
            };
        }
        if self.stops.is_empty() {
            self.out.push_str(chunk);
            return StopResult {
                text: &self.out,
                stopped: None,
            };
        }
        self.held.push_str(chunk);
        // Earliest match wins; at the same position, the lowest index.
        let mut best: Option<(usize, usize)> = None;
        for (i, s) in self.stops.iter().enumerate() {
            if let Some(pos) = self.held.find(s.as_str()) {
                if best.is_none_or(|(p, _)| pos < p) {
                    best = Some((pos, i));
                }
            }
        }
        if let Some((pos, i)) = best {
            self.out.push_str(&self.held[..pos]);
            self.held.clear();
            self.stopped = Some(i);
            return StopResult {
                text: &self.out,
                stopped: self.stopped,
            };
        }
        let keep = self.partial_suffix_len();
        let cut = self.held.len() - keep;
        self.out.push_str(&self.held[..cut]);
        self.held.drain(..cut);
        StopResult {
            text: &self.out,
            stopped: None,
        }
    }

    /// End of stream: release the held text (unless a stop string matched).
    pub fn finish(&mut self) -> &str {
        self.out.clear();
        if self.stopped.is_none() {
            self.out.push_str(&self.held);
        }
        self.held.clear();
        &self.out
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop string.
    /// Suffixes start on a char boundary, so the released part is always valid text.
    fn partial_suffix_len(&self) -> usize {
        let h = self.held.as_str();
        let mut best = 0;
        for s in &self.stops {
            let max = (s.len() - 1).min(h.len());
            for len in (best + 1..=max).rev() {
                let start = h.len() - len;
                if h.is_char_boundary(start) && s.as_bytes().starts_with(&h.as_bytes()[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], chunks: &[&str]) -> (String, Option<usize>) {
        let mut m = StopStrings::new(stops, 4, 32).expect("valid stops");
        let mut out = String::new();
        for c in chunks {
            let r = m.push(c);
            out.push_str(r.text);
            if r.stopped.is_some() {
                return (out, r.stopped);
            }
        }
        out.push_str(m.finish());
        (out, None)
    }

    #[test]
    fn stop_across_chunks() {
        assert_eq!(
            run(&["<end>"], &["hello <e", "n", "d> world"]),
            ("hello ".to_string(), Some(0))
        );
        assert_eq!(
            run(&["\n\n", "User:"], &["a\n", "b Us", "er", ": x"]),
            ("a\nb ".to_string(), Some(1))
        );
    }

    #[test]
    fn partial_prefix_is_released_when_it_fails() {
        let mut m = StopStrings::new(&["abc"], 4, 32).expect("valid");
        assert_eq!(m.push("xxab").text, "xx");
        assert_eq!(m.push("d").text, "abd");
        assert_eq!(m.push("a").text, "");
        assert_eq!(m.finish(), "a");
        assert_eq!(
            run(&["abc"], &["ab", "ab", "c!"]),
            ("ab".to_string(), Some(0))
        );
    }

    #[test]
    fn multibyte_and_caps() {
        assert_eq!(
            run(&["é!"], &["caf", "é", "é!"]),
            ("café".to_string(), Some(0))
        );
        assert_eq!(run(&["zz"], &["añb"]), ("añb".to_string(), None));
        assert!(matches!(
            StopStrings::new(&["a", "b"], 1, 8),
            Err(StopError::TooMany { .. })
        ));
        assert!(matches!(
            StopStrings::new(&["abcdef"], 4, 3),
            Err(StopError::TooLong { .. })
        ));
        assert!(matches!(
            StopStrings::new(&[""], 4, 3),
            Err(StopError::Empty { .. })
        ));
        // No stops: everything passes through at once.
        assert_eq!(run(&[], &["a", "b"]), ("ab".to_string(), None));
    }

    #[test]
    fn earliest_match_wins() {
        assert_eq!(
            run(&["world", "lo w"], &["hello world"]),
            ("hel".to_string(), Some(1))
        );
    }
}
