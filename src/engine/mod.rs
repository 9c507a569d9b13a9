//! Engine layer: per-model request queues, the batching dispatcher, the batching policy, and
//! the model manager (catalog, registry with its LRU cache, loader threads).
//!
//! The server hands a [`GenerationRequest`] to a model's [`ModelHandle`]; the model's dispatcher
//! thread batches it with every other running sequence, runs the forward pass on the rayon pool,
//! samples, and sends [`Event`]s back through a bounded per-request channel. Dropping the
//! returned [`Stream`] cancels the sequence; its KV blocks are freed within one step.
//!
//! Which models exist is the [`Catalog`]; which are loaded is the [`Registry`]: a request
//! [`Registry::acquire`]s a [`Lease`] on its model (loading it on a `load-N` thread first if
//! needed), and the registry evicts least recently used idle models to stay within its bounds.

pub mod admission;
pub mod catalog;
mod dispatcher;
mod loader;
pub mod policy;
pub mod registry;
mod request;

pub use catalog::{Catalog, CatalogError, ModelEntry};
pub use dispatcher::{EngineOptions, EngineStats, ModelHandle};
pub use registry::{
    AcquireError, AdminError, Lease, LoadedModel, ModelEvent, ModelState, ModelStatus, Phase,
    Progress, Registry, RegistryOptions, Subscription, WhenFull,
};
pub use request::{Event, GenerationRequest, Stream, SubmitError, Ticket, TokenEvent};

/// The message of a caught panic (a `&str` or `String` payload; anything else is "unknown").
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
