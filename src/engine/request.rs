//! What goes into a model's queue and what comes back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

pub use super::admission::Ticket;
use crate::model::generate::FinishReason;
use crate::model::sampler::{SamplingParams, TokenLogprob};

/// One sequence to generate: token ids in, events out.
#[derive(Clone, Debug)]
pub struct GenerationRequest {
    /// Prompt token ids (BOS included if the model wants one). Must not be empty.
    pub prompt: Vec<u32>,
    /// Most new tokens; generation also ends at the context length.
    pub max_tokens: usize,
    /// Sampling, including the seed and how many top log-probabilities to report.
    pub sampling: SamplingParams,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Token events are sent in groups of up to this many (at most half the event buffer),
    /// the last group when the sequence ends; 1 sends each as it is sampled. A reader that
    /// needs the tokens only at the end (a whole answer with no stop strings) asks for large
    /// groups: each send to a reader blocked on the channel wakes its thread, and those
    /// wake-ups preempt the compute threads mid-step.
    pub token_group: usize,
}

/// One generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent {
    pub id: u32,
    /// Log-probability of `id` under the sampling distribution.
    pub logprob: f32,
    /// The `sampling.n_logprobs` most likely tokens, most likely first (empty if none asked).
    pub top: Vec<TokenLogprob>,
}

/// What the dispatcher tells the request's owner, in order: `Admitted`, any `Prefill`
/// progress, `Token`s, then exactly one `Finished` or `Failed`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The sequence left the queue and got its KV memory; `queue_time` was spent waiting.
    Admitted {
        queue_time: Duration,
    },
    /// `done` of `total` prompt tokens are prefilled (sent after each chunk of a long prompt).
    Prefill {
        done: usize,
        total: usize,
    },
    Token(TokenEvent),
    /// Generation ended (`Stop`: an end-of-generation token, not sent as a `Token`).
    Finished {
        reason: FinishReason,
        prompt_tokens: usize,
        /// Of the prompt tokens, those whose keys and values came from the prefix cache.
        cached_tokens: usize,
        completion_tokens: usize,
    },
    /// The model failed on this sequence; nothing more follows.
    Failed(String),
}

/// Why a request was not queued.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("the request queue of model '{0}' is full")]
    QueueFull(String),
    #[error("model '{0}' is shutting down")]
    ShuttingDown(String),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {n_prompt} tokens; the context holds {n_ctx}")]
    PromptTooLong { n_prompt: usize, n_ctx: usize },
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    BadToken { id: u32, n_vocab: usize },
    #[error("{0}")]
    Sampling(String),
    /// The predicted wait for a slot exceeds the limit (`EngineOptions::max_queue_wait`).
    #[error(
        "model '{model}' is busy: a request now would wait about {predicted_wait_s:.1} s for a \
         slot, over the limit of {max_wait_s:.1} s; retry in {retry_after_s} s"
    )]
    Overloaded {
        model: String,
        predicted_wait_s: f64,
        max_wait_s: f64,
        retry_after_s: u64,
    },
    /// The prompt needs more KV memory than the whole pool holds.
    #[error(
        "the prompt has {n_prompt} tokens; the KV pool of this server holds {pool_positions} \
         positions"
    )]
    TooLargeForPool {
        n_prompt: usize,
        pool_positions: usize,
    },
}

/// The receiving end of one request. Dropping it (or calling [`Stream::cancel`]) cancels the
/// sequence: the dispatcher drops it and frees its KV memory at its next step.
#[derive(Debug)]
pub struct Stream {
    pub(crate) rx: Receiver<Event>,
    pub(crate) cancel: Arc<AtomicBool>,
    pub(crate) submitted_at: Instant,
}

impl Stream {
    /// The next event; `None` once the dispatcher has dropped the sequence.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// The next event, waiting at most `timeout`; `Ok(None)` on timeout (for keep-alive pings),
    /// `Err(())` once the dispatcher has dropped the sequence.
    #[allow(clippy::result_unit_err)]
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Event>, ()> {
        match self.rx.recv_timeout(timeout) {
            Ok(e) => Ok(Some(e)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(()),
        }
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// The event channel, to wait on several streams at once (`crossbeam_channel::Select`;
    /// the server does for `n` > 1).
    pub fn receiver(&self) -> &Receiver<Event> {
        &self.rx
    }

    /// When the request was handed to [`super::ModelHandle::submit`].
    pub fn submitted_at(&self) -> Instant {
        self.submitted_at
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// The dispatcher's end of one request.
pub(crate) struct Queued {
    pub req: GenerationRequest,
    pub tx: Sender<Event>,
    pub cancel: Arc<AtomicBool>,
    pub submitted_at: Instant,
    /// The request's share of the queued work in its engine's admission gauge, given back
    /// when it gets a slot (or leaves the queue any other way); it also says when the
    /// request was admitted and what wait was predicted then.
    pub ticket: Option<Ticket>,
}

impl Queued {
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}
