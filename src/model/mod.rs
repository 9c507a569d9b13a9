//! Model layer: the shared decoder ([`Model`]) and the architectures it runs (Gemma 3, Llama,
//! Qwen2, Qwen3; one small file each, see [`arch`]), KV cache, tokenizer, sampler.
//! Single-threaded logic (the pool's threads only inside the forward pass, through
//! [`crate::team`]), no channels, no locks.

pub mod arch;
pub mod chat;
pub mod config;
pub mod decoder;
pub mod detokenizer;
pub mod error;
pub mod gemma3;
pub mod generate;
pub mod kv_cache;
pub mod llama;
pub mod ops;
pub mod qwen2;
pub mod qwen3;
pub mod sampler;
pub mod scratch;
pub mod stop;
pub mod tokenizer;

pub use arch::Arch;
pub use config::ModelConfig;
pub use decoder::{Model, ModelOptions, State};
pub use error::ModelError;
pub use kv_cache::BatchToken;
