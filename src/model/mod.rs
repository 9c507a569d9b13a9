//! Model layer: architectures, KV cache, tokenizer, sampler. Single-threaded logic (rayon only
//! inside the forward pass), no channels, no locks.

pub mod chat;
pub mod config;
pub mod detokenizer;
pub mod error;
pub mod gemma3;
pub mod generate;
pub mod kv_cache;
pub mod ops;
pub mod sampler;
pub mod scratch;
pub mod stop;
pub mod tokenizer;

pub use config::ModelConfig;
pub use error::ModelError;
pub use gemma3::{Gemma3, ModelOptions, State};
pub use kv_cache::BatchToken;
