//! The one error type of the GGUF reader: which file, which field, what was wrong.

use std::fmt;
use std::path::{Path, PathBuf};

/// An error reading or validating a GGUF file. Its message names the file and the field.
#[derive(Debug)]
pub struct GgufError {
    /// The file (or a label for in-memory bytes).
    pub path: PathBuf,
    /// The field that was bad, e.g. `header.version`, `metadata[3].value`,
    /// `tensor 'blk.0.attn_q.weight'.offset`.
    pub field: String,
    /// What was wrong with it.
    pub kind: GgufErrorKind,
}

/// What went wrong.
#[derive(Debug)]
pub enum GgufErrorKind {
    /// The operating system refused to open, stat or map the file.
    Io(std::io::Error),
    /// The file ended in the middle of the field.
    Truncated { needed: u64, available: u64 },
    /// A length, count or size read from the file is over the reader's cap.
    TooLarge { value: u64, max: u64 },
    /// The field holds a value that is not allowed.
    Invalid(String),
    /// A metadata key exists but holds another type than the one asked for.
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    /// A required metadata key or tensor is missing.
    Missing,
}

impl GgufError {
    pub(crate) fn new(path: &Path, field: impl Into<String>, kind: GgufErrorKind) -> GgufError {
        GgufError {
            path: path.to_path_buf(),
            field: field.into(),
            kind,
        }
    }

    pub(crate) fn invalid(path: &Path, field: impl Into<String>, why: impl Into<String>) -> Self {
        GgufError::new(path, field, GgufErrorKind::Invalid(why.into()))
    }
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: ", self.path.display(), self.field)?;
        match &self.kind {
            GgufErrorKind::Io(e) => write!(f, "{e}"),
            GgufErrorKind::Truncated { needed, available } => write!(
                f,
                "file is truncated (needs {needed} more bytes, {available} left)"
            ),
            GgufErrorKind::TooLarge { value, max } => {
                write!(f, "value {value} is over the limit of {max}")
            }
            GgufErrorKind::Invalid(why) => f.write_str(why),
            GgufErrorKind::WrongType { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            GgufErrorKind::Missing => f.write_str("missing"),
        }
    }
}

impl std::error::Error for GgufError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            GgufErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}
