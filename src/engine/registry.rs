//! The model registry: the state of every catalog model, the LRU cache of loaded ones, leases,
//! single-flight loads, eviction, unloading, progress events and the model metrics.
//!
//! Brief overview:
//! - [`Registry::start`] takes a [`Catalog`] and starts the `load-N` threads ([`super::loader`]);
//!   [`Registry::preload`] queues the preload models.
//! - A request calls [`Registry::acquire`]: a loaded model gives a [`Lease`] at once (a cache
//!   hit); otherwise the first caller queues its load and every caller waits on the same load
//!   (single flight) up to its deadline, then gets [`AcquireError::Loading`] (a 503).
//! - A [`Lease`] counts as a request in flight: a model with leases is never evicted, and an
//!   unload waits for its leases to end. Dropping the lease records the use (LRU order).
//! - Loads make room first: least recently used idle models are evicted until the bytes
//!   (`memory_max_bytes`) and count (`models_max`) bounds hold; pinned models, models with
//!   leases and dependencies of loaded or loading models are never evicted.
//!
//! **Invariant:** one mutex guards every slot and the load queue; it is held only to read or
//! change state, never across file I/O, a model build or a dispatcher join. Request waiters
//! and loader threads wait on two condition variables, always with a deadline or a shutdown
//! check.
//! **Boundary:** the registry never reads model files itself; the loader threads do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde::Serialize;

use crate::metrics::{Histogram, LATENCY_BOUNDS_S};
use crate::model::chat::ChatTemplate;
use crate::model::tokenizer::Tokenizer;

use super::catalog::Catalog;
use super::dispatcher::{EngineOptions, ModelHandle};

/// Events buffered per subscriber; a subscriber that falls this far behind misses events.
pub const EVENT_BUFFER: usize = 256;
/// Most event subscribers per model (each is a streaming HTTP request or the CLI).
pub const SUBSCRIBERS_MAX: usize = 64;

/// What to do when a load finds no room and nothing can be evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// The load waits for room (a lease ends, a model is unloaded); requests for the model
    /// get 503 after their own deadline meanwhile.
    Wait,
    /// The load is abandoned at once; the model stays `available` and its requests get 503.
    Fail,
}

/// How the registry runs.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// The engine options of every model, before its catalog entry's overrides.
    pub engine: EngineOptions,
    /// `load-N` threads (loads, unloads' drains, file probes).
    pub loader_threads: usize,
    /// Loads that may run at once (the semaphore); at most `loader_threads`.
    pub max_concurrent_loads: usize,
    /// Most loaded models (0 = no bound).
    pub models_max: usize,
    /// Most bytes of loaded models (file + KV pool + scratch; 0 = no bound).
    pub memory_max_bytes: u64,
    pub when_full: WhenFull,
    /// Touch every page of the weights while loading, so the first requests do not fault
    /// them in (and a truncated file fails the load, not a request).
    pub prefault: bool,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            engine: EngineOptions::default(),
            loader_threads: 2,
            max_concurrent_loads: 1,
            models_max: 0,
            memory_max_bytes: 0,
            when_full: WhenFull::Wait,
            prefault: true,
        }
    }
}

/// Where a model is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    /// In the catalog, not loaded.
    Available,
    /// Waiting in the load queue.
    Queued,
    Loading,
    Loaded,
    /// Finishing its in-flight requests before it is dropped.
    Unloading,
    /// The last load failed (the reason is kept); a new load may be asked for.
    Failed,
}

/// A load's phase, in order; `failed` can follow any of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Queued,
    /// Waiting for room in the cache (nothing could be evicted yet).
    WaitingForRoom,
    Open,
    Validate,
    Map,
    Prefault,
    Ready,
    Failed,
    /// Not loads: the model left the cache.
    Evicted,
    Unloaded,
}

/// How far a load has come.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Progress {
    pub phase: Phase,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub tensors_done: usize,
    pub tensors_total: usize,
}

impl Progress {
    pub fn new(phase: Phase) -> Progress {
        Progress {
            phase,
            bytes_done: 0,
            bytes_total: 0,
            tensors_done: 0,
            tensors_total: 0,
        }
    }

    /// Percent done: open, validate and map take the first 10%, prefault the rest (by bytes).
    pub fn percent(&self) -> f64 {
        let frac = |d: u64, t: u64| if t == 0 { 0.0 } else { d as f64 / t as f64 };
        match self.phase {
            Phase::Queued | Phase::WaitingForRoom | Phase::Evicted | Phase::Unloaded => 0.0,
            Phase::Open => 1.0,
            Phase::Validate => 3.0,
            Phase::Map => 5.0 + 5.0 * frac(self.tensors_done as u64, self.tensors_total as u64),
            Phase::Prefault => 10.0 + 89.0 * frac(self.bytes_done, self.bytes_total),
            Phase::Ready => 100.0,
            Phase::Failed => 0.0,
        }
    }
}

/// One progress or state event of one model (what `GET /v1/models/{id}/events` streams).
#[derive(Clone, Debug, Serialize)]
pub struct ModelEvent {
    pub model: String,
    pub state: ModelState,
    #[serde(flatten)]
    pub progress: Progress,
    pub percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ModelEvent {
    /// The last event of a load or an unload.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.progress.phase,
            Phase::Ready | Phase::Failed | Phase::Evicted | Phase::Unloaded
        )
    }
}

/// What a probe or a load learned about the file.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FileInfo {
    pub architecture: String,
    pub quantization: String,
    pub n_tensors: usize,
    pub n_ctx_train: Option<u64>,
}

/// A loaded model: its engine, tokenizer and chat template.
pub struct LoadedModel {
    pub id: String,
    pub handle: ModelHandle,
    pub tokenizer: Arc<Tokenizer>,
    /// The chat template, or why the model has no usable one (chat answers 500 with it).
    pub chat: Result<ChatTemplate, String>,
    /// Unix seconds at which it finished loading.
    pub created: u64,
    /// What it holds: mapped file, KV pool and scratch.
    pub bytes: u64,
}

impl LoadedModel {
    /// Context length per sequence.
    pub fn n_ctx(&self) -> usize {
        self.handle.options().n_ctx
    }
}

/// Why a request got no model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AcquireError {
    #[error("the model '{0}' does not exist")]
    NotFound(String),
    #[error("no model was named and the server has no default model")]
    NoDefault,
    #[error("the model '{id}' is {what}; retry later")]
    Loading { id: String, what: String },
    #[error("the model '{id}' failed to load: {reason}")]
    Failed { id: String, reason: String },
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Why an admin action was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdminError {
    #[error("the model '{0}' does not exist")]
    NotFound(String),
    #[error("the model '{id}' cannot be unloaded: the loaded model '{dependent}' depends on it")]
    Dependency { id: String, dependent: String },
    #[error("the model '{0}' is loading; unload it once it is loaded")]
    Loading(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// The model metrics.
pub struct RegistryMetrics {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    pub loads_ok: AtomicU64,
    pub loads_failed: AtomicU64,
    /// Loads given up because nothing could be evicted (`WhenFull::Fail`).
    pub loads_no_room: AtomicU64,
    pub unloads: AtomicU64,
    /// Seconds from a load's start (permit taken) to ready or failed.
    pub load_seconds: Histogram,
}

impl Default for RegistryMetrics {
    fn default() -> Self {
        RegistryMetrics {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            loads_ok: AtomicU64::new(0),
            loads_failed: AtomicU64::new(0),
            loads_no_room: AtomicU64::new(0),
            unloads: AtomicU64::new(0),
            load_seconds: Histogram::new(LATENCY_BOUNDS_S),
        }
    }
}

/// What one model looks like now (for `/v1/models`).
#[derive(Clone, Debug)]
pub struct ModelStatus {
    pub index: usize,
    pub id: String,
    pub aliases: Vec<String>,
    pub state: ModelState,
    pub progress: Progress,
    pub error: Option<String>,
    pub file_bytes: u64,
    /// Bytes held while loaded.
    pub loaded_bytes: u64,
    pub info: Option<FileInfo>,
    pub pin: bool,
    pub preload: bool,
    pub priority: i32,
    pub depends_on: Vec<String>,
    pub in_flight: usize,
    /// Unix seconds of the last load.
    pub created: u64,
    pub n_ctx: usize,
}

/// Work for the loader threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JobKind {
    /// Drop an unloaded model once its leases end.
    Drain,
    Load,
    /// Read a file's header for `/v1/models` (architecture, quantization).
    Probe,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Job {
    pub kind: JobKind,
    pub index: usize,
    /// A request or an admin asked for it (ahead of preloads and probes).
    pub demand: bool,
    pub seq: u64,
}

pub(crate) struct Slot {
    pub state: ModelState,
    pub loaded: Option<Arc<LoadedModel>>,
    pub leases: usize,
    /// Registry tick of the last use (LRU order).
    pub last_used: u64,
    pub progress: Progress,
    pub error: Option<String>,
    /// Bytes counted for the model while it loads.
    pub reserved_bytes: u64,
    pub info: Option<FileInfo>,
    subscribers: Vec<Subscriber>,
}

/// A subscriber's sender and a token that dies with its [`Subscription`].
struct Subscriber {
    tx: Sender<ModelEvent>,
    alive: std::sync::Weak<()>,
}

impl Subscriber {
    fn gone(&self) -> bool {
        self.alive.strong_count() == 0
    }
}

/// The receiving end of model events; dropping it unsubscribes.
pub struct Subscription {
    rx: Receiver<ModelEvent>,
    _alive: Arc<()>,
}

impl std::ops::Deref for Subscription {
    type Target = Receiver<ModelEvent>;
    fn deref(&self) -> &Receiver<ModelEvent> {
        &self.rx
    }
}

pub(crate) struct Inner {
    pub slots: Vec<Slot>,
    pub jobs: Vec<Job>,
    /// Free permits of the load semaphore.
    pub permits_free: usize,
    pub tick: u64,
    pub seq: u64,
    pub shutdown: bool,
    /// Subscribers to every model's events (the CLI's progress bars).
    all_subscribers: Vec<Subscriber>,
}

/// The registry. Shared as `Arc<Registry>` by the server's workers and the loader threads.
pub struct Registry {
    pub(crate) catalog: Catalog,
    pub(crate) opts: RegistryOptions,
    pub(crate) inner: Mutex<Inner>,
    /// Loader threads wait here for work, permits, room.
    pub(crate) work: Condvar,
    /// Requests wait here for a model's state to change.
    pub(crate) changed: Condvar,
    pub(crate) pool: Arc<rayon::ThreadPool>,
    pub metrics: RegistryMetrics,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A model in use by one request: while it lives the model is neither evicted nor dropped.
pub struct Lease {
    registry: Arc<Registry>,
    index: usize,
    model: Arc<LoadedModel>,
}

impl std::ops::Deref for Lease {
    type Target = LoadedModel;
    fn deref(&self) -> &LoadedModel {
        &self.model
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut g = self.registry.lock();
        g.tick += 1;
        let tick = g.tick;
        let s = &mut g.slots[self.index];
        s.leases -= 1;
        s.last_used = tick;
        let idle = s.leases == 0;
        drop(g);
        // An unload may be waiting for the model's last lease, or a load for room (which an
        // idle model may give). Not at every lease: each wakes every loader thread.
        if idle {
            self.registry.work.notify_all();
        }
    }
}

impl Registry {
    /// Starts the loader threads. Nothing loads until asked ([`Registry::preload`],
    /// [`Registry::acquire`], [`Registry::load`]); every regular file is probed for its
    /// architecture and quantization in the background.
    pub fn start(
        catalog: Catalog,
        opts: RegistryOptions,
        pool: Arc<rayon::ThreadPool>,
    ) -> std::io::Result<Arc<Registry>> {
        let n = catalog.len();
        let slots = (0..n)
            .map(|_| Slot {
                state: ModelState::Available,
                loaded: None,
                leases: 0,
                last_used: 0,
                progress: Progress::new(Phase::Unloaded),
                error: None,
                reserved_bytes: 0,
                info: None,
                subscribers: Vec::new(),
            })
            .collect();
        let loads = opts
            .max_concurrent_loads
            .clamp(1, opts.loader_threads.max(1));
        let reg = Arc::new(Registry {
            inner: Mutex::new(Inner {
                slots,
                jobs: Vec::new(),
                permits_free: loads,
                tick: 0,
                seq: 0,
                shutdown: false,
                all_subscribers: Vec::new(),
            }),
            catalog,
            opts,
            work: Condvar::new(),
            changed: Condvar::new(),
            pool,
            metrics: RegistryMetrics::default(),
            threads: Mutex::new(Vec::new()),
        });
        {
            let mut g = reg.lock();
            let preloads = reg.catalog.preload_order();
            for i in 0..n {
                // Preload models learn theirs when they load.
                if reg.catalog.entries()[i].file_bytes > 0 && !preloads.contains(&i) {
                    push_job(&mut g, JobKind::Probe, i, false);
                }
            }
        }
        let mut threads = Vec::new();
        for k in 0..reg.opts.loader_threads.max(1) {
            let r = reg.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("load-{k}"))
                    .spawn(move || super::loader::run(&r))?,
            );
        }
        *reg.threads.lock().unwrap_or_else(|e| e.into_inner()) = threads;
        Ok(reg)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    /// The engine options of catalog model `i`.
    pub fn engine_options(&self, i: usize) -> EngineOptions {
        let l = &self.catalog.entries()[i].limits;
        let b = &self.opts.engine;
        EngineOptions {
            n_ctx: l.n_ctx.unwrap_or(b.n_ctx),
            max_batch_size: l.max_batch_size.unwrap_or(b.max_batch_size),
            max_batch_tokens: l.max_batch_tokens.unwrap_or(b.max_batch_tokens),
            queue_depth: l.queue_depth.unwrap_or(b.queue_depth),
            kv_pool_bytes: l.kv_pool_bytes.unwrap_or(b.kv_pool_bytes),
            ..b.clone()
        }
    }

    /// Queues every preload model (and its dependencies), highest priority first.
    pub fn preload(&self) {
        let mut g = self.lock();
        for i in self.catalog.preload_order() {
            self.request_load(&mut g, i, false);
        }
        drop(g);
        self.work.notify_all();
    }

    /// Resolves a request's model name (`None`: the default model).
    pub fn resolve(&self, name: Option<&str>) -> Result<usize, AcquireError> {
        match name {
            Some(n) => self
                .catalog
                .lookup(n)
                .ok_or_else(|| AcquireError::NotFound(n.to_string())),
            None => self.catalog.default_index().ok_or(AcquireError::NoDefault),
        }
    }

    /// The model a request names, loaded: at once if it is (a hit); else its load is started
    /// (or joined) and this waits up to `wait` for it.
    pub fn acquire(
        self: &Arc<Self>,
        name: Option<&str>,
        wait: Duration,
    ) -> Result<Lease, AcquireError> {
        let i = self.resolve(name)?;
        let deadline = Instant::now() + wait;
        // Engines found dead are dropped after the lock (declared first, dropped last).
        let mut dead = Vec::new();
        let mut g = self.lock();
        let mut first = true;
        loop {
            if g.shutdown {
                return Err(AcquireError::ShuttingDown);
            }
            dead.extend(self.reap_failed(&mut g));
            let s = &g.slots[i];
            if let (ModelState::Loaded, Some(m)) = (s.state, &s.loaded) {
                let model = m.clone();
                g.tick += 1;
                let tick = g.tick;
                let s = &mut g.slots[i];
                s.leases += 1;
                s.last_used = tick;
                if first {
                    self.metrics.hits.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(Lease {
                    registry: self.clone(),
                    index: i,
                    model,
                });
            }
            if first {
                first = false;
                self.metrics.misses.fetch_add(1, Ordering::Relaxed);
                match s.state {
                    ModelState::Available => {
                        self.request_load(&mut g, i, true);
                        self.work.notify_all();
                    }
                    ModelState::Failed => {
                        return Err(AcquireError::Failed {
                            id: self.id(i).to_string(),
                            reason: s.error.clone().unwrap_or_default(),
                        });
                    }
                    _ => {}
                }
            } else if g.slots[i].state == ModelState::Failed {
                return Err(AcquireError::Failed {
                    id: self.id(i).to_string(),
                    reason: g.slots[i].error.clone().unwrap_or_default(),
                });
            }
            let now = Instant::now();
            let s = &g.slots[i];
            if now >= deadline || matches!(s.state, ModelState::Unloading | ModelState::Available) {
                // Available again: the load was given up for lack of room.
                let what = match s.state {
                    ModelState::Loading => format!("loading ({:.0}%)", s.progress.percent()),
                    ModelState::Queued => "queued for loading".into(),
                    ModelState::Unloading => "being unloaded".into(),
                    _ => match &s.error {
                        Some(e) => format!("not loaded ({e})"),
                        None => "not loaded".into(),
                    },
                };
                return Err(AcquireError::Loading {
                    id: self.id(i).to_string(),
                    what,
                });
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Queues a load of model `id` (and its dependencies) if it is not loaded or loading;
    /// a failed model is tried again. Returns its state after the call.
    pub fn load(&self, id: &str) -> Result<ModelState, AdminError> {
        let i = self
            .catalog
            .lookup(id)
            .ok_or_else(|| AdminError::NotFound(id.to_string()))?;
        let mut g = self.lock();
        if g.shutdown {
            return Err(AdminError::ShuttingDown);
        }
        if g.slots[i].state == ModelState::Failed {
            g.slots[i].state = ModelState::Available;
        }
        self.request_load(&mut g, i, true);
        let st = g.slots[i].state;
        drop(g);
        self.work.notify_all();
        Ok(st)
    }

    /// Unloads model `id`: new requests for it get 503 at once, its in-flight requests
    /// finish, then a loader thread drops it. Refused while a loaded or loading model depends
    /// on it.
    pub fn unload(&self, id: &str) -> Result<ModelState, AdminError> {
        let i = self
            .catalog
            .lookup(id)
            .ok_or_else(|| AdminError::NotFound(id.to_string()))?;
        let mut g = self.lock();
        if g.shutdown {
            return Err(AdminError::ShuttingDown);
        }
        if let Some(d) = self.dependent_in_cache(&g, i) {
            return Err(AdminError::Dependency {
                id: self.id(i).to_string(),
                dependent: self.id(d).to_string(),
            });
        }
        match g.slots[i].state {
            ModelState::Loaded => {
                g.slots[i].state = ModelState::Unloading;
                push_job(&mut g, JobKind::Drain, i, true);
            }
            ModelState::Queued => {
                g.jobs
                    .retain(|j| !(j.index == i && j.kind == JobKind::Load));
                g.slots[i].state = ModelState::Available;
                self.emit(&mut g, i, Progress::new(Phase::Unloaded));
            }
            ModelState::Loading => return Err(AdminError::Loading(self.id(i).to_string())),
            ModelState::Available | ModelState::Unloading | ModelState::Failed => {}
        }
        let st = g.slots[i].state;
        drop(g);
        self.work.notify_all();
        self.changed.notify_all();
        Ok(st)
    }

    /// A model that depends on `i` and is loaded, loading, queued or unloading.
    fn dependent_in_cache(&self, g: &Inner, i: usize) -> Option<usize> {
        (0..g.slots.len()).find(|&j| {
            g.slots[j].state != ModelState::Available
                && g.slots[j].state != ModelState::Failed
                && self.catalog.entries()[j].depends_on.contains(&i)
        })
    }

    /// Queues loads of `i`'s dependencies and of `i`, unless they are loaded or on their way.
    pub(crate) fn request_load(&self, g: &mut Inner, i: usize, demand: bool) {
        for j in self.catalog.with_dependencies(i) {
            match g.slots[j].state {
                ModelState::Available => {
                    g.slots[j].state = ModelState::Queued;
                    g.slots[j].error = None;
                    push_job(g, JobKind::Load, j, demand);
                    self.emit(g, j, Progress::new(Phase::Queued));
                }
                ModelState::Queued if demand => {
                    // A request outranks a preload: promote the queued job.
                    for job in g.jobs.iter_mut().filter(|x| x.index == j) {
                        job.demand = true;
                    }
                }
                _ => {}
            }
        }
    }

    pub fn id(&self, i: usize) -> &str {
        &self.catalog.entries()[i].id
    }

    /// Every model's status, in catalog order.
    pub fn statuses(&self) -> Vec<ModelStatus> {
        let g = self.lock();
        (0..g.slots.len()).map(|i| self.status_of(&g, i)).collect()
    }

    pub fn status(&self, i: usize) -> ModelStatus {
        let g = self.lock();
        self.status_of(&g, i)
    }

    fn status_of(&self, g: &Inner, i: usize) -> ModelStatus {
        let e = &self.catalog.entries()[i];
        let s = &g.slots[i];
        ModelStatus {
            index: i,
            id: e.id.clone(),
            aliases: e.aliases.clone(),
            state: s.state,
            progress: s.progress.clone(),
            error: s.error.clone(),
            file_bytes: e.file_bytes,
            loaded_bytes: s.loaded.as_ref().map_or(0, |m| m.bytes),
            info: s.info.clone(),
            pin: e.pin,
            preload: e.preload,
            priority: e.priority,
            depends_on: e
                .depends_on
                .iter()
                .map(|&d| self.id(d).to_string())
                .collect(),
            in_flight: s.leases,
            created: s.loaded.as_ref().map_or(0, |m| m.created),
            n_ctx: s
                .loaded
                .as_ref()
                .map_or_else(|| self.engine_options(i).n_ctx, |m| m.n_ctx()),
        }
    }

    /// Whether every model of `indices` is loaded.
    pub fn all_loaded(&self, indices: &[usize]) -> bool {
        let g = self.lock();
        indices
            .iter()
            .all(|&i| g.slots[i].state == ModelState::Loaded)
    }

    /// Model `i` if it is loaded right now; holding it does not count as a lease (for a look
    /// at its engine's admission figures).
    pub fn loaded_model(&self, i: usize) -> Option<Arc<LoadedModel>> {
        self.lock().slots.get(i)?.loaded.clone()
    }

    /// The loaded models right now (for `/metrics`); holding them does not count as a lease.
    pub fn loaded(&self) -> Vec<Arc<LoadedModel>> {
        let g = self.lock();
        g.slots.iter().filter_map(|s| s.loaded.clone()).collect()
    }

    /// Bytes held by loaded (and unloading) models, and their count.
    pub fn loaded_bytes(&self) -> (u64, usize) {
        let g = self.lock();
        g.slots
            .iter()
            .filter_map(|s| s.loaded.as_ref())
            .fold((0, 0), |(b, n), m| (b + m.bytes, n + 1))
    }

    /// Events of model `i` from now on, starting with its current state. `None` when the
    /// model already has `SUBSCRIBERS_MAX` subscribers.
    pub fn subscribe(&self, i: usize) -> Option<Subscription> {
        let (tx, rx) = bounded(EVENT_BUFFER);
        let alive = Arc::new(());
        let mut g = self.lock();
        let s = &mut g.slots[i];
        s.subscribers.retain(|t| !t.gone());
        if s.subscribers.len() >= SUBSCRIBERS_MAX {
            return None;
        }
        let _ = tx.try_send(self.event_of(&g, i));
        g.slots[i].subscribers.push(Subscriber {
            tx,
            alive: Arc::downgrade(&alive),
        });
        Some(Subscription { rx, _alive: alive })
    }

    /// Events of every model from now on (the CLI's progress bars), after the current event
    /// of each model that is queued, loading, loaded or failed: a load that began (or even
    /// ended) before the subscription still shows up.
    pub fn subscribe_all(&self) -> Subscription {
        let (tx, rx) = bounded(EVENT_BUFFER);
        let alive = Arc::new(());
        let mut g = self.lock();
        for i in 0..g.slots.len() {
            let st = g.slots[i].state;
            if !matches!(st, ModelState::Available | ModelState::Unloading) {
                let _ = tx.try_send(self.event_of(&g, i));
            }
        }
        g.all_subscribers.retain(|t| !t.gone());
        g.all_subscribers.push(Subscriber {
            tx,
            alive: Arc::downgrade(&alive),
        });
        Subscription { rx, _alive: alive }
    }

    fn event_of(&self, g: &Inner, i: usize) -> ModelEvent {
        let s = &g.slots[i];
        ModelEvent {
            model: self.id(i).to_string(),
            state: s.state,
            percent: s.progress.percent(),
            progress: s.progress.clone(),
            error: s.error.clone(),
        }
    }

    /// Records model `i`'s progress and tells its subscribers.
    pub(crate) fn emit(&self, g: &mut Inner, i: usize, p: Progress) {
        g.slots[i].progress = p;
        let ev = self.event_of(g, i);
        let send = |subs: &mut Vec<Subscriber>| {
            subs.retain(|t| {
                !t.gone()
                    && !matches!(
                        t.tx.try_send(ev.clone()),
                        Err(TrySendError::Disconnected(_))
                    )
            });
        };
        send(&mut g.slots[i].subscribers);
        send(&mut g.all_subscribers);
    }

    /// Marks failed every loaded model whose engine stopped (its dispatcher panicked) and
    /// returns them, to be dropped by the caller after it releases the lock. Called by idle
    /// loader threads at every wake-up (at most `ROOM_POLL` apart) and by every `acquire`,
    /// so a request never queues on a dead engine and `/v1/models` soon says `failed`.
    pub(crate) fn reap_failed(&self, g: &mut Inner) -> Vec<Arc<LoadedModel>> {
        let mut dead = Vec::new();
        for i in 0..g.slots.len() {
            let Some(why) = g.slots[i]
                .loaded
                .as_ref()
                .and_then(|m| m.handle.failure().map(str::to_string))
            else {
                continue;
            };
            let msg = format!(
                "its engine stopped ({why}); POST /v1/models/{}/load loads it again",
                self.id(i)
            );
            tracing::error!(model = self.id(i), "model failed: {msg}");
            let s = &mut g.slots[i];
            dead.extend(s.loaded.take());
            s.state = ModelState::Failed;
            s.error = Some(msg);
            s.reserved_bytes = 0;
            self.emit(g, i, Progress::new(Phase::Failed));
        }
        if !dead.is_empty() {
            self.changed.notify_all();
            self.work.notify_all();
        }
        dead
    }

    /// The drain deadline of a shutdown passed: requests waiting for a model get
    /// `ShuttingDown`, the loaders stop after their current job, and every loaded engine ends
    /// its requests with `reason` at its next step.
    pub fn abort_requests(&self, reason: &str) {
        let loaded: Vec<Arc<LoadedModel>> = {
            let mut g = self.lock();
            g.shutdown = true;
            g.slots.iter().filter_map(|s| s.loaded.clone()).collect()
        };
        self.work.notify_all();
        self.changed.notify_all();
        for m in loaded {
            m.handle.abort(reason);
        }
    }

    /// Stops the loader threads (a load in progress finishes first), then drains every
    /// loaded model's engine.
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.work.notify_all();
        self.changed.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        let loaded: Vec<Arc<LoadedModel>> = {
            let mut g = self.lock();
            g.slots.iter_mut().filter_map(|s| s.loaded.take()).collect()
        };
        for m in loaded {
            m.handle.drain();
        }
    }

    /// Whether `shutdown` was called.
    pub fn is_shut_down(&self) -> bool {
        self.lock().shutdown
    }
}

pub(crate) fn push_job(g: &mut Inner, kind: JobKind, index: usize, demand: bool) {
    g.seq += 1;
    let seq = g.seq;
    g.jobs.push(Job {
        kind,
        index,
        demand,
        seq,
    });
}
