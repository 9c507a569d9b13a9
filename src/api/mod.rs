//! The OpenAI-compatible wire format: request parsing with per-field errors
//! ([`request`]), response and stream-chunk shapes ([`response`]), and the error body
//! ([`ApiError`]).
//!
//! Layer 0: plain data in and out. It knows the limits ([`crate::config::Limits`]) but nothing
//! of models, tokenizers or sockets; the server maps these types onto the engine.

pub mod error;
pub mod request;
pub mod response;

pub use error::ApiError;
pub use request::{parse_and_validate, ParsedBody};
