//! The HTTP server: an OpenAI-compatible API over one model's engine.
//!
//! Brief overview:
//! - [`Server::start`] binds the listener ([`http::HttpServer`]) and starts answering at once
//!   (`/health` is 200 from the first moment), loads the model on a `load` thread (then
//!   `/health/ready` turns 200), and runs a fixed pool of `http-N` workers.
//! - Each worker takes one request at a time and serves it end to end ([`routes`]): parse,
//!   validate, tokenize, submit to the engine, write the answer — a whole JSON body, or SSE
//!   events as tokens arrive ([`generate`]). A panic in a handler is caught and answered 500.
//! - Admission is bounded twice, and both bounds answer 503 + `Retry-After` at once: at most
//!   `max_concurrent_requests` generation requests are served at a time (so spare workers stay
//!   free for health checks, metrics and rejections), and the engine's queue is bounded.
//! - [`metrics::ServerMetrics`] holds what the workers record; `/metrics` adds the engine's
//!   figures.
//!
//! **Boundary:** only [`http`] knows the HTTP crate; only the `load` thread touches the model
//! file. Nothing here computes: tokens come from the engine's dispatcher.

mod chat;
mod generate;
pub mod http;
pub mod metrics;
mod routes;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::ServeConfig;
use crate::engine::{EngineOptions, ModelHandle};
use crate::model::chat::ChatTemplate;
use crate::model::tokenizer::Tokenizer;
use crate::model::Model;

use self::http::HttpServer;
use self::metrics::ServerMetrics;

/// How long an idle worker waits for a request before checking for shutdown.
const WORKER_POLL: Duration = Duration::from_millis(100);

/// What `serve` needs besides the configuration.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub config: ServeConfig,
    /// The model file (already resolved from the config and defaults).
    pub model_path: PathBuf,
    /// Adds `POST /debug/panic`, whose handler panics: for the test that shows a panic
    /// becomes a 500 for that request only. Never set by the binary.
    pub panic_route: bool,
}

/// A loaded model, ready to serve.
pub(crate) struct Loaded {
    pub handle: ModelHandle,
    pub tokenizer: Arc<Tokenizer>,
    /// The chat template, or why the model has no usable one (chat answers 500 with it).
    pub chat: Result<ChatTemplate, String>,
    /// Unix seconds at which it finished loading.
    pub created: u64,
}

/// Everything the workers share.
pub(crate) struct State {
    pub opts: ServerOptions,
    pub model_id: String,
    pub model: OnceLock<Loaded>,
    pub load_error: OnceLock<String>,
    pub metrics: ServerMetrics,
    pub in_flight: AtomicUsize,
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
    workers: Vec<JoinHandle<()>>,
    loader: Option<JoinHandle<()>>,
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
    /// model in the background.
    pub fn start(opts: ServerOptions) -> std::io::Result<Server> {
        let cfg = &opts.config;
        let http = Arc::new(HttpServer::bind(
            &cfg.listen,
            Duration::from_millis(cfg.limits.write_timeout_ms),
        )?);
        let model_id = cfg
            .model_id
            .clone()
            .unwrap_or_else(|| default_model_id(&opts.model_path));
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let state = Arc::new(State {
            model_id,
            model: OnceLock::new(),
            load_error: OnceLock::new(),
            metrics: ServerMetrics::default(),
            in_flight: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            http,
            next_id: AtomicU64::new(0),
            id_salt: started ^ u64::from(std::process::id()).rotate_left(32),
            opts,
        });
        let mut workers = Vec::with_capacity(state.cfg().http_workers);
        for i in 0..state.cfg().http_workers {
            let st = state.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || worker(&st))?,
            );
        }
        let st = state.clone();
        let loader = std::thread::Builder::new()
            .name("load-0".into())
            .spawn(move || load(&st))?;
        tracing::info!(addr = %state.http.local_addr(), workers = workers.len(), "listening");
        Ok(Server {
            state,
            workers,
            loader: Some(loader),
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.state.http.local_addr()
    }

    pub fn is_ready(&self) -> bool {
        self.state.model.get().is_some()
    }

    /// The load error, if loading failed.
    pub fn load_error(&self) -> Option<&str> {
        self.state.load_error.get().map(String::as_str)
    }

    /// Waits until the model is loaded (true) or failed or `timeout` passed (false).
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

    /// Stops taking requests, lets the workers finish the ones they hold, then drains the
    /// engine.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let st = &self.state;
        st.shutting_down.store(true, Ordering::SeqCst);
        for _ in 0..self.workers.len() {
            st.http.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(l) = self.loader.take() {
            let _ = l.join();
        }
        if let Some(m) = st.model.get() {
            m.handle.drain();
        }
        tracing::info!("stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            self.stop();
        }
    }
}

/// The `load` thread: model, tokenizer, compute pool, engine.
fn load(st: &State) {
    let t0 = Instant::now();
    match load_model(st) {
        Ok(loaded) => {
            tracing::info!(
                model = %st.model_id,
                secs = format!("{:.2}", t0.elapsed().as_secs_f64()),
                "model loaded"
            );
            let _ = st.model.set(loaded);
        }
        Err(e) => {
            tracing::error!(model = %st.model_id, "cannot load the model: {e}");
            let _ = st.load_error.set(e);
        }
    }
}

fn load_model(st: &State) -> Result<Loaded, String> {
    let cfg = st.cfg();
    let path = &st.opts.model_path;
    let opts = engine_options(cfg);
    let ctx = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let model = Model::load(path, opts.model_options()).map_err(|e| ctx(&e))?;
    let tokenizer = Arc::new(Tokenizer::from_gguf(model.file()).map_err(|e| ctx(&e))?);
    let chat = ChatTemplate::from_gguf(model.file(), &tokenizer, None).map_err(|e| ctx(&e));
    if let Err(e) = &chat {
        tracing::warn!("chat completions are unavailable: {e}");
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads)
        .thread_name(|i| format!("compute-{i}"))
        .build()
        .map_err(|e| format!("cannot start the compute threads: {e}"))?;
    let handle = ModelHandle::start(
        &st.model_id,
        Arc::new(model),
        tokenizer.clone(),
        opts,
        Arc::new(pool),
    )
    .map_err(|e| ctx(&e))?;
    Ok(Loaded {
        handle,
        tokenizer,
        chat,
        created: unix_now(),
    })
}

/// An `http-N` worker: one request at a time until shutdown.
fn worker(st: &State) {
    while !st.shutting_down.load(Ordering::Relaxed) {
        match st.http.recv_timeout(WORKER_POLL) {
            Ok(Some(req)) => routes::serve(st, req),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("receiving a request failed: {e}");
                std::thread::sleep(WORKER_POLL);
            }
        }
    }
}
