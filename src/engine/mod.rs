//! Engine layer: per-model request queues, the batching dispatcher, the batching policy.
//!
//! The server hands a [`GenerationRequest`] to a model's [`ModelHandle`]; the model's dispatcher
//! thread batches it with every other running sequence, runs the forward pass on the rayon pool,
//! samples, and sends [`Event`]s back through a bounded per-request channel. Dropping the
//! returned [`Stream`] cancels the sequence; its KV blocks are freed within one step.

mod dispatcher;
pub mod policy;
mod request;

pub use dispatcher::{EngineOptions, EngineStats, ModelHandle};
pub use request::{Event, GenerationRequest, Stream, SubmitError, TokenEvent};
