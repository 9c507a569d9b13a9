//! Generating one sequence end to end: prefill the prompt in chunks, then sample and decode token
//! by token, turning tokens into text incrementally and checking stop tokens, stop strings and
//! the token limit. Used by `ryzanstein generate`; the serving engine drives the same pieces
//! (sampler, detokenizer, stop strings) per sequence from its dispatcher.

use std::time::{Duration, Instant};

use super::decoder::{Model, State};
use super::detokenizer::IncrementalDecoder;
use super::kv_cache::BatchToken;
use super::sampler::{Sampler, SamplerError, SamplingParams, TokenLogprob};
use super::stop::{StopError, StopStrings};
use super::tokenizer::Tokenizer;
use super::ModelError;

/// Most stop strings one generation may have.
pub const STOP_STRINGS_MAX: usize = 16;
/// Longest stop string, in bytes.
pub const STOP_STRING_BYTES_MAX: usize = 256;

/// What to generate after the prompt.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (for benchmarks).
    pub ignore_eos: bool,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller asked to stop.
    Cancelled,
}

/// One generated token with its log-probability and, if asked, the top alternatives.
#[derive(Clone, Debug)]
pub struct GeneratedToken {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<TokenLogprob>,
}

/// The outcome of one generation.
#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<GeneratedToken>,
    pub text: String,
    pub finish: FinishReason,
    pub n_prompt: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error(transparent)]
    Stop(#[from] StopError),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("prompt of {n_prompt} tokens plus {max_tokens} new tokens does not fit the context of {n_ctx}")]
    ContextFull {
        n_prompt: usize,
        max_tokens: usize,
        n_ctx: usize,
    },
}

/// Generates from `prompt` in sequence slot 0 of `state`. `on_text` receives each piece of text
/// as soon as it is final; returning `false` stops generation.
pub fn generate(
    model: &Model,
    state: &mut State,
    tok: &Tokenizer,
    prompt: &[u32],
    p: &GenerateParams,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation, GenerateError> {
    let n_ctx = model.options().n_ctx;
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    if prompt.len() + p.max_tokens > n_ctx {
        return Err(GenerateError::ContextFull {
            n_prompt: prompt.len(),
            max_tokens: p.max_tokens,
            n_ctx,
        });
    }
    let mut sampler = Sampler::new(p.sampling.clone(), model.config().n_vocab)?;
    let mut stops = StopStrings::new(&p.stop, STOP_STRINGS_MAX, STOP_STRING_BYTES_MAX)?;
    let mut decoder = IncrementalDecoder::new(false);
    let mut history: Vec<u32> = Vec::with_capacity(prompt.len() + p.max_tokens);
    history.extend_from_slice(prompt);
    let mut out = Generation {
        tokens: Vec::with_capacity(p.max_tokens),
        text: String::new(),
        finish: FinishReason::Length,
        n_prompt: prompt.len(),
        prefill_time: Duration::ZERO,
        decode_time: Duration::ZERO,
    };

    let t0 = Instant::now();
    let mut logits = prefill(model, state, prompt)?;
    out.prefill_time = t0.elapsed();
    let t1 = Instant::now();
    while out.tokens.len() < p.max_tokens {
        let s = sampler.sample(logits, &history)?;
        let id = s.token;
        out.tokens.push(GeneratedToken {
            id,
            logprob: s.logprob,
            top: s.top_logprobs.to_vec(),
        });
        if tok.is_eog(id) && !p.ignore_eos {
            out.finish = FinishReason::Stop;
            break;
        }
        history.push(id);
        let released = stops.push(decoder.push(tok, id));
        out.text.push_str(released.text);
        let go_on = on_text(released.text);
        if released.stopped.is_some() {
            out.finish = FinishReason::Stop;
            break;
        }
        if !go_on {
            out.finish = FinishReason::Cancelled;
            break;
        }
        if out.tokens.len() == p.max_tokens {
            break;
        }
        let b = [BatchToken {
            token: id,
            pos: history.len() - 1,
            seq: 0,
            logits: true,
        }];
        logits = model.forward(state, &b)?;
    }
    if out.finish != FinishReason::Stop || stops.stopped().is_none() {
        let tail = stops.push(decoder.finish()).text.to_string() + stops.finish();
        out.text.push_str(&tail);
        on_text(&tail);
    }
    out.decode_time = t1.elapsed();
    Ok(out)
}

/// Runs the prompt through the model in chunks of at most `max_batch_tokens`; returns the
/// logits of its last token.
fn prefill<'s>(
    model: &Model,
    state: &'s mut State,
    prompt: &[u32],
) -> Result<&'s [f32], ModelError> {
    let chunk = model.options().max_batch_tokens;
    let mut batch = Vec::with_capacity(chunk.min(prompt.len()));
    let n = prompt.len();
    let mut start = 0;
    while start + chunk < n {
        batch.clear();
        batch.extend((start..start + chunk).map(|pos| BatchToken {
            token: prompt[pos],
            pos,
            seq: 0,
            logits: false,
        }));
        model.forward(state, &batch)?;
        start += chunk;
    }
    batch.clear();
    batch.extend((start..n).map(|pos| BatchToken {
        token: prompt[pos],
        pos,
        seq: 0,
        logits: pos + 1 == n,
    }));
    model.forward(state, &batch)
}
