//! The HTTP server: an OpenAI-compatible API over the models of a catalog.
//!
//! Brief overview:
//! - [`Server::start`] binds the listener ([`http::HttpServer`]) and starts answering at once
//!   (`/health` is 200 from the first moment), starts the model registry
//!   ([`crate::engine::Registry`]: `load-N` threads, LRU cache) and queues the preload models
//!   (`/health/ready` turns 200 once the default model — and, by default, every preload model
//!   — is loaded), and runs a fixed pool of `http-N` workers.
//! - A request resolves its model through the registry: a loaded model at once; otherwise its
//!   load starts (or is joined) and the request waits up to `load_wait_ms`, then gets 503.
//! - Each worker takes one request at a time and serves it end to end ([`routes`]): parse,
//!   validate, tokenize, submit to the engine, write the answer — a whole JSON body, or SSE
//!   events as tokens arrive ([`generate`]). A panic in a handler is caught and answered 500.
//! - Admission is bounded twice, and both bounds answer 503 + `Retry-After` at once: at most
//!   `max_concurrent_requests` generation requests are served at a time (so spare workers stay
//!   free for health checks, metrics and rejections), and the engine's queue is bounded.
//! - [`metrics::ServerMetrics`] holds what the workers record; `/metrics` adds the engine's
//!   figures.
//!
//! **Boundary:** only [`http`] knows the HTTP crate; only the engine's `load-N` threads touch
//! model files. Nothing here computes: tokens come from the engine's dispatchers.

mod auth;
mod chat;
mod generate;
pub mod http;
pub mod metrics;
mod models;
mod routes;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, unbounded, Receiver, Select, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::ServeConfig;
use crate::engine::{
    Catalog, EngineOptions, ModelState, Registry, RegistryOptions, Ticket, WhenFull,
};

use self::http::{HttpRequest, HttpServer};
use self::metrics::ServerMetrics;

/// How long an idle worker waits for a request before checking for shutdown (a shutdown
/// wakes them sooner: [`Server::stop`]). Long, because a pool grown by a burst keeps every
/// worker, and each poll is a wake-up that takes a core from the compute threads.
const WORKER_POLL: Duration = Duration::from_millis(1000);

/// Generation workers started with the server; more start as requests find none idle, up to
/// `max_concurrent_requests`.
const GEN_WORKERS_AT_START: usize = 16;

/// A generation request admitted on its connection's thread, waiting for a worker.
struct QueuedGen {
    req: HttpRequest,
    /// Its place in its model's queue count (`None`: not decided on arrival).
    ticket: Option<Ticket>,
}

/// Generation requests taken on their connection's thread ([`routes::early`]), waiting for a
/// generation worker: one queue per catalog model and one for those not decided there. A
/// worker takes from whichever has a request (crossbeam `Select`), so a model with a long
/// queue does not hold back another model's requests by more than one request's service.
/// Unbounded channels: each connection carries one request at a time, so `max_connections`
/// bounds them.
pub(crate) struct GenQueues {
    tx: Vec<Sender<QueuedGen>>,
    rx: Vec<Receiver<QueuedGen>>,
    /// Dropped at shutdown: wakes every idle generation worker at once.
    wake_tx: Mutex<Option<Sender<()>>>,
    wake_rx: Receiver<()>,
}

impl GenQueues {
    fn new(n_models: usize) -> GenQueues {
        let (tx, rx) = (0..=n_models).map(|_| unbounded()).unzip();
        let (wake_tx, wake_rx) = bounded(1);
        GenQueues {
            tx,
            rx,
            wake_tx: Mutex::new(Some(wake_tx)),
            wake_rx,
        }
    }

    /// Queues a request for model `model` (a catalog index; `None`: undecided).
    pub(crate) fn push(&self, model: Option<usize>, req: HttpRequest, ticket: Option<Ticket>) {
        let last = self.tx.len() - 1;
        let i = model.map_or(last, |m| m.min(last));
        // Cannot fail: `self.rx` keeps every queue open.
        let _ = self.tx[i].send(QueuedGen { req, ticket });
    }

    /// The next request of any queue, waiting at most `timeout`; after [`GenQueues::wake_all`]
    /// only what is already queued.
    fn pop(&self, timeout: Duration) -> Option<QueuedGen> {
        let mut sel = Select::new();
        for rx in &self.rx {
            sel.recv(rx);
        }
        let wake = sel.recv(&self.wake_rx);
        match sel.select_timeout(timeout) {
            Ok(op) if op.index() == wake => {
                let _ = op.recv(&self.wake_rx);
                self.rx.iter().find_map(|rx| rx.try_recv().ok())
            }
            Ok(op) => {
                let i = op.index();
                op.recv(&self.rx[i]).ok()
            }
            Err(_) => None,
        }
    }

    fn wake_all(&self) {
        self.wake_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

/// What `serve` needs besides the configuration.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub config: ServeConfig,
    /// The model file (already resolved from the config and defaults), served as a catalog of
    /// one when `catalog` is `None`.
    pub model_path: PathBuf,
    /// The models to serve (from `models_dir`, validated by the caller); `None`: `model_path`.
    pub catalog: Option<Catalog>,
    /// Adds `POST /debug/panic`, whose handler panics: for the tests that show a panic
    /// becomes a 500 for that request only. The binary sets it only when built with the
    /// `fault-injection` feature and asked to (`crate::faults`).
    pub panic_route: bool,
}

/// Everything the workers share.
pub(crate) struct State {
    pub opts: ServerOptions,
    pub registry: Arc<Registry>,
    /// Models that must be loaded for `/health/ready`.
    pub ready_models: Vec<usize>,
    /// Serving one file (`-m`): its failure is fatal to the binary, as before the catalog.
    pub single: bool,
    pub metrics: ServerMetrics,
    pub in_flight: AtomicUsize,
    /// Every worker started (general and generation).
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Generation workers started, and those waiting for a request (the pool grows when
    /// none waits).
    gen_workers: AtomicUsize,
    idle_gen_workers: AtomicUsize,
    /// General workers waiting for a request.
    idle_workers: AtomicUsize,
    pub(crate) gen: GenQueues,
    pub shutting_down: AtomicBool,
    pub http: Arc<HttpServer>,
    /// Request counter, for ids and seeds.
    pub next_id: AtomicU64,
    /// Mixed into ids and seeds so two runs do not repeat them.
    pub id_salt: u64,
}

impl State {
    pub fn cfg(&self) -> &ServeConfig {
        &self.opts.config
    }

    /// A fresh 64-bit value (splitmix64 over a counter and the start time): unique ids and
    /// seeds for requests that give none. Not cryptographic.
    pub fn next_u64(&self) -> u64 {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut z = self
            .id_salt
            .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The first failure among the readiness models, if any.
    pub fn ready_failure(&self) -> Option<(String, String)> {
        self.ready_models.iter().find_map(|&i| {
            let s = self.registry.status(i);
            (s.state == ModelState::Failed).then(|| (s.id, s.error.unwrap_or_default()))
        })
    }
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A running server. [`Server::shutdown`] stops it; dropping it without does the same.
pub struct Server {
    state: Arc<State>,
    stopped: bool,
}

/// The engine options the configuration asks for.
pub fn engine_options(cfg: &ServeConfig) -> EngineOptions {
    let e = &cfg.engine;
    EngineOptions {
        n_ctx: e.n_ctx,
        max_batch_size: e.max_batch_size,
        max_batch_tokens: e.max_batch_tokens,
        queue_depth: e.queue_depth,
        kv_pool_bytes: e.kv_pool_bytes,
        batch_window: Duration::from_millis(e.batch_window_ms),
        itl_factor: e.itl_factor,
        whole_prompt_tokens: e.whole_prompt_tokens,
        event_buffer: e.event_buffer,
        prefix_cache: e.prefix_cache,
        // Hidden switch for the A/B of docs/BENCHMARKS.md: `RYZANSTEIN_PREFIX_WAIT=0` lets
        // requests with the same new prefix compute it side by side instead of one waiting.
        prefix_wait: std::env::var("RYZANSTEIN_PREFIX_WAIT").map_or(true, |v| v != "0"),
        max_queue_wait: (e.max_queue_wait_ms > 0)
            .then(|| Duration::from_millis(e.max_queue_wait_ms)),
    }
}

/// The registry options the configuration asks for.
pub fn registry_options(cfg: &ServeConfig) -> RegistryOptions {
    let m = &cfg.models;
    RegistryOptions {
        engine: engine_options(cfg),
        loader_threads: m.loader_threads,
        max_concurrent_loads: m.max_concurrent_loads,
        models_max: m.models_max,
        memory_max_bytes: m.memory_max_bytes,
        when_full: if m.when_full_fail {
            WhenFull::Fail
        } else {
            WhenFull::Wait
        },
        prefault: true,
    }
}

/// The API name of a model file: its file name without `.gguf`.
pub fn default_model_id(path: &std::path::Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    name.strip_suffix(".gguf").unwrap_or(&name).to_string()
}

impl Server {
    /// Binds, starts the workers (the server answers from here on) and starts loading the
    /// preload models (with one file: that model) in the background.
    pub fn start(opts: ServerOptions) -> std::io::Result<Server> {
        let cfg = &opts.config;
        give_threads_their_own_malloc_arenas();
        raise_descriptor_limit(cfg.limits.max_connections);
        let http = Arc::new(HttpServer::bind(&cfg.listen, &cfg.limits)?);
        let single = opts.catalog.is_none();
        let catalog = opts.catalog.clone().unwrap_or_else(|| {
            let id = cfg
                .model_id
                .clone()
                .unwrap_or_else(|| default_model_id(&opts.model_path));
            Catalog::single(&id, &opts.model_path)
        });
        let mut ready_models: Vec<usize> = catalog.default_index().into_iter().collect();
        if cfg.models.ready_requires_preload {
            for i in catalog.preload_order() {
                if !ready_models.contains(&i) {
                    ready_models.push(i);
                }
            }
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .thread_name(|i| format!("compute-{i}"))
            .build()
            .map_err(|e| std::io::Error::other(format!("cannot start the compute threads: {e}")))?;
        let n_models = catalog.len();
        let registry = Registry::start(catalog, registry_options(cfg), Arc::new(pool))?;
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let state = Arc::new(State {
            registry,
            ready_models,
            single,
            metrics: ServerMetrics::default(),
            in_flight: AtomicUsize::new(0),
            workers: Mutex::new(Vec::new()),
            gen_workers: AtomicUsize::new(0),
            idle_gen_workers: AtomicUsize::new(0),
            idle_workers: AtomicUsize::new(0),
            gen: GenQueues::new(n_models),
            shutting_down: AtomicBool::new(false),
            http,
            next_id: AtomicU64::new(0),
            id_salt: started ^ u64::from(std::process::id()).rotate_left(32),
            opts,
        });
        let weak = Arc::downgrade(&state);
        state
            .http
            .set_early_answer(move |req| routes::early(&weak, req));
        let general = state.cfg().http_workers - state.cfg().limits.max_concurrent_requests;
        for _ in 0..general {
            spawn_worker(&state, Kind::General)?;
        }
        for _ in 0..GEN_WORKERS_AT_START.min(state.cfg().limits.max_concurrent_requests) {
            spawn_worker(&state, Kind::Generation)?;
        }
        state.registry.preload();
        tracing::info!(
            addr = %state.http.local_addr(),
            workers_max = state.cfg().http_workers,
            models = state.registry.catalog().len(),
            "listening"
        );
        Ok(Server {
            state,
            stopped: false,
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.state.http.local_addr()
    }

    /// The model registry (load, unload, statuses, events).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.state.registry
    }

    /// Whether every model readiness requires is loaded.
    pub fn is_ready(&self) -> bool {
        self.state.registry.all_loaded(&self.state.ready_models)
    }

    /// Why a model readiness requires failed to load, if one did.
    pub fn load_error(&self) -> Option<String> {
        self.state.ready_failure().map(|(_, e)| e)
    }

    /// A failure that should stop the binary: serving one file (`-m`) that failed to load.
    pub fn fatal_error(&self) -> Option<String> {
        if self.state.single {
            self.load_error()
        } else {
            None
        }
    }

    /// Waits until the readiness models are loaded (true) or one failed or `timeout` passed
    /// (false).
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.is_ready() {
                return true;
            }
            if self.load_error().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.is_ready()
    }

    /// Drains and stops: new connections are refused at once, requests that arrive on open
    /// connections get 503, the requests in flight get `drain_timeout_ms` to finish — then
    /// the engines end them with an error (a stream gets a final error event and `[DONE]`)
    /// — and the loaders and engines stop.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stopped = true;
        let st = &self.state;
        st.http.stop_accepting();
        st.shutting_down.store(true, Ordering::SeqCst);
        // No worker starts once shutting down: the list is final.
        let workers = std::mem::take(&mut *st.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for _ in 0..workers.len() {
            st.http.unblock();
        }
        st.gen.wake_all();
        let drain = Duration::from_millis(st.cfg().drain_timeout_ms);
        if !all_finished(st, &workers, Instant::now() + drain) {
            let busy = workers.iter().filter(|w| !w.is_finished()).count();
            tracing::warn!(
                busy,
                "the drain deadline passed: ending the requests in flight"
            );
            st.registry.abort_requests(SHUTDOWN_REASON);
        }
        for w in workers {
            let _ = w.join();
        }
        st.registry.shutdown();
        tracing::info!("stopped");
    }
}

/// The two kinds of HTTP worker.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Takes what the connections' threads queue in tiny_http: health, metrics, models,
    /// tokenize; a fixed pool of `http_workers - max_concurrent_requests`.
    General,
    /// Takes generation requests from [`GenQueues`]; up to `max_concurrent_requests`,
    /// started as needed.
    Generation,
}

/// Starts one more worker of `kind`, unless the server is shutting down or (generation) the
/// pool is at `max_concurrent_requests`.
fn spawn_worker(st: &Arc<State>, kind: Kind) -> std::io::Result<()> {
    let mut workers = st.workers.lock().unwrap_or_else(|e| e.into_inner());
    if st.shutting_down.load(Ordering::SeqCst) {
        return Ok(());
    }
    let name = match kind {
        Kind::General => format!("http-{}", workers.len()),
        Kind::Generation => {
            let n = st.gen_workers.load(Ordering::SeqCst);
            if n >= st.cfg().limits.max_concurrent_requests {
                return Ok(());
            }
            st.gen_workers.store(n + 1, Ordering::SeqCst);
            format!("gen-{n}")
        }
    };
    let me = st.clone();
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || match kind {
            Kind::General => worker(&me),
            Kind::Generation => gen_worker(&me),
        });
    match handle {
        Ok(h) => workers.push(h),
        Err(e) => {
            if kind == Kind::Generation {
                st.gen_workers.fetch_sub(1, Ordering::SeqCst);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// A generation worker: one generation request at a time, from any model's queue, until
/// shutdown (then what is still queued is answered 503). When it takes the last idle
/// worker's request it starts another, so a request never waits for a worker that could
/// exist.
fn gen_worker(st: &Arc<State>) {
    loop {
        st.idle_gen_workers.fetch_add(1, Ordering::SeqCst);
        let got = st.gen.pop(WORKER_POLL);
        let idle_left = st.idle_gen_workers.fetch_sub(1, Ordering::SeqCst) - 1;
        match got {
            Some(q) => {
                if idle_left == 0 {
                    if let Err(e) = spawn_worker(st, Kind::Generation) {
                        tracing::warn!("cannot start another generation worker: {e}");
                    }
                }
                routes::serve_generation(st, q.req, q.ticket);
            }
            None if st.shutting_down.load(Ordering::SeqCst) => return,
            None => {}
        }
    }
}

/// What a request cut by the drain deadline is told.
const SHUTDOWN_REASON: &str = "the server is shutting down";

/// Waits until every worker has returned (true) or `deadline` passes (false). Wakes the idle
/// ones again every so often: a worker that finished a request after the first wake-ups
/// would otherwise sleep out its poll.
fn all_finished(st: &State, workers: &[JoinHandle<()>], deadline: Instant) -> bool {
    let mut wake_at = Instant::now();
    loop {
        if workers.iter().all(JoinHandle::is_finished) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        if now >= wake_at {
            for _ in 0..st.idle_workers.load(Ordering::SeqCst) {
                st.http.unblock();
            }
            wake_at = now + Duration::from_millis(50);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.stopped {
            self.stop();
        }
    }
}

/// glibc malloc arenas the process may create (its default is 8 per core).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS_MAX: libc::c_int = 1024;

/// Lets (nearly) every thread allocate from a malloc arena of its own, so that no thread of
/// normal priority shares an arena lock with a loader's helper thread at `SCHED_IDLE`
/// (`engine::loader`). glibc's default, 8 arenas per core, makes the server's ~100 threads
/// share 16 arenas; when the helper is preempted while it holds its arena's lock (it
/// allocates and frees hundreds of thousands of objects per load and unload), the threads
/// sharing that arena wait until the compute threads leave a core idle, i.e. until the end
/// of the forward pass: a priority inversion that delayed token events by a whole pass
/// while another model loaded (`tests/models_itl.rs`). Resident memory is unchanged (an
/// arena costs address space, not pages, until it is used). glibc fixes its arena limit
/// once the process has 9 arenas, so this must run before the server starts its threads.
fn give_threads_their_own_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; any value is valid.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS_MAX);
    }
}

/// Descriptors besides connections: listener, model files, logs, a margin.
const SPARE_DESCRIPTORS: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` (up to the hard limit) so that `max_connections` fit: each
/// connection holds two descriptors (tiny_http reads and writes through a dup). systemd and
/// most shells start services at a soft 1024; the hard limit is usually far higher. Too low
/// a limit is not fatal (accept errors are survived) but is logged.
fn raise_descriptor_limit(max_connections: usize) {
    let needed = 2 * max_connections as u64 + SPARE_DESCRIPTORS;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur >= needed {
        return;
    }
    let want = needed.min(lim.rlim_max);
    if want > lim.rlim_cur {
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = want;
        }
    }
    if lim.rlim_cur < needed {
        tracing::warn!(
            limit = lim.rlim_cur,
            needed,
            "the open-file limit is below what max_connections needs: connections past it \
             fail to be accepted until descriptors free up (raise LimitNOFILE / ulimit -n)"
        );
    }
}

/// An `http-N` worker: one request at a time until shutdown. Once the drain began it answers
/// what is still queued (503) and returns when the queue is empty.
fn worker(st: &Arc<State>) {
    loop {
        let draining = st.shutting_down.load(Ordering::Relaxed);
        st.idle_workers.fetch_add(1, Ordering::SeqCst);
        let got = st.http.recv_timeout(WORKER_POLL);
        st.idle_workers.fetch_sub(1, Ordering::SeqCst);
        match got {
            Ok(Some(req)) => routes::serve(st, req),
            Ok(None) | Err(_) if draining => return,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("receiving a request failed: {e}");
                std::thread::sleep(WORKER_POLL);
            }
        }
    }
}
