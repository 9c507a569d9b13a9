//! Serve configuration: every bound and knob of `ryzanstein serve` with its default and the
//! reason for it, in one place.
//!
//! Values come from four sources, highest precedence first: command-line flags, environment
//! variables (`RYZANSTEIN_<KEY>`), a TOML file (`--config`, flat `key = value` lines with the
//! same keys) and the defaults below. [`ServeSettings`] is the partial form every source
//! produces (clap reads flags and the environment into it, serde reads the file into it);
//! [`ServeConfig::resolve`] layers them and validates the result once.
//!
//! Layer 0: no imports from the rest of the crate.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Every serve setting, each optional: what one source (flags + environment, or a file) says.
/// A TOML file may hold only these keys; any other key is an error that names it.
#[derive(clap::Args, Deserialize, Serialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "RYZANSTEIN_LISTEN")]
    pub listen: Option<String>,
    /// The GGUF model file [default: $RYZANSTEIN_MODEL, else the default model in the cache].
    #[arg(short, long, env = "RYZANSTEIN_MODEL")]
    pub model: Option<PathBuf>,
    /// The model's name in the API [default: the file name without .gguf].
    #[arg(long, env = "RYZANSTEIN_MODEL_ID")]
    pub model_id: Option<String>,
    /// Compute threads (0 = one per core) [default: 0].
    #[arg(short, long, env = "RYZANSTEIN_THREADS")]
    pub threads: Option<usize>,
    /// Most HTTP worker threads, each serving one request at a time; they start as requests
    /// need them [default: max_concurrent_requests + 8].
    #[arg(long, env = "RYZANSTEIN_HTTP_WORKERS")]
    pub http_workers: Option<usize>,
    /// Require `Authorization: Bearer KEY` (or `x-api-key: KEY`) on /v1/*, /tokenize and
    /// /detokenize.
    #[arg(long, env = "RYZANSTEIN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Read the API key from the first line of this file (instead of api_key: keeps it out
    /// of the process list and the environment).
    #[arg(long, env = "RYZANSTEIN_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// /metrics also requires the API key (when one is set) [default: false].
    #[arg(long, env = "RYZANSTEIN_METRICS_REQUIRE_KEY")]
    pub metrics_require_key: Option<bool>,
    /// On SIGTERM, requests in flight get this long to finish; then they end with an error
    /// [default: 25000].
    #[arg(long, env = "RYZANSTEIN_DRAIN_TIMEOUT_MS")]
    pub drain_timeout_ms: Option<u64>,
    /// Log filter (tracing EnvFilter syntax, e.g. "info" or "ryzanstein=debug") [default:
    /// $RUST_LOG, else info].
    #[arg(long, env = "RYZANSTEIN_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Largest request body in bytes [default: 1048576].
    #[arg(long, env = "RYZANSTEIN_BODY_BYTES_MAX")]
    pub body_bytes_max: Option<usize>,
    /// Generation requests in flight at once, each on a worker thread; more wait for one,
    /// counted by admission [default: 2 x max_batch_size].
    #[arg(long, env = "RYZANSTEIN_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Largest max_tokens a request may ask for [default: 4096].
    #[arg(long, env = "RYZANSTEIN_MAX_TOKENS_CAP")]
    pub max_tokens_cap: Option<usize>,
    /// max_tokens of a request that gives none [default: 256].
    #[arg(long, env = "RYZANSTEIN_MAX_TOKENS_DEFAULT")]
    pub max_tokens_default: Option<usize>,
    /// Longest prompt in tokens (0 = the context length minus one) [default: 0].
    #[arg(long, env = "RYZANSTEIN_PROMPT_TOKENS_MAX")]
    pub prompt_tokens_max: Option<usize>,
    /// Largest `n` (choices per prompt) [default: 8].
    #[arg(long, env = "RYZANSTEIN_N_MAX")]
    pub n_max: Option<usize>,
    /// Most sequences one request may start: prompts × n [default: 32].
    #[arg(long, env = "RYZANSTEIN_CHOICES_MAX")]
    pub choices_max: Option<usize>,
    /// Most stop strings per request [default: 16].
    #[arg(long, env = "RYZANSTEIN_STOP_MAX")]
    pub stop_max: Option<usize>,
    /// Longest stop string in bytes [default: 256].
    #[arg(long, env = "RYZANSTEIN_STOP_BYTES_MAX")]
    pub stop_bytes_max: Option<usize>,
    /// Most logit_bias entries per request [default: 300].
    #[arg(long, env = "RYZANSTEIN_LOGIT_BIAS_MAX")]
    pub logit_bias_max: Option<usize>,
    /// Seconds a 503 tells the client to wait (Retry-After) [default: 1].
    #[arg(long, env = "RYZANSTEIN_RETRY_AFTER_S")]
    pub retry_after_s: Option<u64>,
    /// A socket write that blocks this long fails and cancels its request (SO_SNDTIMEO)
    /// [default: 30000].
    #[arg(long, env = "RYZANSTEIN_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// Open connections past which a new connection's request gets 503 and the connection is
    /// closed [default: 1024].
    #[arg(long, env = "RYZANSTEIN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// A connection with no request for this long is closed [default: 75000].
    #[arg(long, env = "RYZANSTEIN_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// A request's head and body must arrive within this from its first byte; else 408 and
    /// the connection is closed [default: 30000].
    #[arg(long, env = "RYZANSTEIN_REQUEST_READ_TIMEOUT_MS")]
    pub request_read_timeout_ms: Option<u64>,
    /// A stream with nothing to send for this long gets an SSE comment ping [default: 1000].
    #[arg(long, env = "RYZANSTEIN_PING_INTERVAL_MS")]
    pub ping_interval_ms: Option<u64>,
    /// A generation request still running this long after it arrived is cancelled: 504, or a
    /// final SSE error event (0 = no deadline) [default: 600000].
    #[arg(long, env = "RYZANSTEIN_REQUEST_DEADLINE_MS")]
    pub request_deadline_ms: Option<u64>,

    /// Context length per sequence (positions) [default: 4096].
    #[arg(long, env = "RYZANSTEIN_N_CTX")]
    pub n_ctx: Option<usize>,
    /// Most sequences in one forward pass [default: 32].
    #[arg(long, env = "RYZANSTEIN_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// Most tokens in one forward pass [default: 512].
    #[arg(long, env = "RYZANSTEIN_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// Requests waiting for a slot, per model; past it 503 at once [default:
    /// max_concurrent_requests].
    #[arg(long, env = "RYZANSTEIN_QUEUE_DEPTH")]
    pub queue_depth: Option<usize>,
    /// Bytes of the KV-cache pool (0 = every slot's whole context) [default: 0].
    #[arg(long, env = "RYZANSTEIN_KV_POOL_BYTES")]
    pub kv_pool_bytes: Option<usize>,
    /// How long an idle engine waits after a first arrival for more [default: 0].
    #[arg(long, env = "RYZANSTEIN_BATCH_WINDOW_MS")]
    pub batch_window_ms: Option<u64>,
    /// A step with decode tokens may take this many times a decode-only step [default: 2.5].
    #[arg(long, env = "RYZANSTEIN_ITL_FACTOR")]
    pub itl_factor: Option<f64>,
    /// Prompts this short go into a step whole past the ITL cap: one new one per step, and every
    /// one that has waited a step [default: 64].
    #[arg(long, env = "RYZANSTEIN_WHOLE_PROMPT_TOKENS")]
    pub whole_prompt_tokens: Option<usize>,
    /// Events buffered per sequence; a client this far behind is cancelled [default: 256].
    #[arg(long, env = "RYZANSTEIN_EVENT_BUFFER")]
    pub event_buffer: Option<usize>,
    /// A request whose predicted wait for a slot (from the work queued ahead of it and the
    /// model's measured step times) exceeds this gets 503 with a Retry-After of when it would
    /// fit (0 = admit while the queue has room) [default: 10000].
    #[arg(long, env = "RYZANSTEIN_MAX_QUEUE_WAIT_MS")]
    pub max_queue_wait_ms: Option<u64>,
    /// Keep the KV blocks of finished prompts and answers, and reuse them for later prompts
    /// that start the same way (`false`: prefill every prompt whole) [default: true].
    #[arg(long, env = "RYZANSTEIN_PREFIX_CACHE")]
    pub prefix_cache: Option<bool>,

    /// A directory of GGUF models to serve (every *.gguf, plus models.toml if present);
    /// replaces --model.
    #[arg(long, env = "RYZANSTEIN_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// The manifest of the models directory [default: MODELS_DIR/models.toml if present].
    #[arg(long, env = "RYZANSTEIN_MODELS_MANIFEST")]
    pub models_manifest: Option<PathBuf>,
    /// Loader threads (loads, unloads, file probes) [default: 2].
    #[arg(long, env = "RYZANSTEIN_LOADER_THREADS")]
    pub loader_threads: Option<usize>,
    /// Model loads that may run at once [default: 1].
    #[arg(long, env = "RYZANSTEIN_MAX_CONCURRENT_LOADS")]
    pub max_concurrent_loads: Option<usize>,
    /// Most models loaded at once (0 = no bound) [default: 0].
    #[arg(long, env = "RYZANSTEIN_MODELS_MAX")]
    pub models_max: Option<usize>,
    /// Most bytes of loaded models: file, KV pool (0 = no bound) [default: 0].
    #[arg(long, env = "RYZANSTEIN_MODELS_MEMORY_MAX")]
    pub models_memory_max: Option<u64>,
    /// When a load finds no room and nothing can be evicted: "wait" or "fail" (its
    /// requests get 503 either way) [default: wait].
    #[arg(long, env = "RYZANSTEIN_MODELS_WHEN_FULL")]
    pub models_when_full: Option<String>,
    /// How long a request waits for its model to load before a 503 [default: 10000].
    #[arg(long, env = "RYZANSTEIN_LOAD_WAIT_MS")]
    pub load_wait_ms: Option<u64>,
    /// /health/ready waits for every preload model, not only the default one [default: true].
    #[arg(long, env = "RYZANSTEIN_READY_REQUIRES_PRELOAD")]
    pub ready_requires_preload: Option<bool>,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    pub listen: String,
    /// `None`: the binary picks the default model.
    pub model: Option<PathBuf>,
    pub model_id: Option<String>,
    pub threads: usize,
    pub http_workers: usize,
    /// The key itself, from `api_key` or read from `api_key_file`.
    pub api_key: Option<String>,
    /// Where the key was read from (printed by `--print-config` instead of the key).
    pub api_key_file: Option<PathBuf>,
    /// /metrics needs the key too (when one is set): the page names models and traffic.
    pub metrics_require_key: bool,
    /// How long a shutdown waits for the requests in flight. Under the 30 s that Kubernetes
    /// and most supervisors give before SIGKILL, with room for the engines to stop.
    pub drain_timeout_ms: u64,
    pub log_level: Option<String>,
    pub limits: Limits,
    pub engine: EngineKnobs,
    pub models: ModelsKnobs,
}

/// The model manager's settings (mapped onto `engine::RegistryOptions` by the server).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelsKnobs {
    /// `Some`: serve this directory's catalog instead of `model`.
    pub dir: Option<PathBuf>,
    pub manifest: Option<PathBuf>,
    /// Loads, unload drains and probes; two let an unload or probe proceed beside a load.
    pub loader_threads: usize,
    /// One load at a time keeps the disk and the page cache to one file and leaves CPU to the
    /// running models.
    pub max_concurrent_loads: usize,
    /// 0: no bound.
    pub models_max: usize,
    /// 0: no bound. Counts each model's file and KV pool.
    pub memory_max_bytes: u64,
    /// true: a load that finds no room is given up ("fail"); false: it waits ("wait").
    pub when_full_fail: bool,
    /// A small model loads in well under a second from the page cache, a large one in
    /// seconds; ten seconds covers both, and a client gets its 503 before typical timeouts.
    pub load_wait_ms: u64,
    pub ready_requires_preload: bool,
}

impl Default for ModelsKnobs {
    fn default() -> Self {
        ModelsKnobs {
            dir: None,
            manifest: None,
            loader_threads: 2,
            max_concurrent_loads: 1,
            models_max: 0,
            memory_max_bytes: 0,
            when_full_fail: false,
            load_wait_ms: 10_000,
            ready_requires_preload: true,
        }
    }
}

/// Bounds on what one request may ask for and on the HTTP edge.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// A JSON request needs kilobytes; a megabyte leaves room for long prompts and caps memory
    /// per worker.
    pub body_bytes_max: usize,
    /// Generation requests on worker threads at once (each holds one, and its event buffer,
    /// until it ends): a memory bound, not a throughput limiter. Requests past it wait for a
    /// worker in a queue that admission by expected wait counts and bounds (each connection
    /// carries one request at a time, so `max_connections` bounds that queue); nothing is
    /// refused for it. Twice the batch: the running batch and one queued to refill it.
    pub max_concurrent_requests: usize,
    pub max_tokens_cap: usize,
    pub max_tokens_default: usize,
    /// 0: the context length minus one.
    pub prompt_tokens_max: usize,
    pub n_max: usize,
    pub choices_max: usize,
    pub stop_max: usize,
    pub stop_bytes_max: usize,
    /// OpenAI's own cap is 300.
    pub logit_bias_max: usize,
    pub retry_after_s: u64,
    /// Bounds how long a client that stops reading can hold a worker.
    pub write_timeout_ms: u64,
    /// Each connection is a thread (tiny_http). Past the cap a connection is answered 503 by
    /// its own thread, which waits at most a second for the request, so a flood holds
    /// threads and descriptors for a second each, never the workers.
    pub max_connections: usize,
    /// Longer than the idle timeouts of client pools (ureq 15 s, nginx's upstream keep-alive
    /// 60 s) so that the client side closes first and never sends on a connection the server
    /// is closing; nginx's own client keep-alive is 75 s.
    pub idle_timeout_ms: u64,
    /// Bounds slowloris: a 1 MiB body needs only 35 KB/s to arrive in 30 s.
    pub request_read_timeout_ms: u64,
    /// Proxies drop idle streams; a comment ping every second keeps them open.
    pub ping_interval_ms: u64,
    /// 0: none. Ten minutes is 4096 tokens (`max_tokens_cap`) at under 7 tokens/s, well
    /// below what a loaded server gives one stream, so only a runaway request meets it; it
    /// bounds how long one request can hold a worker, a slot and KV memory.
    pub request_deadline_ms: u64,
}

/// The engine's batching knobs (mapped onto `engine::EngineOptions` by the server).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineKnobs {
    pub n_ctx: usize,
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub queue_depth: usize,
    pub kv_pool_bytes: usize,
    pub batch_window_ms: u64,
    pub itl_factor: f64,
    pub whole_prompt_tokens: usize,
    /// Events (about one per token) a sequence may have waiting for its HTTP worker. A worker
    /// only falls behind when its socket write blocks, i.e. after the kernel's send and
    /// receive buffers (hundreds of KiB, thousands of events) are full: a client this far
    /// behind has stopped reading, and its sequence is cancelled rather than left to generate
    /// up to 4096 tokens nobody reads. Lower than the engine's own 4096, which suits callers
    /// that read a stream only after it ends.
    pub event_buffer: usize,
    /// The prefix cache: whole KV blocks of earlier sequences are reused by prompts that
    /// start with the same tokens.
    pub prefix_cache: bool,
    /// 0: no limit. See docs/OPERATIONS.md § Admission for how the default was measured.
    pub max_queue_wait_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes_max: 1 << 20,
            max_concurrent_requests: 64,
            max_tokens_cap: 4096,
            max_tokens_default: 256,
            prompt_tokens_max: 0,
            n_max: 8,
            choices_max: 32,
            stop_max: 16,
            stop_bytes_max: 256,
            logit_bias_max: 300,
            retry_after_s: 1,
            write_timeout_ms: 30_000,
            max_connections: 1024,
            idle_timeout_ms: 75_000,
            request_read_timeout_ms: 30_000,
            ping_interval_ms: 1000,
            request_deadline_ms: 600_000,
        }
    }
}

impl Default for EngineKnobs {
    /// The engine's own defaults (`engine::EngineOptions::default`), but `event_buffer`.
    fn default() -> Self {
        EngineKnobs {
            n_ctx: 4096,
            max_batch_size: 32,
            max_batch_tokens: 512,
            queue_depth: 64,
            kv_pool_bytes: 0,
            batch_window_ms: 0,
            itl_factor: 2.5,
            whole_prompt_tokens: 64,
            event_buffer: 256,
            prefix_cache: true,
            max_queue_wait_ms: MAX_QUEUE_WAIT_MS,
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig::resolve(ServeSettings::default(), ServeSettings::default())
            .expect("the defaults are valid")
    }
}

/// Spare HTTP workers beyond the generation cap, for health, metrics and fast rejections.
pub const SPARE_HTTP_WORKERS: usize = 8;
/// Most HTTP workers: each is an OS thread.
pub const HTTP_WORKERS_MAX: usize = 4096;
/// Most loader threads: loads are disk- and memory-bound, a few threads saturate both.
pub const LOADER_THREADS_MAX: usize = 64;

/// Generation requests in flight per engine slot by default: the running batch and one
/// batch queued in the engine to refill it. More only adds threads (each waits for its
/// request's tokens): with 1,000 connections on the tiny model, 64 in flight served 104% of
/// the 64-connection peak, 1,024 in flight 66-85% (docs/OPERATIONS.md § Admission).
pub const IN_FLIGHT_PER_SLOT: usize = 2;

/// Default of `max_queue_wait_ms`: see docs/OPERATIONS.md § Admission for the measurement.
pub const MAX_QUEUE_WAIT_MS: u64 = 10_000;

/// Default of `drain_timeout_ms`.
pub const DRAIN_TIMEOUT_MS: u64 = 25_000;

/// The API key: `key` (an empty one means none), or the first line of `file`, trimmed.
/// Both, an unreadable file or an empty first line are errors: a key file that yields no
/// key must not leave the server open.
fn api_key(key: Option<String>, file: Option<&Path>) -> Result<Option<String>, ConfigError> {
    let Some(path) = file else {
        return Ok(key.filter(|k| !k.is_empty()));
    };
    let bad = |reason: String| ConfigError::Invalid {
        key: "api_key_file",
        value: path.display().to_string(),
        reason,
    };
    if key.is_some() {
        return Err(bad("api_key is set too: give one of them".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(bad("its first line is empty".into()));
    }
    Ok(Some(line.to_string()))
}

/// A configuration error (bad file, bad value), naming what is wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("config file {path}: {msg}")]
    File { path: String, msg: String },
    #[error("{key} = {value}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

impl ServeSettings {
    /// Reads a TOML file of settings; unknown keys and wrong types are errors naming the key.
    pub fn from_file(path: &Path) -> Result<ServeSettings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        ServeSettings::from_toml(&text).map_err(|msg| ConfigError::File {
            path: path.display().to_string(),
            msg,
        })
    }

    pub fn from_toml(text: &str) -> Result<ServeSettings, String> {
        toml::from_str(text).map_err(|e| e.message().to_string())
    }

    /// `self` where set, else `lower`.
    fn over(self, lower: ServeSettings) -> ServeSettings {
        macro_rules! pick {
            ($($f:ident),* $(,)?) => {
                ServeSettings { $($f: self.$f.or(lower.$f)),* }
            };
        }
        pick!(
            listen,
            model,
            model_id,
            threads,
            http_workers,
            api_key,
            api_key_file,
            metrics_require_key,
            drain_timeout_ms,
            log_level,
            body_bytes_max,
            max_concurrent_requests,
            max_tokens_cap,
            max_tokens_default,
            prompt_tokens_max,
            n_max,
            choices_max,
            stop_max,
            stop_bytes_max,
            logit_bias_max,
            retry_after_s,
            write_timeout_ms,
            max_connections,
            idle_timeout_ms,
            request_read_timeout_ms,
            ping_interval_ms,
            request_deadline_ms,
            n_ctx,
            max_batch_size,
            max_batch_tokens,
            queue_depth,
            kv_pool_bytes,
            batch_window_ms,
            itl_factor,
            whole_prompt_tokens,
            event_buffer,
            prefix_cache,
            max_queue_wait_ms,
            models_dir,
            models_manifest,
            loader_threads,
            max_concurrent_loads,
            models_max,
            models_memory_max,
            models_when_full,
            load_wait_ms,
            ready_requires_preload,
        )
    }
}

impl ServeConfig {
    /// Layers `upper` (flags and environment) over `file` over the defaults, and validates.
    pub fn resolve(upper: ServeSettings, file: ServeSettings) -> Result<ServeConfig, ConfigError> {
        let s = upper.over(file);
        let (dl, de) = (Limits::default(), EngineKnobs::default());
        let limits = Limits {
            body_bytes_max: s.body_bytes_max.unwrap_or(dl.body_bytes_max),
            max_concurrent_requests: s.max_concurrent_requests.unwrap_or_else(|| {
                let slots = s
                    .max_batch_size
                    .unwrap_or(EngineKnobs::default().max_batch_size);
                IN_FLIGHT_PER_SLOT * slots
            }),
            max_tokens_cap: s.max_tokens_cap.unwrap_or(dl.max_tokens_cap),
            max_tokens_default: s.max_tokens_default.unwrap_or(dl.max_tokens_default),
            prompt_tokens_max: s.prompt_tokens_max.unwrap_or(dl.prompt_tokens_max),
            n_max: s.n_max.unwrap_or(dl.n_max),
            choices_max: s.choices_max.unwrap_or(dl.choices_max),
            stop_max: s.stop_max.unwrap_or(dl.stop_max),
            stop_bytes_max: s.stop_bytes_max.unwrap_or(dl.stop_bytes_max),
            logit_bias_max: s.logit_bias_max.unwrap_or(dl.logit_bias_max),
            retry_after_s: s.retry_after_s.unwrap_or(dl.retry_after_s),
            write_timeout_ms: s.write_timeout_ms.unwrap_or(dl.write_timeout_ms),
            max_connections: s.max_connections.unwrap_or(dl.max_connections),
            idle_timeout_ms: s.idle_timeout_ms.unwrap_or(dl.idle_timeout_ms),
            request_read_timeout_ms: s
                .request_read_timeout_ms
                .unwrap_or(dl.request_read_timeout_ms),
            ping_interval_ms: s.ping_interval_ms.unwrap_or(dl.ping_interval_ms),
            request_deadline_ms: s.request_deadline_ms.unwrap_or(dl.request_deadline_ms),
        };
        let engine = EngineKnobs {
            n_ctx: s.n_ctx.unwrap_or(de.n_ctx),
            max_batch_size: s.max_batch_size.unwrap_or(de.max_batch_size),
            max_batch_tokens: s.max_batch_tokens.unwrap_or(de.max_batch_tokens),
            queue_depth: s.queue_depth.unwrap_or(limits.max_concurrent_requests),
            kv_pool_bytes: s.kv_pool_bytes.unwrap_or(de.kv_pool_bytes),
            batch_window_ms: s.batch_window_ms.unwrap_or(de.batch_window_ms),
            itl_factor: s.itl_factor.unwrap_or(de.itl_factor),
            whole_prompt_tokens: s.whole_prompt_tokens.unwrap_or(de.whole_prompt_tokens),
            event_buffer: s.event_buffer.unwrap_or(de.event_buffer),
            prefix_cache: s.prefix_cache.unwrap_or(de.prefix_cache),
            max_queue_wait_ms: s.max_queue_wait_ms.unwrap_or(de.max_queue_wait_ms),
        };
        let dm = ModelsKnobs::default();
        let when_full_fail = match s.models_when_full.as_deref() {
            None | Some("wait") => false,
            Some("fail") => true,
            Some(v) => {
                return Err(ConfigError::Invalid {
                    key: "models_when_full",
                    value: v.to_string(),
                    reason: "must be \"wait\" or \"fail\"".into(),
                })
            }
        };
        let models = ModelsKnobs {
            dir: s.models_dir,
            manifest: s.models_manifest,
            loader_threads: s.loader_threads.unwrap_or(dm.loader_threads),
            max_concurrent_loads: s.max_concurrent_loads.unwrap_or(dm.max_concurrent_loads),
            models_max: s.models_max.unwrap_or(dm.models_max),
            memory_max_bytes: s.models_memory_max.unwrap_or(dm.memory_max_bytes),
            when_full_fail,
            load_wait_ms: s.load_wait_ms.unwrap_or(dm.load_wait_ms),
            ready_requires_preload: s
                .ready_requires_preload
                .unwrap_or(dm.ready_requires_preload),
        };
        let cfg = ServeConfig {
            listen: s.listen.unwrap_or_else(|| "127.0.0.1:8080".to_string()),
            model: s.model,
            model_id: s.model_id,
            threads: s.threads.unwrap_or(0),
            http_workers: s
                .http_workers
                .unwrap_or(limits.max_concurrent_requests + SPARE_HTTP_WORKERS),
            api_key: api_key(s.api_key, s.api_key_file.as_deref())?,
            api_key_file: s.api_key_file,
            metrics_require_key: s.metrics_require_key.unwrap_or(false),
            drain_timeout_ms: s.drain_timeout_ms.unwrap_or(DRAIN_TIMEOUT_MS),
            log_level: s.log_level,
            limits,
            engine,
            models,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, value: String, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                value,
                reason: reason.to_string(),
            })
        };
        let (l, e) = (&self.limits, &self.engine);
        if self.http_workers <= l.max_concurrent_requests || self.http_workers > HTTP_WORKERS_MAX {
            return bad(
                "http_workers",
                self.http_workers.to_string(),
                &format!(
                    "must be above max_concurrent_requests ({}) so health checks and \
                     rejections always find a worker, and at most {HTTP_WORKERS_MAX}",
                    l.max_concurrent_requests
                ),
            );
        }
        let positive: [(&'static str, usize); 10] = [
            ("body_bytes_max", l.body_bytes_max),
            ("max_concurrent_requests", l.max_concurrent_requests),
            ("max_tokens_cap", l.max_tokens_cap),
            ("max_tokens_default", l.max_tokens_default),
            ("n_max", l.n_max),
            ("choices_max", l.choices_max),
            ("n_ctx", e.n_ctx),
            ("max_batch_size", e.max_batch_size),
            ("max_batch_tokens", e.max_batch_tokens),
            ("queue_depth", e.queue_depth),
        ];
        if let Some((key, v)) = positive.iter().find(|(_, v)| *v == 0) {
            return bad(key, v.to_string(), "must be at least 1");
        }
        if l.max_tokens_default > l.max_tokens_cap {
            return bad(
                "max_tokens_default",
                l.max_tokens_default.to_string(),
                "must not exceed max_tokens_cap",
            );
        }
        if l.ping_interval_ms == 0 {
            return bad("ping_interval_ms", "0".into(), "must be at least 1");
        }
        let edge: [(&'static str, u64); 3] = [
            ("max_connections", l.max_connections as u64),
            ("idle_timeout_ms", l.idle_timeout_ms),
            ("request_read_timeout_ms", l.request_read_timeout_ms),
        ];
        if let Some((key, v)) = edge.iter().find(|(_, v)| *v == 0) {
            return bad(key, v.to_string(), "must be at least 1");
        }
        let m = &self.models;
        if m.loader_threads == 0 || m.loader_threads > LOADER_THREADS_MAX {
            return bad(
                "loader_threads",
                m.loader_threads.to_string(),
                &format!("must be 1 to {LOADER_THREADS_MAX}"),
            );
        }
        if m.max_concurrent_loads == 0 || m.max_concurrent_loads > m.loader_threads {
            return bad(
                "max_concurrent_loads",
                m.max_concurrent_loads.to_string(),
                &format!("must be 1 to loader_threads ({})", m.loader_threads),
            );
        }
        if m.manifest.is_some() && m.dir.is_none() {
            return bad(
                "models_manifest",
                format!("{:?}", m.manifest),
                "needs models_dir",
            );
        }
        if !(e.itl_factor.is_finite() && e.itl_factor >= 1.0) {
            return bad(
                "itl_factor",
                e.itl_factor.to_string(),
                "must be a number >= 1",
            );
        }
        Ok(())
    }

    /// The configuration as TOML settings (the API key redacted), for `serve --print-config`.
    pub fn to_toml(&self) -> String {
        let (l, e, m) = (&self.limits, &self.engine, &self.models);
        let s = ServeSettings {
            listen: Some(self.listen.clone()),
            model: self.model.clone(),
            model_id: self.model_id.clone(),
            threads: Some(self.threads),
            http_workers: Some(self.http_workers),
            api_key: match &self.api_key_file {
                Some(_) => None,
                None => self.api_key.as_ref().map(|_| "<redacted>".to_string()),
            },
            api_key_file: self.api_key_file.clone(),
            metrics_require_key: Some(self.metrics_require_key),
            drain_timeout_ms: Some(self.drain_timeout_ms),
            log_level: self.log_level.clone(),
            body_bytes_max: Some(l.body_bytes_max),
            max_concurrent_requests: Some(l.max_concurrent_requests),
            max_tokens_cap: Some(l.max_tokens_cap),
            max_tokens_default: Some(l.max_tokens_default),
            prompt_tokens_max: Some(l.prompt_tokens_max),
            n_max: Some(l.n_max),
            choices_max: Some(l.choices_max),
            stop_max: Some(l.stop_max),
            stop_bytes_max: Some(l.stop_bytes_max),
            logit_bias_max: Some(l.logit_bias_max),
            retry_after_s: Some(l.retry_after_s),
            write_timeout_ms: Some(l.write_timeout_ms),
            max_connections: Some(l.max_connections),
            idle_timeout_ms: Some(l.idle_timeout_ms),
            request_read_timeout_ms: Some(l.request_read_timeout_ms),
            ping_interval_ms: Some(l.ping_interval_ms),
            request_deadline_ms: Some(l.request_deadline_ms),
            n_ctx: Some(e.n_ctx),
            max_batch_size: Some(e.max_batch_size),
            max_batch_tokens: Some(e.max_batch_tokens),
            queue_depth: Some(e.queue_depth),
            kv_pool_bytes: Some(e.kv_pool_bytes),
            batch_window_ms: Some(e.batch_window_ms),
            itl_factor: Some(e.itl_factor),
            whole_prompt_tokens: Some(e.whole_prompt_tokens),
            event_buffer: Some(e.event_buffer),
            prefix_cache: Some(e.prefix_cache),
            max_queue_wait_ms: Some(e.max_queue_wait_ms),
            models_dir: m.dir.clone(),
            models_manifest: m.manifest.clone(),
            loader_threads: Some(m.loader_threads),
            max_concurrent_loads: Some(m.max_concurrent_loads),
            models_max: Some(m.models_max),
            models_memory_max: Some(m.memory_max_bytes),
            models_when_full: Some(if m.when_full_fail { "fail" } else { "wait" }.into()),
            load_wait_ms: Some(m.load_wait_ms),
            ready_requires_preload: Some(m.ready_requires_preload),
        };
        toml::to_string(&s).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_upper_then_file_then_default() {
        let file = ServeSettings::from_toml("listen = \"0.0.0.0:9\"\nn_max = 3\nn_ctx = 1024\n")
            .expect("valid file");
        let upper = ServeSettings {
            n_max: Some(5),
            ..ServeSettings::default()
        };
        let c = ServeConfig::resolve(upper, file).expect("valid");
        assert_eq!(c.limits.n_max, 5, "flag over file");
        assert_eq!(c.listen, "0.0.0.0:9", "file over default");
        assert_eq!(c.engine.n_ctx, 1024);
        assert_eq!(c.engine.max_batch_size, 32, "default");
        assert_eq!(c.limits.max_concurrent_requests, 2 * 32, "twice the batch");
        assert_eq!(c.engine.queue_depth, c.limits.max_concurrent_requests);
        assert_eq!(c.http_workers, 64 + SPARE_HTTP_WORKERS);
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let e = ServeSettings::from_toml("listen = \"x\"\nmax_batch_sise = 4\n").unwrap_err();
        assert!(e.contains("max_batch_sise"), "{e}");
        let e = ServeSettings::from_toml("n_ctx = \"big\"\n").unwrap_err();
        assert!(e.contains("string") || e.contains("integer"), "{e}");
    }

    #[test]
    fn invalid_values_are_rejected() {
        let s = |f: fn(&mut ServeSettings)| {
            let mut s = ServeSettings::default();
            f(&mut s);
            ServeConfig::resolve(s, ServeSettings::default())
        };
        assert!(matches!(
            s(|s| s.http_workers = Some(10)),
            Err(ConfigError::Invalid {
                key: "http_workers",
                ..
            })
        ));
        assert!(matches!(
            s(|s| s.n_ctx = Some(0)),
            Err(ConfigError::Invalid { key: "n_ctx", .. })
        ));
        assert!(matches!(
            s(|s| s.models_when_full = Some("later".into())),
            Err(ConfigError::Invalid {
                key: "models_when_full",
                ..
            })
        ));
        assert!(matches!(
            s(|s| s.max_concurrent_loads = Some(3)),
            Err(ConfigError::Invalid {
                key: "max_concurrent_loads",
                ..
            })
        ));
        assert!(matches!(
            s(|s| s.itl_factor = Some(0.5)),
            Err(ConfigError::Invalid {
                key: "itl_factor",
                ..
            })
        ));
    }

    #[test]
    fn printed_config_reads_back() {
        let c = ServeConfig::default();
        let back = ServeSettings::from_toml(&c.to_toml()).expect("round trip");
        assert_eq!(
            ServeConfig::resolve(back, ServeSettings::default()).expect("valid"),
            c
        );
    }
}
