//! One generation request, end to end in its worker (DESIGN.md "one request", steps 2 and 4):
//! submit every choice to the engine, turn each choice's token events into text (UTF-8 safe,
//! stop strings applied), and either stream them as SSE events, flushed one by one, or answer
//! with the whole body once every choice has finished.
//!
//! A choice that meets a stop string drops its engine stream, which cancels its sequence. A
//! client that disconnects mid-stream makes the next write fail; returning drops every stream
//! of the request, so the engine frees their KV blocks at its next step.
//!
//! A request still running at its deadline (`request_deadline_ms` after it reached a worker)
//! is cancelled the same way: every wait for an event ends at the deadline at the latest, and
//! then the streams are dropped and the client gets a 504, or, if its stream had started, a
//! final SSE error event and `data: [DONE]`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Select;

use crate::api::response::{Choice, Endpoint, Header, LogprobEntry, TokenText, Usage};
use crate::api::ApiError;
use crate::engine::admission::RETRY_AFTER_MAX_S;
use crate::engine::{Event, GenerationRequest, Stream, SubmitError, Ticket, TokenEvent};
use crate::model::detokenizer::IncrementalDecoder;
use crate::model::generate::FinishReason;
use crate::model::sampler::SamplingParams;
use crate::model::stop::StopStrings;
use crate::model::tokenizer::Tokenizer;

use super::http::{HttpRequest, SseWriter};
use super::routes::{Log, Reply};
use super::State;
use crate::engine::LoadedModel as Loaded;

/// Everything a generation request asks for, validated and tokenized.
pub(crate) struct Plan {
    pub endpoint: Endpoint,
    pub prompts: Vec<Vec<u32>>,
    /// Choices per prompt.
    pub n: usize,
    pub max_tokens: usize,
    /// Sampling for choice 0 of each prompt; choice j uses `seed + j`.
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// `Some(k)`: report each token's log-prob and its k most likely alternatives.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
}

/// Holds one of the `max_concurrent_requests` slots while alive (taken before the request
/// waits for its model, so waiting requests cannot take the spare workers).
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    pub(crate) fn acquire(st: &'a State) -> Result<InFlight<'a>, ApiError> {
        let cap = st.cfg().limits.max_concurrent_requests;
        if st.in_flight.fetch_add(1, Ordering::SeqCst) >= cap {
            st.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(InFlight::refusal(st));
        }
        Ok(InFlight(&st.in_flight))
    }

    /// The answer to a generation request past the cap: 503 with a `Retry-After` of when the
    /// default model's queue will have drained (the configured `retry_after_s` if it is not
    /// loaded).
    pub(crate) fn refusal(st: &State) -> ApiError {
        st.metrics.refused_in_flight.fetch_add(1, Ordering::Relaxed);
        let drained_s = st
            .registry
            .resolve(None)
            .ok()
            .and_then(|i| st.registry.loaded_model(i))
            .map(|m| m.handle.gauge().predicted_wait_s().ceil() as u64);
        ApiError::unavailable(
            format!(
                "the server is serving its limit of {} generation requests; retry later",
                st.cfg().limits.max_concurrent_requests
            ),
            drained_s.map_or(st.cfg().limits.retry_after_s, |s| {
                s.clamp(1, RETRY_AFTER_MAX_S)
            }),
        )
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One choice being generated.
struct ChoiceRun {
    index: usize,
    /// `None` once finished (or cancelled by a stop string).
    stream: Option<Stream>,
    decoder: IncrementalDecoder,
    stops: StopStrings,
    /// Non-streamed: the whole text so far.
    text: String,
    /// Bytes of text released so far (log-prob `text_offset`s).
    text_len: usize,
    /// The request asked for log-probs.
    logprobs_on: bool,
    /// Non-streamed: every entry; streamed: entries not yet sent.
    logprobs: Vec<LogprobEntry>,
    finish: Option<&'static str>,
    prompt_tokens: usize,
    /// Prompt tokens the prefix cache supplied.
    cached_tokens: usize,
    completion_tokens: usize,
    last_token_at: Option<Instant>,
}

/// What one event changed in a choice.
#[derive(Default)]
struct Update {
    text: String,
    finished: bool,
    failed: Option<String>,
    prefill: bool,
    token: bool,
}

/// Shared by the event handlers of one request.
struct Ctx<'a> {
    st: &'a State,
    tok: &'a Tokenizer,
    n_logprobs: Option<usize>,
    t0: Instant,
    /// When the request is cancelled (`None`: no deadline).
    deadline: Option<Instant>,
}

impl Ctx<'_> {
    /// `idle`, cut short so that no wait outlasts the deadline.
    fn wait(&self, idle: Duration) -> Duration {
        self.deadline.map_or(idle, |d| {
            idle.min(d.saturating_duration_since(Instant::now()))
        })
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Cancels every choice (dropping a stream frees its sequence's KV blocks at the engine's
    /// next step) and says why.
    fn cancel_at_deadline(&self, runs: &mut [ChoiceRun], log: &mut Log) -> ApiError {
        for r in runs.iter_mut() {
            r.stream = None;
        }
        self.st
            .metrics
            .deadlines_exceeded
            .fetch_add(1, Ordering::Relaxed);
        log.note = Some("deadline exceeded");
        ApiError::deadline_exceeded(self.st.cfg().limits.request_deadline_ms)
    }
}

/// The request's deadline: `request_deadline_ms` after `start` (none if 0, or too far off to
/// represent).
fn deadline(st: &State, start: Instant) -> Option<Instant> {
    match st.cfg().limits.request_deadline_ms {
        0 => None,
        ms => start.checked_add(Duration::from_millis(ms)),
    }
}

impl ChoiceRun {
    fn on_event(&mut self, ev: Option<Event>, cx: &Ctx, log: &mut Log) -> Update {
        let mut up = Update::default();
        match ev {
            Some(Event::Admitted { queue_time }) => {
                log.queue = Some(log.queue.map_or(queue_time, |q| q.max(queue_time)));
            }
            Some(Event::Prefill { .. }) => up.prefill = true,
            Some(Event::Token(t)) => self.on_token(&t, cx, log, &mut up),
            Some(Event::Finished {
                reason,
                prompt_tokens,
                cached_tokens,
                completion_tokens,
            }) => {
                self.prompt_tokens = prompt_tokens;
                self.cached_tokens = cached_tokens;
                self.completion_tokens = completion_tokens;
                self.finish_text(&mut up);
                if self.finish.is_none() {
                    self.finish = Some(match reason {
                        FinishReason::Length => "length",
                        FinishReason::Stop | FinishReason::Cancelled => "stop",
                    });
                }
                self.stream = None;
                up.finished = true;
            }
            Some(Event::Failed(msg)) => {
                self.stream = None;
                up.failed = Some(msg);
            }
            None => {
                self.stream = None;
                up.failed = Some("the engine dropped the sequence".into());
            }
        }
        up
    }

    fn on_token(&mut self, t: &TokenEvent, cx: &Ctx, log: &mut Log, up: &mut Update) {
        let now = Instant::now();
        up.token = true;
        match self.last_token_at {
            Some(prev) => cx.st.metrics.itl.observe((now - prev).as_secs_f64()),
            None if log.ttft.is_none() => {
                let ttft = now - cx.t0;
                log.ttft = Some(ttft);
                cx.st.metrics.ttft.observe(ttft.as_secs_f64());
            }
            None => {}
        }
        self.last_token_at = Some(now);
        self.completion_tokens += 1;
        if let Some(k) = cx.n_logprobs {
            self.logprobs.push(LogprobEntry {
                chosen: token_text(cx.tok, t.id, t.logprob),
                top: t
                    .top
                    .iter()
                    .take(k)
                    .map(|x| token_text(cx.tok, x.token, x.logprob))
                    .collect(),
            });
        }
        let piece = self.decoder.push(cx.tok, t.id);
        let r = self.stops.push(piece);
        up.text.push_str(r.text);
        if r.stopped.is_some() {
            // Dropping the stream cancels the sequence at the engine's next step.
            self.stream = None;
            self.finish = Some("stop");
            up.finished = true;
        }
    }

    /// End of the token stream: release what the decoder and the stop matcher held back.
    fn finish_text(&mut self, up: &mut Update) {
        let tail = self.decoder.finish();
        let r = self.stops.push(tail);
        up.text.push_str(r.text);
        if r.stopped.is_some() {
            self.finish = Some("stop");
        }
        up.text.push_str(self.stops.finish());
    }
}

/// A token's text and bytes for log-prob reports.
fn token_text(tok: &Tokenizer, id: u32, logprob: f32) -> TokenText {
    let bytes = tok.token_to_piece(id, true).to_vec();
    TokenText {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        bytes,
        logprob,
    }
}

/// How many token events the engine groups per send (`GenerationRequest::token_group`). A
/// whole answer with no stop strings needs its tokens only at the end, so it takes them in
/// large groups (the engine caps a group at half the event buffer) and its handler thread is
/// not woken for every token; a stream, or stop strings that may end the answer early, take
/// each token as it comes.
fn token_group(plan: &Plan) -> usize {
    if plan.stream || !plan.stop.is_empty() {
        1
    } else {
        usize::MAX
    }
}

/// The API error for a request the engine did not queue. A refusal's `Retry-After` comes
/// from the engine's predicted wait: when the wait would fit again (`Overloaded`), or when
/// the queue ahead will have drained (`QueueFull`).
fn submit_error(e: SubmitError, m: &Loaded, retry_after_s: u64) -> ApiError {
    match e {
        SubmitError::QueueFull(_) => {
            let drained_s = m.handle.gauge().predicted_wait_s().ceil() as u64;
            ApiError::unavailable(
                "the request queue is full; retry later",
                drained_s.clamp(1, RETRY_AFTER_MAX_S),
            )
        }
        SubmitError::Overloaded { retry_after_s, .. } => {
            ApiError::unavailable(e.to_string(), retry_after_s)
        }
        SubmitError::ShuttingDown(_) => {
            ApiError::unavailable("the server is shutting down", retry_after_s)
        }
        SubmitError::EmptyPrompt
        | SubmitError::PromptTooLong { .. }
        | SubmitError::BadToken { .. }
        | SubmitError::TooLargeForPool { .. } => ApiError::invalid("prompt", e.to_string()),
        SubmitError::Sampling(m) => ApiError::invalid("sampling", m),
    }
}

/// Submits every choice (prompt-major: choice `p * n + j`). On any failure the choices
/// already submitted are dropped, which cancels them.
fn submit_all(
    st: &State,
    m: &Loaded,
    plan: &Plan,
    admitted: Option<&Ticket>,
) -> Result<Vec<ChoiceRun>, ApiError> {
    let limits = &st.cfg().limits;
    let mut runs = Vec::with_capacity(plan.prompts.len() * plan.n);
    for prompt in &plan.prompts {
        for j in 0..plan.n {
            let sampling = SamplingParams {
                seed: plan.sampling.seed.wrapping_add(j as u64),
                ..plan.sampling.clone()
            };
            let gen = GenerationRequest {
                prompt: prompt.clone(),
                max_tokens: plan.max_tokens,
                sampling,
                ignore_eos: plan.ignore_eos,
                token_group: token_group(plan),
            };
            let stream = m
                .handle
                .submit_with(gen, admitted)
                .map_err(|e| submit_error(e, m, limits.retry_after_s))?;
            let stops = StopStrings::new(&plan.stop, limits.stop_max, limits.stop_bytes_max)
                .map_err(|e| ApiError::invalid("stop", e.to_string()))?;
            runs.push(ChoiceRun {
                index: runs.len(),
                stream: Some(stream),
                decoder: IncrementalDecoder::new(false),
                stops,
                text: String::new(),
                text_len: 0,
                logprobs_on: plan.logprobs.is_some(),
                logprobs: Vec::new(),
                finish: None,
                prompt_tokens: prompt.len(),
                cached_tokens: 0,
                completion_tokens: 0,
                last_token_at: None,
            });
        }
    }
    Ok(runs)
}

/// Waits up to `timeout` for the next event of any unfinished choice: `Some((choice, event))`,
/// event `None` if that choice's channel closed; `None` on timeout or when all are finished.
fn next_event(runs: &[ChoiceRun], timeout: Duration) -> Option<(usize, Option<Event>)> {
    let mut sel = Select::new();
    let mut which = Vec::with_capacity(runs.len());
    for (i, r) in runs.iter().enumerate() {
        if let Some(s) = &r.stream {
            sel.recv(s.receiver());
            which.push(i);
        }
    }
    if which.is_empty() {
        return None;
    }
    let op = sel.select_timeout(timeout).ok()?;
    let i = which[op.index()];
    let rx = runs[i].stream.as_ref().map(Stream::receiver)?;
    Some((i, op.recv(rx).ok()))
}

fn usage(plan: &Plan, runs: &[ChoiceRun]) -> Usage {
    Usage {
        prompt_tokens: plan.prompts.iter().map(Vec::len).sum(),
        cached_tokens: runs.iter().map(|r| r.cached_tokens).sum(),
        completion_tokens: runs.iter().map(|r| r.completion_tokens).sum(),
    }
}

/// Serves one generation request; answers it (whole or streamed) unless it returns an error
/// before anything was sent.
pub(crate) fn run(
    st: &State,
    m: &Loaded,
    req: &mut HttpRequest,
    plan: Plan,
    log: &mut Log,
) -> Result<Reply, ApiError> {
    // Admitted on arrival by expected wait (its place held in the queue count since): hand
    // its place to the engine's own count, and do not refuse it for the wait again.
    let admitted = log.admitted.take();
    let mut runs = submit_all(st, m, &plan, admitted.as_ref())?;
    drop(admitted);
    let cx = Ctx {
        st,
        tok: &m.tokenizer,
        n_logprobs: plan.logprobs,
        t0: log.start,
        deadline: deadline(st, log.start),
    };
    let header = Header {
        endpoint: plan.endpoint,
        id: format!("{}-{:016x}", Header::id_prefix(plan.endpoint), log.id),
        created: super::unix_now(),
        model: m.id.clone(),
    };
    let result = if plan.stream {
        stream(&cx, req, &plan, &header, &mut runs, log).map(|()| Reply::Done(200))
    } else {
        collect(&cx, &mut runs, log).map(|()| {
            let choices: Vec<Choice> = runs.iter().map(to_choice).collect();
            Reply::Json(header.full(&choices, usage(&plan, &runs)))
        })
    };
    let u = usage(&plan, &runs);
    log.prompt_tokens = u.prompt_tokens;
    log.completion_tokens = u.completion_tokens;
    let metrics = &st.metrics;
    metrics
        .prompt_tokens
        .fetch_add(u.prompt_tokens as u64, Ordering::Relaxed);
    metrics
        .generation_tokens
        .fetch_add(u.completion_tokens as u64, Ordering::Relaxed);
    metrics.e2e.observe(log.start.elapsed().as_secs_f64());
    result
}

fn to_choice(r: &ChoiceRun) -> Choice {
    Choice {
        index: r.index,
        text: r.text.clone(),
        finish_reason: r.finish.unwrap_or("stop"),
        logprobs: r.logprobs_on.then(|| r.logprobs.clone()),
    }
}

/// Non-streamed: wait for every choice to finish.
fn collect(cx: &Ctx, runs: &mut [ChoiceRun], log: &mut Log) -> Result<(), ApiError> {
    let idle = Duration::from_millis(cx.st.cfg().limits.ping_interval_ms);
    while runs.iter().any(|r| r.stream.is_some()) {
        if cx.past_deadline() {
            return Err(cx.cancel_at_deadline(runs, log));
        }
        let Some((i, ev)) = next_event(runs, cx.wait(idle)) else {
            continue;
        };
        let up = runs[i].on_event(ev, cx, log);
        if let Some(msg) = up.failed {
            if cx.st.shutting_down.load(Ordering::Relaxed) {
                // Cut by the drain deadline: another replica (or this one, restarted) can
                // serve it.
                let retry = cx.st.cfg().limits.retry_after_s;
                return Err(ApiError::unavailable(
                    format!("generation failed: {msg}"),
                    retry,
                ));
            }
            return Err(ApiError::internal(format!("generation failed: {msg}")));
        }
        let r = &mut runs[i];
        r.text_len += up.text.len();
        r.text.push_str(&up.text);
    }
    Ok(())
}

/// Streamed: one SSE event per token (or per piece of released text), flushed at once.
fn stream(
    cx: &Ctx,
    req: &mut HttpRequest,
    plan: &Plan,
    header: &Header,
    runs: &mut [ChoiceRun],
    log: &mut Log,
) -> Result<(), ApiError> {
    let Ok(mut sse) = req.into_sse() else {
        return client_gone(cx, log);
    };
    match stream_events(cx, &mut sse, plan, header, runs, log) {
        Err(_) => return client_gone(cx, log),
        Ok(Ended::Deadline) => {
            let e = cx.cancel_at_deadline(runs, log);
            // The status line is out: the error goes in the stream, which still ends cleanly.
            if sse.data(&e.to_json()).and_then(|()| sse.done()).is_err() {
                return client_gone(cx, log);
            }
            return Ok(());
        }
        Ok(Ended::Finished) => {}
    }
    let finished = if plan.include_usage {
        sse.data(&header.usage_chunk(usage(plan, runs)))
            .and_then(|()| sse.done())
    } else {
        sse.done()
    };
    if finished.is_err() {
        return client_gone(cx, log);
    }
    Ok(())
}

fn client_gone(cx: &Ctx, log: &mut Log) -> Result<(), ApiError> {
    cx.st
        .metrics
        .client_disconnects
        .fetch_add(1, Ordering::Relaxed);
    log.note = Some("client disconnected");
    Ok(())
}

/// How the events of a stream ended (when the client did not go away).
enum Ended {
    Finished,
    Deadline,
}

fn stream_events(
    cx: &Ctx,
    sse: &mut SseWriter,
    plan: &Plan,
    header: &Header,
    runs: &mut [ChoiceRun],
    log: &mut Log,
) -> std::io::Result<Ended> {
    if plan.endpoint == Endpoint::Chat {
        for r in runs.iter() {
            sse.data(&header.chunk(r.index, "", None, None, true, 0))?;
        }
    }
    let ping_every = Duration::from_millis(cx.st.cfg().limits.ping_interval_ms);
    let mut last_write = Instant::now();
    while runs.iter().any(|r| r.stream.is_some()) {
        if cx.past_deadline() {
            return Ok(Ended::Deadline);
        }
        let Some((i, ev)) = next_event(runs, cx.wait(ping_every)) else {
            if last_write.elapsed() >= ping_every {
                sse.ping()?;
                last_write = Instant::now();
            }
            continue;
        };
        let up = runs[i].on_event(ev, cx, log);
        if up.prefill {
            sse.ping()?;
            last_write = Instant::now();
        }
        if let Some(msg) = up.failed {
            let e = ApiError::internal(format!("generation failed: {msg}"));
            sse.data(&e.to_json())?;
            last_write = Instant::now();
            continue;
        }
        let r = &mut runs[i];
        let send_logprobs = r.logprobs_on && !r.logprobs.is_empty();
        if up.text.is_empty() && !send_logprobs && !up.finished {
            continue;
        }
        let lps = send_logprobs.then_some(r.logprobs.as_slice());
        let finish = if up.finished { r.finish } else { None };
        let chunk = header.chunk(r.index, &up.text, lps, finish, false, r.text_len);
        r.text_len += up.text.len();
        r.logprobs.clear();
        sse.data(&chunk)?;
        last_write = Instant::now();
    }
    Ok(Ended::Finished)
}
