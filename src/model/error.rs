//! Errors of the model layer: a bad file (from the GGUF reader), a file the model code cannot
//! run, or a batch that breaks the model's limits.

use crate::gguf::GgufError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The file is valid GGUF but not something this model code runs.
    #[error("{path}: {what}")]
    Unsupported { path: String, what: String },
    /// A batch asked for something outside the limits set at load.
    #[error("{0}")]
    Batch(String),
}
