//! One dispatcher thread per loaded model: it owns the model's state (KV cache, scratch), the
//! queue of waiting requests and the running sequences, and runs one forward pass per step.
//!
//! Each step: drop cancelled sequences (their KV blocks return to the pool), admit waiting
//! requests while a sequence slot and KV blocks are free, plan the batch with
//! [`policy::next_batch`], reserve its KV positions (preempting the newest sequence if the pool
//! runs out), run the forward pass inside the rayon pool, sample each sequence that got logits
//! and send its events. A preempted sequence keeps its tokens and sampler and is recomputed
//! later: its output is the same as if it had never been preempted.
//!
//! The prefix cache (`EngineOptions::prefix_cache`): after each step every whole block a
//! sequence has written is named in the KV cache by its chained key (`kv_cache::block_key`),
//! so it outlives the sequence. A sequence entering (new or resumed) attaches the longest
//! cached chain of its tokens and computes only the rest; at each step a prefilling sequence
//! at a block boundary attaches whatever blocks have been cached since. A prompt block that
//! another running sequence is about to compute (`Dispatcher::inflight`) is waited for, not
//! computed twice: two requests with the same new document cost one prefill. A sequence's
//! last, partial block is kept too when it ends (`Dispatcher::tails`): a prompt that goes on
//! from it (a chat's next turn resends the last answer) copies the positions it shares.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use rayon::ThreadPool;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::metrics::{Histogram, LATENCY_BOUNDS_S, SIZE_BOUNDS};
use crate::model::generate::FinishReason;
use crate::model::kv_cache::{block_key, chain_root, tail_key, BlockKey, BLOCK_POSITIONS};
use crate::model::sampler::Sampler;
use crate::model::tokenizer::Tokenizer;
use crate::model::{BatchToken, Model, ModelError, ModelOptions, State};

use super::admission::{self, Gauge, Published, ReleaseRate, StepFit};
use super::panic_message;
use super::policy::{self, Budgets, SeqView, Slice};
use super::request::{Event, GenerationRequest, Queued, Stream, SubmitError, Ticket, TokenEvent};

/// Limits and knobs of one model's engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Context length per sequence (positions).
    pub n_ctx: usize,
    /// Most sequences running at once (KV slots, and logit rows per step).
    pub max_batch_size: usize,
    /// Most tokens in one forward pass.
    pub max_batch_tokens: usize,
    /// Requests waiting for admission, at most; past it `submit` fails at once.
    pub queue_depth: usize,
    /// Bytes of the full-attention KV pool; 0 = room for every slot's whole context.
    pub kv_pool_bytes: usize,
    /// How long an idle dispatcher waits after a first arrival for more (0 = start at once).
    pub batch_window: Duration,
    /// A step that carries decode tokens may take at most this many times a decode-only step
    /// (sets how many prompt tokens ride along).
    pub itl_factor: f64,
    /// Prompts with at most this many tokens left are prefilled whole in one step (one per
    /// step) even past the ITL cap, so short requests do not queue behind it.
    pub whole_prompt_tokens: usize,
    /// Events buffered per request; a client that falls this far behind is cancelled.
    pub event_buffer: usize,
    /// Keep the KV blocks of finished sequences and reuse them for prompts that start with
    /// the same tokens.
    pub prefix_cache: bool,
    /// With the prefix cache: a prompt whose next block another running sequence is about to
    /// compute waits for it instead of computing it too.
    pub prefix_wait: bool,
    /// Admission by expected wait: a request whose predicted wait for a slot exceeds this is
    /// refused by `submit` (`SubmitError::Overloaded`); `None` admits while the queue has room.
    pub max_queue_wait: Option<Duration>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            n_ctx: 4096,
            max_batch_size: 32,
            max_batch_tokens: 512,
            queue_depth: 256,
            kv_pool_bytes: 0,
            batch_window: Duration::ZERO,
            itl_factor: 2.5,
            whole_prompt_tokens: 64,
            event_buffer: 4096,
            prefix_cache: true,
            prefix_wait: true,
            max_queue_wait: None,
        }
    }
}

impl EngineOptions {
    /// The options the model must be loaded with for this engine.
    pub fn model_options(&self) -> ModelOptions {
        ModelOptions {
            n_ctx: self.n_ctx,
            n_seq: self.max_batch_size,
            max_batch_tokens: self.max_batch_tokens,
            max_logit_rows: self.max_batch_size.min(self.max_batch_tokens),
        }
    }
}

/// Live figures of one engine, read by `/metrics`.
pub struct EngineStats {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub kv_bytes_used: AtomicUsize,
    pub kv_bytes_total: AtomicUsize,
    /// Bytes of the whole state (every KV pool and the scratch buffers), fixed at start:
    /// what the model manager counts besides the file.
    pub state_bytes: AtomicUsize,
    pub steps: AtomicU64,
    pub preemptions: AtomicU64,
    pub cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Tokens per forward pass.
    pub batch_tokens: Histogram,
    /// Sequences per forward pass.
    pub batch_seqs: Histogram,
    /// Seconds per forward pass.
    pub step_seconds: Histogram,
    /// Seconds from submit to admission.
    pub queue_seconds: Histogram,
    /// Prompt tokens of ended requests whose keys and values came from the prefix cache.
    pub prefix_hit_tokens: AtomicU64,
    /// Prompt tokens of ended requests that were computed (not found in the cache).
    pub prefix_miss_tokens: AtomicU64,
    /// Blocks the prefix cache names (full-attention pool), and the bytes of K/V they hold
    /// in every layer.
    pub prefix_cached_blocks: AtomicUsize,
    pub prefix_cached_bytes: AtomicUsize,
    /// Cached blocks evicted for new contents.
    pub prefix_evictions: AtomicU64,
    /// The predicted wait of each request at its admission decision (admitted or not).
    pub predicted_wait_seconds: Histogram,
    /// The wait of each admitted request, from its admission to its slot (the wait it was
    /// admitted on, observed).
    pub admission_wait_seconds: Histogram,
    /// Requests refused because their predicted wait exceeded `max_queue_wait`.
    pub refused_wait: AtomicU64,
    /// Requests refused because the queue was full.
    pub refused_queue_full: AtomicU64,
}

impl EngineStats {
    fn new() -> EngineStats {
        EngineStats {
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            kv_bytes_used: AtomicUsize::new(0),
            kv_bytes_total: AtomicUsize::new(0),
            state_bytes: AtomicUsize::new(0),
            steps: AtomicU64::new(0),
            preemptions: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            batch_tokens: Histogram::new(SIZE_BOUNDS),
            batch_seqs: Histogram::new(SIZE_BOUNDS),
            step_seconds: Histogram::new(LATENCY_BOUNDS_S),
            queue_seconds: Histogram::new(LATENCY_BOUNDS_S),
            prefix_hit_tokens: AtomicU64::new(0),
            prefix_miss_tokens: AtomicU64::new(0),
            prefix_cached_blocks: AtomicUsize::new(0),
            prefix_cached_bytes: AtomicUsize::new(0),
            prefix_evictions: AtomicU64::new(0),
            predicted_wait_seconds: Histogram::new(LATENCY_BOUNDS_S),
            admission_wait_seconds: Histogram::new(LATENCY_BOUNDS_S),
            refused_wait: AtomicU64::new(0),
            refused_queue_full: AtomicU64::new(0),
        }
    }
}

/// A running model: submit requests here. Dropping the last handle drains and stops the
/// dispatcher.
pub struct ModelHandle {
    id: String,
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    opts: EngineOptions,
    tx: Sender<Queued>,
    stats: Arc<EngineStats>,
    /// What admission by expected wait reads: the work ahead and the step costs.
    gauge: Arc<Gauge>,
    /// Positions of the full-attention KV pool: a longer sequence can never run.
    pool_positions: usize,
    draining: Arc<AtomicBool>,
    /// Set once if the dispatcher panicked: why. The engine serves nothing more.
    failure: Arc<OnceLock<String>>,
    /// Set by [`ModelHandle::abort`]: every request ends with this reason.
    abort: Arc<OnceLock<String>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ModelHandle {
    /// Starts the dispatcher thread of `model` (loaded with `opts.model_options()`); its
    /// forward passes run inside `pool`.
    pub fn start(
        id: &str,
        model: Arc<Model>,
        tokenizer: Arc<Tokenizer>,
        opts: EngineOptions,
        pool: Arc<rayon::ThreadPool>,
    ) -> Result<ModelHandle, ModelError> {
        let mo = model.options();
        let want = opts.model_options();
        if mo.n_seq < want.n_seq
            || mo.n_ctx < opts.n_ctx
            || mo.max_batch_tokens < want.max_batch_tokens
        {
            return Err(ModelError::Batch(format!(
                "the model was loaded with {mo:?}; the engine needs {want:?}"
            )));
        }
        let mut state = model.new_state();
        state.kv.set_prefix_cache(opts.prefix_cache);
        if opts.kv_pool_bytes > 0 {
            let per_pos = state.kv.bytes_per_position().max(1);
            state.kv = state.kv.with_pool_positions(opts.kv_pool_bytes / per_pos);
        }
        let stats = Arc::new(EngineStats::new());
        stats.state_bytes.store(state.bytes(), Ordering::Relaxed);
        stats.kv_bytes_total.store(
            state.kv.total_blocks() * BLOCK_POSITIONS * state.kv.bytes_per_position(),
            Ordering::Relaxed,
        );
        let (tx, rx) = bounded(opts.queue_depth.max(1));
        let gauge = Arc::new(Gauge::new(opts.max_batch_size));
        let pool_positions = state.kv.total_blocks() * BLOCK_POSITIONS;
        let draining = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(OnceLock::new());
        let abort = Arc::new(OnceLock::new());
        let d = Dispatcher {
            id: id.to_string(),
            abort: abort.clone(),
            model: model.clone(),
            tokenizer: tokenizer.clone(),
            state,
            opts: opts.clone(),
            rx,
            stats: stats.clone(),
            gauge: gauge.clone(),
            completion_share: 1.0,
            mean_prompt_tokens: 0.0,
            step_fit: StepFit::default(),
            last_step_end: None,
            release_rate: ReleaseRate::default(),
            draining: draining.clone(),
            pool,
            running: Vec::new(),
            preempted: VecDeque::new(),
            held: VecDeque::new(),
            done: Vec::new(),
            free_slots: (0..opts.max_batch_size).rev().collect(),
            plan: Vec::new(),
            views: Vec::new(),
            batch: Vec::with_capacity(opts.max_batch_tokens),
            costs: StepCosts::default(),
            root: chain_root(id.as_bytes()),
            inflight: HashMap::new(),
            tails: HashMap::new(),
        };
        let (failed, stop) = (failure.clone(), draining.clone());
        let thread = std::thread::Builder::new()
            .name(format!("dispatch-{id}"))
            .spawn(move || run_guarded(d, &failed, &stop))
            .map_err(|e| ModelError::Batch(format!("cannot start the dispatcher thread: {e}")))?;
        Ok(ModelHandle {
            id: id.to_string(),
            model,
            tokenizer,
            opts,
            tx,
            stats,
            gauge,
            pool_positions,
            draining,
            failure,
            abort,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Why the dispatcher stopped, if it panicked: the engine then serves nothing more (the
    /// registry marks the model failed).
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// Ends every request in flight or queued with `Event::Failed(reason)` at the dispatcher's
    /// next step, admits nothing more, and stops the dispatcher (the drain deadline of a
    /// shutdown). [`ModelHandle::drain`] then returns at once.
    pub fn abort(&self, reason: &str) {
        self.draining.store(true, Ordering::Relaxed);
        let _ = self.abort.set(reason.to_string());
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The admission figures (work ahead, step costs) of this engine.
    pub fn gauge(&self) -> &Gauge {
        &self.gauge
    }

    /// Decides a request arriving now by expected wait and, if admitted, counts it as queued
    /// (one step: see `Gauge::admit`); refusals are counted in the stats.
    pub fn admit(
        &self,
        prompt_tokens: u64,
        steps: u64,
        spread: f64,
    ) -> Result<Ticket, SubmitError> {
        let max_wait_s = self.opts.max_queue_wait.map(|d| d.as_secs_f64());
        let verdict = self.gauge.admit(prompt_tokens, steps, max_wait_s, spread);
        match verdict {
            Ok((ticket, wait_s)) => {
                self.stats.predicted_wait_seconds.observe(wait_s);
                Ok(ticket)
            }
            Err((wait_s, retry_after_s)) => {
                self.stats.predicted_wait_seconds.observe(wait_s);
                self.stats.refused_wait.fetch_add(1, Ordering::Relaxed);
                Err(SubmitError::Overloaded {
                    model: self.id.clone(),
                    predicted_wait_s: wait_s,
                    max_wait_s: max_wait_s.unwrap_or(0.0),
                    retry_after_s,
                })
            }
        }
    }

    /// Queues a request, or fails at once (full queue, predicted wait over the limit,
    /// draining, invalid request).
    pub fn submit(&self, req: GenerationRequest) -> Result<Stream, SubmitError> {
        self.submit_with(req, None)
    }

    /// [`ModelHandle::submit`]; `admitted`: the ticket of a request already admitted by
    /// expected wait (`admit_now`, its place held since): it has waited its turn and is not
    /// refused for the wait again, and its wait counts from that admission.
    pub fn submit_with(
        &self,
        req: GenerationRequest,
        admitted: Option<&Ticket>,
    ) -> Result<Stream, SubmitError> {
        self.check(&req)?;
        if self.draining.load(Ordering::Relaxed) {
            return Err(SubmitError::ShuttingDown(self.id.clone()));
        }
        let steps = admission::expected_steps(req.max_tokens, self.gauge.completion_share());
        let prompt = req.prompt.len() as u64;
        let ticket = match admitted {
            Some(t) => {
                let mut own = self.gauge.enqueue_predicted(prompt, steps, t.predicted_s);
                own.issued_at = t.issued_at;
                own
            }
            None => {
                // Sub-second clock digits: a spread that differs from request to request.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                self.admit(prompt, steps, f64::from(nanos) / 1e9)?
            }
        };
        let (etx, erx) = bounded(self.opts.event_buffer.max(4));
        let cancel = Arc::new(AtomicBool::new(false));
        let now = Instant::now();
        let q = Queued {
            req,
            tx: etx,
            cancel: cancel.clone(),
            submitted_at: now,
            ticket: Some(ticket),
        };
        match self.tx.try_send(q) {
            Ok(()) => {
                self.stats.waiting.fetch_add(1, Ordering::Relaxed);
                Ok(Stream {
                    rx: erx,
                    cancel,
                    submitted_at: now,
                })
            }
            Err(TrySendError::Full(_)) => {
                self.stats
                    .refused_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                Err(SubmitError::QueueFull(self.id.clone()))
            }
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::ShuttingDown(self.id.clone())),
        }
    }

    fn check(&self, req: &GenerationRequest) -> Result<(), SubmitError> {
        let n_vocab = self.model.config().n_vocab;
        if req.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if req.prompt.len() >= self.opts.n_ctx {
            return Err(SubmitError::PromptTooLong {
                n_prompt: req.prompt.len(),
                n_ctx: self.opts.n_ctx,
            });
        }
        let pool_positions = self.pool_positions;
        if req.prompt.len() + 1 > pool_positions {
            // Its KV memory could never be reserved, however long it waited.
            return Err(SubmitError::TooLargeForPool {
                n_prompt: req.prompt.len(),
                pool_positions,
            });
        }
        if let Some(&id) = req.prompt.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(SubmitError::BadToken { id, n_vocab });
        }
        req.sampling
            .validate()
            .map_err(|e| SubmitError::Sampling(e.to_string()))?;
        if let Some(&(id, _)) = req
            .sampling
            .logit_bias
            .iter()
            .find(|(id, _)| *id as usize >= n_vocab)
        {
            return Err(SubmitError::BadToken { id, n_vocab });
        }
        Ok(())
    }

    /// Stops admitting requests, lets the running and queued ones finish, and joins the
    /// dispatcher thread.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for ModelHandle {
    fn drop(&mut self) {
        self.drain();
    }
}

/// Exponentially weighted step costs, to size prefill chunks while streams decode.
#[derive(Default)]
struct StepCosts {
    /// Seconds of a decode-only step.
    decode_step_s: f64,
    /// Seconds per prompt token, from steps that carried prefill.
    prefill_token_s: f64,
}

impl StepCosts {
    const ALPHA: f64 = 0.2;
    /// Prompt tokens per step while decoding, at least.
    const PREFILL_FLOOR: usize = 4;
    /// Prompt tokens per step while decoding until the cost of one has been measured.
    const PREFILL_UNMEASURED: usize = 32;

    fn record(&mut self, n_decode: usize, n_prefill: usize, secs: f64) {
        let ewma = |old: f64, new: f64| {
            if old == 0.0 {
                new
            } else {
                old + Self::ALPHA * (new - old)
            }
        };
        if n_prefill == 0 {
            self.decode_step_s = ewma(self.decode_step_s, secs);
        } else if n_decode == 0 || self.decode_step_s > 0.0 {
            // Net of the decode part, which the decode-only steps measure.
            let decode_part = if n_decode > 0 {
                self.decode_step_s
            } else {
                0.0
            };
            let net = (secs - decode_part).max(0.0);
            self.prefill_token_s = ewma(self.prefill_token_s, net / n_prefill as f64);
        }
    }

    /// Prompt tokens a step that carries decode tokens may take.
    fn prefill_cap(&self, itl_factor: f64) -> usize {
        if self.prefill_token_s == 0.0 || self.decode_step_s == 0.0 {
            return Self::PREFILL_UNMEASURED;
        }
        policy::prefill_cap(
            self.decode_step_s,
            self.prefill_token_s,
            itl_factor,
            Self::PREFILL_FLOOR,
        )
    }
}

/// One running sequence.
struct Seq {
    slot: usize,
    q: Queued,
    sampler: Sampler,
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    n_prompt: usize,
    /// Tokens whose keys and values are in the cache.
    n_cached: usize,
    /// Tokens generated (including a final end-of-generation token).
    n_generated: usize,
    /// Admission order, to pick the newest for preemption.
    admitted_seq_no: u64,
    /// Sent `Admitted` already (a resumed sequence does not send it twice).
    announced: bool,
    /// Was prefilling when an earlier step was planned: its prompt has waited (see the policy).
    overdue: bool,
    /// This step's row of the logits, when it gets one (set and cleared by [`advance`]).
    sample_row: Option<usize>,
    /// This step's sampled token (or the sampler's error), between the parallel sampling
    /// and the in-order sending of [`advance`].
    sampled: Option<Result<TokenEvent, String>>,
    /// Token events not sent yet, and how many make a group (`GenerationRequest::token_group`
    /// within half the event buffer).
    held: Vec<TokenEvent>,
    group: usize,
    /// Keys of the whole blocks of `tokens` so far (prefix cache on; extended lazily).
    keys: Vec<BlockKey>,
    /// Blocks `0..n_named` are held and named in the cache (attached, or written and
    /// registered); `n_cached / BLOCK_POSITIONS` once a step's blocks are registered.
    n_named: usize,
    /// Prompt tokens attached from the prefix cache (reported as `cached_tokens`).
    cached_tokens: usize,
    /// Was preempted once: later hits are its own blocks, not the prompt's.
    resumed: bool,
    /// Sits out this step: its next prompt block is being computed by another sequence.
    waiting: bool,
}

/// Whole blocks of the prefix cache a sequence can attach.
#[derive(Clone, Copy, Debug, Default)]
struct Hit {
    blocks: usize,
    /// Of those, the ones no sequence uses (attaching takes them out of the reclaimable set).
    idle: usize,
}

impl Seq {
    fn pending(&self) -> usize {
        self.tokens.len() - self.n_cached
    }

    /// Computes the keys of every whole block of `tokens` not keyed yet.
    fn extend_keys(&mut self, root: BlockKey) {
        let n = self.tokens.len() / BLOCK_POSITIONS;
        while self.keys.len() < n {
            let i = self.keys.len();
            let parent = if i == 0 { root } else { self.keys[i - 1] };
            let block = &self.tokens[i * BLOCK_POSITIONS..][..BLOCK_POSITIONS];
            self.keys.push(block_key(parent, block));
        }
    }

    /// Blocks a hit may cover: those before the block of the last token, which must be
    /// computed for its logits (and a block another sequence shares is never written).
    fn attachable_blocks(&self) -> usize {
        (self.tokens.len() - 1) / BLOCK_POSITIONS
    }

    fn decoding(&self) -> bool {
        self.n_generated > 0 && self.pending() == 1
    }
}

/// How a sequence's step ended.
enum Outcome {
    Continue,
    Done,
}

struct Dispatcher {
    /// The model's id (logs, fault injection).
    id: String,
    /// Set by [`ModelHandle::abort`].
    abort: Arc<OnceLock<String>>,
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    state: State,
    opts: EngineOptions,
    rx: Receiver<Queued>,
    stats: Arc<EngineStats>,
    draining: Arc<AtomicBool>,
    pool: Arc<rayon::ThreadPool>,
    /// In admission order.
    running: Vec<Seq>,
    /// Sequences pushed out of the KV pool, resumed before any new request.
    preempted: VecDeque<Seq>,
    /// Requests taken off the queue that wait for a slot or KV blocks, in arrival order.
    held: VecDeque<Queued>,
    /// Indices of sequences finished in this step (reused buffer).
    done: Vec<usize>,
    free_slots: Vec<usize>,
    plan: Vec<Slice>,
    views: Vec<SeqView>,
    batch: Vec<BatchToken>,
    costs: StepCosts,
    /// What admission by expected wait reads; published after every step.
    gauge: Arc<Gauge>,
    /// Moving average of the share of `max_tokens` that ended sequences generated.
    completion_share: f64,
    /// Moving average of the prompt tokens of admitted requests.
    mean_prompt_tokens: f64,
    /// Step time against tokens, for admission's predictions.
    step_fit: StepFit,
    /// When the last step ended.
    last_step_end: Option<Instant>,
    /// Sequences ended per second while requests waited, for admission's predictions.
    release_rate: ReleaseRate,
    /// The key the model's block chains start from.
    root: BlockKey,
    /// Prompt blocks a running sequence will compute and name, by key: the sequence's
    /// admission number. Another prompt needing one of them waits for it.
    inflight: HashMap<BlockKey, u64>,
    /// Partial last blocks of ended sequences, by the key of the block before them: each
    /// one's [`tail_key`] and tokens (entries whose block was evicted are pruned lazily).
    tails: HashMap<BlockKey, Vec<(BlockKey, Vec<u32>)>>,
}

/// Weight of each ended sequence in the moving average of the share of `max_tokens` used.
const COMPLETION_SHARE_ALPHA: f64 = 0.05;

/// Partial blocks kept per parent block (the newest).
const TAILS_PER_PARENT: usize = 8;

/// The slot of a sequence that holds none (preempted).
const NO_SLOT: usize = usize::MAX;

/// How long an idle dispatcher blocks before checking for a drain.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// Runs a dispatcher and catches its panic: the reason is logged and kept in `failure`, no
/// more requests are taken, and every request it held ends with `Event::Failed` (so no
/// stream waits forever on a dead engine).
fn run_guarded(mut d: Dispatcher, failure: &OnceLock<String>, draining: &AtomicBool) {
    let Err(p) = catch_unwind(AssertUnwindSafe(|| d.run())) else {
        return;
    };
    let reason = format!("the dispatcher panicked: {}", panic_message(&*p));
    tracing::error!(model = %d.id, "{reason}; its requests fail, its model is marked failed");
    // Before the requests hear of it, so a retry does not queue on the dead engine.
    draining.store(true, Ordering::Relaxed);
    let _ = failure.set(reason.clone());
    d.fail_everything(&format!("the engine failed: {reason}"));
}

impl Dispatcher {
    fn run(&mut self) {
        let mut admitted_seq_no = 0u64;
        loop {
            if let Some(reason) = self.abort.get().cloned() {
                self.fail_everything(&reason);
                return;
            }
            self.drop_cancelled();
            self.publish();
            if self.running.is_empty() && self.preempted.is_empty() && self.held.is_empty() {
                if self.draining.load(Ordering::Relaxed) && self.rx.is_empty() {
                    return;
                }
                match self.rx.recv_timeout(IDLE_POLL) {
                    Ok(q) => {
                        self.take(q);
                        self.wait_batch_window();
                    }
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            self.admit_waiting(&mut admitted_seq_no);
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    /// Moves a request from the queue to `held`.
    fn take(&mut self, q: Queued) {
        self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        self.held.push_back(q);
    }

    /// After a first arrival on an idle engine, gathers more arrivals for up to the batch
    /// window (or until every slot would be taken).
    fn wait_batch_window(&mut self) {
        if self.opts.batch_window.is_zero() {
            return;
        }
        let deadline = Instant::now() + self.opts.batch_window;
        while self.held.len() < self.free_slots.len() {
            match self.rx.recv_deadline(deadline) {
                Ok(q) => self.take(q),
                Err(_) => break,
            }
        }
    }

    /// Resumes preempted sequences, then admits new requests, while slots and KV blocks last.
    fn admit_waiting(&mut self, no: &mut u64) {
        while let Some(s) = self.preempted.front() {
            if s.q.is_cancelled() {
                let s = self.preempted.pop_front().expect("front exists");
                self.finish(s, None);
                continue;
            }
            let hit = self.hit(&s.keys, s.attachable_blocks());
            if !self.fits(s.tokens.len(), hit) {
                return;
            }
            let mut s = self.preempted.pop_front().expect("front exists");
            s.slot = self.free_slots.pop().expect("fits checked a slot");
            self.enter(&mut s, hit);
            self.running.push(s);
        }
        loop {
            let q = match self.held.pop_front() {
                Some(q) => q,
                // No slot: leave the rest in the channel, so that `queue_depth` bounds what
                // waits (a request taken out would wait in `held`, beyond the bound).
                None if self.free_slots.is_empty() => return,
                None => match self.rx.try_recv() {
                    Ok(q) => {
                        self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                        q
                    }
                    Err(_) => return,
                },
            };
            if q.is_cancelled() {
                self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let keys = self.prompt_keys(&q.req.prompt);
            let hit = self.hit(&keys, (q.req.prompt.len() - 1) / BLOCK_POSITIONS);
            if !self.fits(q.req.prompt.len() + 1, hit) {
                if self.running.is_empty() && !self.free_slots.is_empty() {
                    // Nothing will free blocks: this prompt can never fit.
                    let _ = q.tx.try_send(Event::Failed(
                        "the prompt does not fit the KV pool; raise kv_pool_bytes".into(),
                    ));
                    continue;
                }
                self.held.push_front(q);
                return;
            }
            self.admit_new(q, keys, hit, no);
        }
    }

    /// A free slot and enough free KV blocks for `n_tokens` (less the cached blocks of
    /// `hit`) plus one block of headroom per running sequence (so admission does not
    /// immediately force a preemption).
    fn fits(&self, n_tokens: usize, hit: Hit) -> bool {
        let kv = &self.state.kv;
        let headroom = self.running.len();
        let needed = n_tokens.div_ceil(BLOCK_POSITIONS) - hit.blocks + hit.idle;
        !self.free_slots.is_empty() && needed + headroom <= kv.free_blocks()
    }

    /// The keys of a prompt's whole blocks (none with the prefix cache off).
    fn prompt_keys(&self, prompt: &[u32]) -> Vec<BlockKey> {
        if !self.opts.prefix_cache {
            return Vec::new();
        }
        let mut keys = Vec::with_capacity(prompt.len() / BLOCK_POSITIONS);
        for (i, block) in prompt.chunks_exact(BLOCK_POSITIONS).enumerate() {
            let parent = if i == 0 { self.root } else { keys[i - 1] };
            keys.push(block_key(parent, block));
        }
        keys
    }

    /// The cached blocks a sequence entering with `keys` can attach (at most `cap`).
    fn hit(&self, keys: &[BlockKey], cap: usize) -> Hit {
        let keys = &keys[..cap.min(keys.len())];
        // From block 0 the slot's own table is not read: any slot will do.
        let blocks = self.state.kv.cached_prefix(0, keys, 0);
        Hit {
            blocks,
            idle: self.state.kv.idle_among(keys, 0, blocks),
        }
    }

    /// A sequence given a slot: attaches its cache hit and claims the prompt blocks it will
    /// compute (so that others with the same prompt wait for them).
    fn enter(&mut self, s: &mut Seq, hit: Hit) {
        if !self.opts.prefix_cache {
            return;
        }
        s.extend_keys(self.root);
        self.state.kv.attach(s.slot, &s.keys, 0, hit.blocks);
        s.n_cached = hit.blocks * BLOCK_POSITIONS;
        s.n_named = hit.blocks;
        if hit.blocks < s.attachable_blocks() {
            s.n_cached += self.copy_tail(s, hit.blocks);
        }
        if !s.resumed {
            s.cached_tokens = s.n_cached;
        }
        let prompt_blocks = s.n_prompt / BLOCK_POSITIONS;
        for &key in s.keys.iter().take(prompt_blocks).skip(hit.blocks) {
            self.inflight.entry(key).or_insert(s.admitted_seq_no);
        }
    }

    /// Copies into block `i` of `s` (which holds blocks `..i`) the longest run of its next
    /// tokens that a kept partial block after block `i - 1` begins with, short of its last
    /// token; returns the positions copied.
    fn copy_tail(&mut self, s: &Seq, i: usize) -> usize {
        let parent = if i == 0 { self.root } else { s.keys[i - 1] };
        let Some(list) = self.tails.get(&parent) else {
            return 0;
        };
        let next = &s.tokens[i * BLOCK_POSITIONS..s.tokens.len() - 1];
        let common = |t: &[u32]| t.iter().zip(next).take_while(|(a, b)| a == b).count();
        let Some((key, n)) = list
            .iter()
            .map(|(key, t)| (*key, common(t)))
            .filter(|&(_, n)| n > 0)
            .max_by_key(|&(_, n)| n)
        else {
            return 0;
        };
        if self.state.kv.copy_partial(s.slot, i, key, n) {
            n
        } else {
            0
        }
    }

    /// Keeps the last, partial block of an ending sequence named by its [`tail_key`].
    fn keep_tail(&mut self, s: &Seq) {
        let (i, n) = (s.n_cached / BLOCK_POSITIONS, s.n_cached % BLOCK_POSITIONS);
        if !self.opts.prefix_cache || s.slot == NO_SLOT || n == 0 || s.n_named != i {
            return;
        }
        let parent = if i == 0 { self.root } else { s.keys[i - 1] };
        let tokens = &s.tokens[i * BLOCK_POSITIONS..][..n];
        let key = tail_key(parent, tokens);
        if !self.state.kv.register(s.slot, i, key) {
            return;
        }
        if self.tails.len() > self.state.kv.total_blocks() {
            let kv = &self.state.kv;
            self.tails.retain(|_, list| {
                list.retain(|(k, _)| kv.is_cached(k));
                !list.is_empty()
            });
        }
        let list = self.tails.entry(parent).or_default();
        list.retain(|(k, _)| self.state.kv.is_cached(k));
        if list.len() == TAILS_PER_PARENT {
            list.remove(0);
        }
        list.push((key, tokens.to_vec()));
    }

    /// Drops the claims of a sequence that leaves the running set (finished, cancelled,
    /// preempted) on blocks it has not computed: whoever waits for them computes them.
    fn unclaim(&mut self, s: &Seq) {
        if self.inflight.is_empty() {
            return;
        }
        for key in s.keys.iter().skip(s.n_named) {
            if self.inflight.get(key) == Some(&s.admitted_seq_no) {
                self.inflight.remove(key);
            }
        }
    }

    fn admit_new(&mut self, mut q: Queued, keys: Vec<BlockKey>, hit: Hit, no: &mut u64) {
        // Out of the queue: its work now counts as running.
        if let Some(t) = q.ticket.take() {
            let waited_s = t.issued_at.elapsed().as_secs_f64();
            self.stats.admission_wait_seconds.observe(waited_s);
        }
        let n = q.req.prompt.len() as f64;
        self.mean_prompt_tokens = match self.mean_prompt_tokens {
            0.0 => n,
            m => m + COMPLETION_SHARE_ALPHA * (n - m),
        };
        let sampler = match Sampler::new(q.req.sampling.clone(), self.model.config().n_vocab) {
            Ok(s) => s,
            Err(e) => {
                let _ = q.tx.try_send(Event::Failed(e.to_string()));
                return;
            }
        };
        let slot = self.free_slots.pop().expect("fits checked a slot");
        let group = q
            .req
            .token_group
            .clamp(1, self.opts.event_buffer.max(4) / 2);
        let cap = (q.req.prompt.len() + q.req.max_tokens).min(self.opts.n_ctx);
        let mut tokens = Vec::with_capacity(cap);
        tokens.extend_from_slice(&q.req.prompt);
        *no += 1;
        let mut s = Seq {
            slot,
            n_prompt: tokens.len(),
            tokens,
            q,
            sampler,
            n_cached: 0,
            n_generated: 0,
            admitted_seq_no: *no,
            announced: false,
            overdue: false,
            sample_row: None,
            sampled: None,
            held: Vec::with_capacity(group.min(64)),
            group,
            keys,
            n_named: 0,
            cached_tokens: 0,
            resumed: false,
            waiting: false,
        };
        self.enter(&mut s, hit);
        self.running.push(s);
    }

    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].q.is_cancelled() {
                let s = self.running.remove(i);
                self.finish(s, None);
            } else {
                i += 1;
            }
        }
    }

    /// Frees a sequence's slot and KV blocks; sends its held tokens and `Finished` if a reason
    /// is given.
    fn finish(&mut self, mut s: Seq, reason: Option<FinishReason>) {
        self.unclaim(&s);
        self.keep_tail(&s);
        if s.slot != NO_SLOT {
            self.state.kv.release(s.slot);
            self.free_slots.push(s.slot);
        }
        let st = &self.stats;
        st.prefix_hit_tokens
            .fetch_add(s.cached_tokens as u64, Ordering::Relaxed);
        st.prefix_miss_tokens
            .fetch_add((s.n_prompt - s.cached_tokens) as u64, Ordering::Relaxed);
        match reason {
            Some(reason) => {
                let share = s.n_generated as f64 / s.q.req.max_tokens.max(1) as f64;
                self.completion_share +=
                    COMPLETION_SHARE_ALPHA * (share.min(1.0) - self.completion_share);
                send_held(&mut s);
                let _ = s.q.tx.try_send(Event::Finished {
                    reason,
                    prompt_tokens: s.n_prompt,
                    cached_tokens: s.cached_tokens,
                    completion_tokens: s.n_generated,
                });
            }
            None => {
                self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn step(&mut self) {
        let started = Instant::now();
        self.announce();
        self.follow_prefixes();
        if self.plan_step() == 0 {
            // Everyone with work left waits on someone: nobody would compute anything.
            self.running.iter_mut().for_each(|s| s.waiting = false);
            self.plan_step();
        }
        for s in &mut self.running {
            s.overdue = !s.decoding();
        }
        if !self.reserve_plan() {
            return; // preempted; plan again next step
        }
        self.build_batch();
        crate::faults::dispatcher_step(&self.id, self.stats.steps.load(Ordering::Relaxed) + 1);
        let t0 = Instant::now();
        let (model, state, batch) = (&self.model, &mut self.state, &self.batch);
        let logits = match crate::team::run(&self.pool, || model.forward(state, batch)) {
            Ok(l) => l,
            Err(e) => {
                let msg = e.to_string();
                self.fail_all(&msg);
                return;
            }
        };
        let secs = t0.elapsed().as_secs_f64();
        advance(
            &mut self.running,
            &self.plan,
            logits,
            &Ctx {
                tokenizer: &self.tokenizer,
                stats: &self.stats,
                n_ctx: self.opts.n_ctx,
                n_vocab: self.model.config().n_vocab,
            },
            &self.pool,
            &mut self.done,
        );
        self.record_step(secs);
        self.record_for_admission(started);
        self.name_blocks();
        let mut done = std::mem::take(&mut self.done);
        for &i in done.iter().rev() {
            let s = self.running.remove(i);
            let reason = finish_reason(&s);
            self.finish(s, reason);
        }
        done.clear();
        self.done = done;
    }

    /// Plans the step into `plan` (sequences that wait take no tokens); returns its tokens.
    fn plan_step(&mut self) -> usize {
        self.views.clear();
        self.views.extend(self.running.iter().map(|s| SeqView {
            pending: if s.waiting { 0 } else { s.pending() },
            decoding: s.decoding(),
            overdue: s.overdue,
        }));
        let budgets = Budgets {
            max_batch_tokens: self.opts.max_batch_tokens,
            prefill_tokens_while_decoding: self.costs.prefill_cap(self.opts.itl_factor),
            whole_prompt_tokens: self.opts.whole_prompt_tokens,
        };
        policy::next_batch(&self.views, &budgets, &mut self.plan)
    }

    /// For each prefilling sequence at a block boundary: attaches the blocks of its prompt
    /// that have been cached since it last looked, then waits if its next block is one that
    /// an earlier running sequence is computing.
    fn follow_prefixes(&mut self) {
        if !self.opts.prefix_cache {
            return;
        }
        let Dispatcher {
            running,
            state,
            inflight,
            opts,
            ..
        } = self;
        for i in 0..running.len() {
            let s = &mut running[i];
            s.waiting = false;
            let (j, cap) = (s.n_named, s.attachable_blocks());
            if s.decoding() || s.n_cached != j * BLOCK_POSITIONS || j >= cap {
                continue;
            }
            let k = state
                .kv
                .cached_prefix(s.slot, &s.keys[..cap.min(s.keys.len())], j);
            if k > j {
                state.kv.attach(s.slot, &s.keys, j, k);
                s.n_cached = k * BLOCK_POSITIONS;
                s.n_named = k;
                if !s.resumed {
                    s.cached_tokens = s.n_cached.min(s.n_prompt);
                }
            }
            let Some(&owner) = s.keys.get(k).and_then(|key| inflight.get(key)) else {
                continue;
            };
            if k < cap && opts.prefix_wait && owner != s.admitted_seq_no {
                let owner_runs = running[..i]
                    .iter()
                    .any(|r| r.admitted_seq_no == owner && !r.waiting);
                running[i].waiting = owner_runs;
            }
        }
    }

    /// Names the blocks the step filled (every planned sequence's whole, written blocks), so
    /// they outlive their sequences and others can attach them.
    fn name_blocks(&mut self) {
        if !self.opts.prefix_cache {
            return;
        }
        for sl in &self.plan {
            let s = &mut self.running[sl.seq];
            s.extend_keys(self.root);
            while (s.n_named + 1) * BLOCK_POSITIONS <= s.n_cached {
                let key = s.keys[s.n_named];
                self.state.kv.register(s.slot, s.n_named, key);
                if self.inflight.get(&key) == Some(&s.admitted_seq_no) {
                    self.inflight.remove(&key);
                }
                s.n_named += 1;
            }
        }
    }

    /// Sends `Admitted` to sequences entering their first step.
    fn announce(&mut self) {
        for s in self.running.iter_mut().filter(|s| !s.announced) {
            s.announced = true;
            let waited = s.q.submitted_at.elapsed();
            self.stats.queue_seconds.observe(waited.as_secs_f64());
            let _ = s.q.tx.try_send(Event::Admitted { queue_time: waited });
        }
    }

    /// Reserves KV positions for the plan; on a full pool preempts the newest sequence and
    /// returns false.
    fn reserve_plan(&mut self) -> bool {
        for sl in &self.plan {
            let s = &self.running[sl.seq];
            let end = s.n_cached + sl.n_tokens;
            if self.state.kv.reserve(s.slot, s.n_cached, end).is_err() {
                self.preempt_newest();
                return false;
            }
        }
        true
    }

    fn preempt_newest(&mut self) {
        let Some(i) = (0..self.running.len()).max_by_key(|&i| self.running[i].admitted_seq_no)
        else {
            return;
        };
        let mut s = self.running.remove(i);
        self.unclaim(&s);
        self.state.kv.release(s.slot);
        self.free_slots.push(s.slot);
        s.slot = NO_SLOT;
        s.n_cached = 0;
        s.n_named = 0;
        s.resumed = true;
        self.stats.preemptions.fetch_add(1, Ordering::Relaxed);
        if self.running.is_empty() {
            // Alone and still too big for the pool: it can never run.
            let _ = s.q.tx.try_send(Event::Failed(
                "the sequence does not fit the KV pool; raise kv_pool_bytes".into(),
            ));
            return;
        }
        self.preempted.push_front(s);
    }

    fn build_batch(&mut self) {
        self.batch.clear();
        for sl in &self.plan {
            let s = &self.running[sl.seq];
            let end = s.n_cached + sl.n_tokens;
            let wants_logits = end == s.tokens.len();
            self.batch.extend((s.n_cached..end).map(|pos| BatchToken {
                token: s.tokens[pos],
                pos,
                seq: s.slot,
                logits: wants_logits && pos + 1 == end,
            }));
        }
    }

    /// What admission's predictions learn from a step that began at `started`: its whole time
    /// (planning, forward pass, sampling, sending the tokens: not the forward pass alone)
    /// against its tokens, and the sequences it ended over the time since the
    /// previous step ended, if requests are waiting for a slot (busy).
    fn record_for_admission(&mut self, started: Instant) {
        let now = Instant::now();
        let step = now - started;
        self.step_fit.record(self.batch.len(), step.as_secs_f64());
        let since_last = self.last_step_end.map_or(step, |t| now - t);
        self.last_step_end = Some(now);
        // After an idle spell the gap is idleness, not the cost of a step.
        let period = if since_last > step * 4 + Duration::from_millis(50) {
            step
        } else {
            since_last
        };
        let saturated = !self.held.is_empty() || self.gauge.backlog_queued() > 0;
        self.release_rate
            .record(period.as_secs_f64(), self.done.len(), saturated);
    }

    fn record_step(&mut self, secs: f64) {
        // Sequences that were decoding before this step carried exactly one token.
        let n_decode = self.plan.iter().filter(|sl| sl.n_tokens == 1).count();
        let n_prefill = self.batch.len() - n_decode;
        self.costs.record(n_decode, n_prefill, secs);

        let st = &self.stats;
        st.steps.fetch_add(1, Ordering::Relaxed);
        st.batch_tokens.observe(self.batch.len() as f64);
        st.batch_seqs.observe(self.plan.len() as f64);
        st.step_seconds.observe(secs);
        st.prompt_tokens
            .fetch_add(n_prefill as u64, Ordering::Relaxed);
    }

    /// Ends every request it holds — running, preempted, held, queued — with
    /// `Event::Failed(msg)`. Touches only the requests' channels, so it is safe after a panic
    /// left the KV cache or the batch half updated.
    fn fail_everything(&mut self, msg: &str) {
        let failed = || Event::Failed(msg.to_string());
        for s in self.running.drain(..).chain(self.preempted.drain(..)) {
            let _ = s.q.tx.try_send(failed());
        }
        for q in self.held.drain(..) {
            let _ = q.tx.try_send(failed());
        }
        while let Ok(q) = self.rx.try_recv() {
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            let _ = q.tx.try_send(failed());
        }
        self.stats.running.store(0, Ordering::Relaxed);
    }

    fn fail_all(&mut self, msg: &str) {
        for s in std::mem::take(&mut self.running) {
            let _ = s.q.tx.try_send(Event::Failed(msg.to_string()));
            self.unclaim(&s);
            self.state.kv.release(s.slot);
            self.free_slots.push(s.slot);
        }
    }

    /// The running work and step costs that admission by expected wait reads.
    fn admission_figures(&self) -> Published {
        let share = self.completion_share;
        let mut p = Published {
            running: self.running.len() + self.preempted.len(),
            completion_share: share,
            mean_prompt_tokens: self.mean_prompt_tokens.round() as u64,
            ..Published::default()
        };
        let mut blocks = 0;
        for s in self.running.iter().chain(&self.preempted) {
            let total = admission::expected_steps(s.q.req.max_tokens, share) + 1;
            let left = if s.n_generated == 0 {
                total - 1
            } else {
                total.saturating_sub(s.n_generated as u64).max(1)
            };
            p.running_steps += left;
            let prefilling = u64::from(s.n_generated == 0);
            p.running_left
                .push((left + prefilling).min(u64::from(u32::MAX)) as u32);
            p.running_prompt_tokens += s.n_prompt.saturating_sub(s.n_cached) as u64;
            blocks += (s.n_prompt + total as usize).div_ceil(BLOCK_POSITIONS);
        }
        p.running_left.sort_unstable();
        // The KV pool may hold fewer sequences of this mix than there are slots.
        let kv_seqs = match blocks {
            0 => usize::MAX,
            b => self.state.kv.total_blocks() * p.running / b,
        };
        p.costs = self
            .step_fit
            .costs(self.opts.max_batch_size.min(kv_seqs).max(1));
        p.costs.release_rate = self.release_rate.per_s();
        p
    }

    fn publish(&self) {
        let st = &self.stats;
        let kv = &self.state.kv;
        st.running.store(self.running.len(), Ordering::Relaxed);
        st.kv_bytes_used.store(kv.bytes_used(), Ordering::Relaxed);
        let p = kv.prefix_stats();
        st.prefix_cached_blocks
            .store(p.cached_blocks, Ordering::Relaxed);
        st.prefix_cached_bytes
            .store(p.cached_bytes, Ordering::Relaxed);
        st.prefix_evictions.store(p.evictions, Ordering::Relaxed);
        self.gauge.publish(&self.admission_figures());
        // The pools' bookkeeping, every step of every debug build (the tests).
        debug_assert_eq!(kv.audit(), Ok(()));
    }
}

/// What advancing sequences needs besides the sequences.
struct Ctx<'a> {
    tokenizer: &'a Tokenizer,
    stats: &'a EngineStats,
    n_ctx: usize,
    n_vocab: usize,
}

/// Advances every planned sequence past its slice, samples those that got logits (rows of
/// `logits` in plan order), sends their events, and lists the finished ones in `done`
/// (ascending). Sampling runs on the compute pool, one task per sequence: for a large
/// vocabulary it is a pass (or several) over a row of logits per sequence, which serially
/// would leave the pool idle for milliseconds each step. Events are then sent in plan order.
fn advance(
    running: &mut [Seq],
    plan: &[Slice],
    logits: &[f32],
    cx: &Ctx,
    pool: &ThreadPool,
    done: &mut Vec<usize>,
) {
    let mut n_rows = 0;
    for sl in plan {
        let s = &mut running[sl.seq];
        s.n_cached += sl.n_tokens;
        if s.n_cached < s.tokens.len() {
            if s.n_generated == 0 {
                let _ = s.q.tx.try_send(Event::Prefill {
                    done: s.n_cached,
                    total: s.n_prompt,
                });
            }
            continue;
        }
        s.sample_row = Some(n_rows);
        n_rows += 1;
    }
    sample_rows(running, logits, cx.n_vocab, pool, n_rows);
    for sl in plan {
        let s = &mut running[sl.seq];
        if let Some(sampled) = s.sampled.take() {
            if matches!(send_sampled(s, sampled, cx), Outcome::Done) {
                done.push(sl.seq);
            }
        }
    }
    done.sort_unstable();
}

/// Vocabulary size from which a step's sequences are sampled on the pool (Gemma 3: 262,144).
const PARALLEL_SAMPLING_MIN_VOCAB: usize = 16_384;

/// Samples every sequence with a `sample_row` (`n_rows` of them) from its row of `logits`.
fn sample_rows(
    running: &mut [Seq],
    logits: &[f32],
    n_vocab: usize,
    pool: &ThreadPool,
    n_rows: usize,
) {
    let sample = |s: &mut Seq| {
        let Some(row) = s.sample_row.take() else {
            return;
        };
        let l = &logits[row * n_vocab..][..n_vocab];
        s.sampled = Some(match s.sampler.sample(l, &s.tokens) {
            Ok(x) => Ok(TokenEvent {
                id: x.token,
                logprob: x.logprob,
                top: x.top_logprobs.to_vec(),
            }),
            Err(e) => Err(e.to_string()),
        });
    };
    // A small vocabulary samples in microseconds: handing it to the pool would cost more.
    if n_rows < 2 || n_vocab < PARALLEL_SAMPLING_MIN_VOCAB {
        running.iter_mut().for_each(sample);
    } else {
        pool.install(|| running.par_iter_mut().for_each(sample));
    }
}

/// Sends `s`'s sampled token (or its sampler's error); says whether the sequence is done.
fn send_sampled(s: &mut Seq, sampled: Result<TokenEvent, String>, cx: &Ctx) -> Outcome {
    let ev = match sampled {
        Ok(ev) => ev,
        Err(e) => {
            let _ = s.q.tx.try_send(Event::Failed(e));
            s.q.cancel.store(true, Ordering::Relaxed);
            return Outcome::Done;
        }
    };
    let id = ev.id;
    s.n_generated += 1;
    cx.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
    if cx.tokenizer.is_eog(id) && !s.q.req.ignore_eos {
        return Outcome::Done;
    }
    s.tokens.push(id);
    s.held.push(ev);
    if s.held.len() >= s.group && !send_held(s) {
        // Disconnected, or a reader so slow its buffer filled: cancel only this request.
        s.q.cancel.store(true, Ordering::Relaxed);
        return Outcome::Done;
    }
    if s.n_generated >= s.q.req.max_tokens || s.tokens.len() >= cx.n_ctx {
        return Outcome::Done;
    }
    Outcome::Continue
}

/// Sends `s`'s held token events; false if the reader is gone or its buffer is full.
fn send_held(s: &mut Seq) -> bool {
    s.held
        .drain(..)
        .try_for_each(|ev| s.q.tx.try_send(Event::Token(ev)))
        .is_ok()
}

/// Why a retired sequence ended: `None` if it was cancelled.
fn finish_reason(s: &Seq) -> Option<FinishReason> {
    if s.q.is_cancelled() {
        None
    } else if s.n_generated > s.tokens.len() - s.n_prompt {
        // The end-of-generation token is counted but not appended.
        Some(FinishReason::Stop)
    } else {
        Some(FinishReason::Length)
    }
}
