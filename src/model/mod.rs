//! Model layer: architectures, KV cache, tokenizer, sampler. Single-threaded logic (rayon only
//! inside the forward pass), no channels, no locks.

pub mod detokenizer;
pub mod sampler;
pub mod stop;
pub mod tokenizer;
