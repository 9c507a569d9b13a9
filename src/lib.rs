//! Ryzanstein: an LLM inference engine and server for quantized GGUF models on the CPU.
//!
//! Brief overview, from the bottom layer up (see `docs/ARCHITECTURE.md`):
//! - [`gguf`] — a capped, validated reader of GGUF files over mmap ([`gguf::GgufFile`]).
//! - [`kernels`] — pure kernels on slices: block formats, dequantization, activation
//!   quantization, dot products (scalar reference + AVX2), the batched matrix multiply.
//! - [`tensor`] — a typed view of one weight tensor that picks the kernel.
//! - [`model`] — architectures (Gemma 3), KV cache, tokenizer, sampler, the generation loop.
//! - [`engine`] — per-model request queues and the batching dispatcher.
//! - [`client`] — a blocking client for any OpenAI-compatible server over a bounded pool of
//!   keep-alive connections; [`bench`] is the load generator.
//! - [`server`] — the OpenAI-compatible HTTP server over the engine; [`api`] holds its wire
//!   types and [`config`] its settings and limits.
//!
//! - [`team`] — how a forward pass uses the rayon pool: every thread at once, the followers
//!   spinning between the pass's parallel loops.
//!
//! Nothing in this crate below the engine layer spawns threads, blocks or locks; the only
//! parallelism is the pool's threads inside the kernels and the forward pass ([`team`]).

pub mod api;
pub mod bench;
pub mod client;
pub mod config;
pub mod engine;
#[doc(hidden)]
pub mod faults;
pub mod gguf;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod server;
pub mod team;
pub mod tensor;
