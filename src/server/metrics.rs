//! The server's metrics and the `/metrics` page (Prometheus text format 0.0.4, hand-written).
//!
//! The server records per-request figures here (requests by route and status, time to first
//! token, inter-token latency, end-to-end latency, tokens billed); the engine's own figures
//! (queue time, batch sizes, running and waiting sequences, KV pool) are read from
//! `EngineStats` at render time. Names are documented in `docs/METRICS.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::engine::admission::Gauge;
use crate::engine::{EngineStats, ModelState, Registry};
use crate::metrics::{Histogram, LATENCY_BOUNDS_S};

/// Figures recorded by the HTTP workers.
pub struct ServerMetrics {
    /// (route, status) → count. Routes are a fixed set, so the map stays small.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    /// Streams whose client went away before the end.
    pub client_disconnects: AtomicU64,
    /// Handlers that panicked (answered 500).
    pub panics: AtomicU64,
    /// Generation requests cancelled at `request_deadline_ms`.
    pub deadlines_exceeded: AtomicU64,
    /// Generation requests refused at `max_concurrent_requests`.
    pub refused_in_flight: AtomicU64,
    /// Requests resent before their refusal's `Retry-After`, held until it.
    pub held_retries: AtomicU64,
}

/// Figures that live elsewhere and are read when the page is rendered.
pub struct Live<'a> {
    /// (model id, engine figures) of every loaded model.
    pub engines: Vec<(&'a str, &'a EngineStats)>,
    /// (model id, admission gauge) of every loaded model.
    pub gauges: Vec<(&'a str, &'a Gauge)>,
    pub registry: &'a Registry,
    pub ready: bool,
    pub in_flight: usize,
    pub connections_accepted: u64,
    pub connections_open: usize,
    /// Connections answered 503 past `max_connections`.
    pub connections_rejected: u64,
    pub accept_errors: u64,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics {
            requests: Mutex::new(BTreeMap::new()),
            ttft: Histogram::new(LATENCY_BOUNDS_S),
            itl: Histogram::new(LATENCY_BOUNDS_S),
            e2e: Histogram::new(LATENCY_BOUNDS_S),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            client_disconnects: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            deadlines_exceeded: AtomicU64::new(0),
            refused_in_flight: AtomicU64::new(0),
            held_retries: AtomicU64::new(0),
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

impl ServerMetrics {
    pub fn count_request(&self, route: &'static str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route, status)).or_insert(0) += 1;
    }

    /// Requests answered so far, all routes.
    pub fn requests_total(&self) -> u64 {
        let m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        m.values().sum()
    }

    /// The whole `/metrics` page.
    pub fn render(&self, live: &Live) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.render_http(&mut out, live);
        self.render_latency(&mut out);
        render_engines(&mut out, &live.engines);
        self.render_refusals(&mut out, live);
        render_admission(&mut out, &live.gauges);
        render_models(&mut out, live.registry);
        scalar(
            &mut out,
            "ryzanstein_model_ready",
            "gauge",
            "1 once the models readiness requires are loaded.",
            u8::from(live.ready),
        );
        if let Some(rss) = resident_bytes() {
            scalar(
                &mut out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory (VmRSS of /proc/self/status).",
                rss,
            );
        }
        out
    }

    /// Generation requests refused (503), by reason: the predicted wait over
    /// `max_queue_wait_ms` and a full queue (per model), `max_concurrent_requests`, and
    /// connections past `max_connections` (each answered once and closed).
    fn render_refusals(&self, out: &mut String, live: &Live) {
        let name = "ryzanstein_requests_refused_total";
        header(
            out,
            name,
            "counter",
            "Requests refused with 503, by reason.",
        );
        for (model, st) in &live.engines {
            let by_model = [
                ("wait", st.refused_wait.load(Ordering::Relaxed)),
                ("queue_full", st.refused_queue_full.load(Ordering::Relaxed)),
            ];
            for (reason, n) in by_model {
                let _ = writeln!(out, "{name}{{reason=\"{reason}\",model=\"{model}\"}} {n}");
            }
        }
        let in_flight = self.refused_in_flight.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}{{reason=\"in_flight\"}} {in_flight}");
        let conns = live.connections_rejected;
        let _ = writeln!(out, "{name}{{reason=\"connections\"}} {conns}");
        scalar(
            out,
            "ryzanstein_requests_held_retries_total",
            "counter",
            "Requests resent on a connection before its last refusal's Retry-After, held until it.",
            self.held_retries.load(Ordering::Relaxed),
        );
    }

    fn render_http(&self, out: &mut String, live: &Live) {
        let name = "ryzanstein_http_requests_total";
        header(
            out,
            name,
            "counter",
            "HTTP requests answered, by route and status.",
        );
        {
            let m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            for ((route, status), n) in m.iter() {
                let _ = writeln!(out, "{name}{{route=\"{route}\",status=\"{status}\"}} {n}");
            }
        }
        let counters: [(&str, &str, &str, u64); 8] = [
            (
                "ryzanstein_http_connections_accepted_total",
                "counter",
                "TCP connections accepted (requests_total / this = keep-alive reuse).",
                live.connections_accepted,
            ),
            (
                "ryzanstein_http_connections_open",
                "gauge",
                "TCP connections open now.",
                live.connections_open as u64,
            ),
            (
                "ryzanstein_http_connections_rejected_total",
                "counter",
                "Connections answered 503 for being over max_connections.",
                live.connections_rejected,
            ),
            (
                "ryzanstein_http_accept_errors_total",
                "counter",
                "Failed accept() calls.",
                live.accept_errors,
            ),
            (
                "ryzanstein_requests_in_flight",
                "gauge",
                "Generation requests being served now.",
                live.in_flight as u64,
            ),
            (
                "ryzanstein_client_disconnects_total",
                "counter",
                "Streams cancelled because the client went away.",
                self.client_disconnects.load(Ordering::Relaxed),
            ),
            (
                "ryzanstein_handler_panics_total",
                "counter",
                "Requests whose handler panicked (answered 500).",
                self.panics.load(Ordering::Relaxed),
            ),
            (
                "ryzanstein_request_deadline_exceeded_total",
                "counter",
                "Generation requests cancelled at their deadline (504 or a final SSE error).",
                self.deadlines_exceeded.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, v) in counters {
            scalar(out, name, kind, help, v);
        }
    }

    fn render_latency(&self, out: &mut String) {
        let hists = [
            (
                "ryzanstein_time_to_first_token_seconds",
                "From the request's arrival at a worker to its first generated token.",
                &self.ttft,
            ),
            (
                "ryzanstein_inter_token_latency_seconds",
                "Between consecutive tokens of one sequence.",
                &self.itl,
            ),
            (
                "ryzanstein_e2e_request_latency_seconds",
                "From the request's arrival at a worker to its last byte.",
                &self.e2e,
            ),
        ];
        for (name, help, h) in hists {
            header(out, name, "histogram", help);
            h.render(out, name, "");
        }
        let tokens = [
            (
                "ryzanstein_prompt_tokens_total",
                "Prompt tokens of answered generation requests (as billed in usage).",
                &self.prompt_tokens,
            ),
            (
                "ryzanstein_generation_tokens_total",
                "Generated tokens of answered generation requests (as billed in usage).",
                &self.generation_tokens,
            ),
        ];
        for (name, help, c) in tokens {
            scalar(out, name, "counter", help, c.load(Ordering::Relaxed));
        }
    }
}

/// The model manager's figures: cache hits and misses, evictions, loads by outcome, load
/// durations, loaded models and their bytes, models by state.
fn render_models(out: &mut String, reg: &Registry) {
    let m = &reg.metrics;
    let counters: [(&str, &str, u64); 4] = [
        (
            "ryzanstein_model_cache_hits_total",
            "Requests whose model was loaded.",
            m.hits.load(Ordering::Relaxed),
        ),
        (
            "ryzanstein_model_cache_misses_total",
            "Requests whose model was not loaded (they started or joined its load).",
            m.misses.load(Ordering::Relaxed),
        ),
        (
            "ryzanstein_model_evictions_total",
            "Models evicted (least recently used) to make room for another.",
            m.evictions.load(Ordering::Relaxed),
        ),
        (
            "ryzanstein_model_unloads_total",
            "Models unloaded through the admin API.",
            m.unloads.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, v) in counters {
        scalar(out, name, "counter", help, v);
    }
    let name = "ryzanstein_model_loads_total";
    header(out, name, "counter", "Model loads, by outcome.");
    for (outcome, v) in [
        ("ok", &m.loads_ok),
        ("failed", &m.loads_failed),
        ("no_room", &m.loads_no_room),
    ] {
        let _ = writeln!(
            out,
            "{name}{{outcome=\"{outcome}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let name = "ryzanstein_model_load_seconds";
    header(
        out,
        name,
        "histogram",
        "Seconds per model load (ready or failed).",
    );
    m.load_seconds.render(out, name, "");
    let (bytes, n) = reg.loaded_bytes();
    scalar(
        out,
        "ryzanstein_models_loaded_bytes",
        "gauge",
        "Bytes held by loaded models (mapped file, KV pools, scratch).",
        bytes,
    );
    scalar(
        out,
        "ryzanstein_models_loaded",
        "gauge",
        "Models loaded now.",
        n,
    );
    let name = "ryzanstein_models";
    header(out, name, "gauge", "Catalog models, by state.");
    let statuses = reg.statuses();
    for state in [
        ModelState::Available,
        ModelState::Queued,
        ModelState::Loading,
        ModelState::Loaded,
        ModelState::Unloading,
        ModelState::Failed,
    ] {
        let k = statuses.iter().filter(|s| s.state == state).count();
        let label = serde_json::to_value(state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = writeln!(out, "{name}{{state=\"{label}\"}} {k}");
    }
}

/// What admission by expected wait reads, per model: the work ahead, the fitted step costs
/// and the release rate (how a prediction is made is in docs/OPERATIONS.md § Admission).
fn render_admission(out: &mut String, gauges: &[(&str, &Gauge)]) {
    type Figure = fn(&Gauge) -> f64;
    let figures: [(&str, &str, Figure); 7] = [
        (
            "ryzanstein_admission_release_rate",
            "Sequences ended per second while requests waited for a slot (0 until measured).",
            |g| g.costs().release_rate,
        ),
        (
            "ryzanstein_admission_predicted_wait_seconds_now",
            "The predicted wait for a slot of a request arriving now.",
            |g| g.predicted_wait_s(),
        ),
        (
            "ryzanstein_admission_queued_sequences",
            "Sequences admitted and waiting for a slot (on a worker or not yet).",
            |g| g.backlog().queued as f64,
        ),
        (
            "ryzanstein_admission_decode_steps_ahead",
            "Expected decode steps left of the running and queued sequences.",
            |g| {
                let b = g.backlog();
                (b.running_steps + b.queued_steps) as f64
            },
        ),
        (
            "ryzanstein_admission_prompt_tokens_ahead",
            "Prompt tokens left to prefill of the running and queued sequences.",
            |g| g.backlog().prompt_tokens as f64,
        ),
        (
            "ryzanstein_admission_decode_step_seconds",
            "Fitted seconds of a step of a full batch of decode tokens.",
            |g| g.costs().decode_step_s,
        ),
        (
            "ryzanstein_admission_token_seconds",
            "Fitted seconds per token of a step (the marginal cost of a prompt token).",
            |g| g.costs().prefill_token_s,
        ),
    ];
    if gauges.is_empty() {
        return;
    }
    for (name, help, get) in figures {
        header(out, name, "gauge", help);
        for (model, g) in gauges {
            let _ = writeln!(out, "{name}{{model=\"{model}\"}} {}", get(g));
        }
    }
}

/// Per-model engine figures, each metric's lines grouped under one header.
fn render_engines(out: &mut String, engines: &[(&str, &EngineStats)]) {
    type Scalar = fn(&EngineStats) -> u64;
    let scalars: [(&str, &str, &str, Scalar); 14] = [
        (
            "ryzanstein_sequences_running",
            "gauge",
            "Sequences in the running batch.",
            |s| s.running.load(Ordering::Relaxed) as u64,
        ),
        (
            "ryzanstein_sequences_waiting",
            "gauge",
            "Requests queued for admission.",
            |s| s.waiting.load(Ordering::Relaxed) as u64,
        ),
        (
            "ryzanstein_kv_cache_bytes_used",
            "gauge",
            "KV-cache pool bytes held by sequences.",
            |s| s.kv_bytes_used.load(Ordering::Relaxed) as u64,
        ),
        (
            "ryzanstein_kv_cache_bytes_total",
            "gauge",
            "KV-cache pool size in bytes.",
            |s| s.kv_bytes_total.load(Ordering::Relaxed) as u64,
        ),
        (
            "ryzanstein_engine_steps_total",
            "counter",
            "Forward passes run.",
            |s| s.steps.load(Ordering::Relaxed),
        ),
        (
            "ryzanstein_preemptions_total",
            "counter",
            "Sequences pushed out of the KV pool (recomputed later).",
            |s| s.preemptions.load(Ordering::Relaxed),
        ),
        (
            "ryzanstein_sequences_cancelled_total",
            "counter",
            "Sequences dropped because their receiver went away.",
            |s| s.cancelled.load(Ordering::Relaxed),
        ),
        (
            "ryzanstein_engine_generated_tokens_total",
            "counter",
            "Tokens sampled, counted as each is sampled (not when its request ends).",
            |s| s.generated_tokens.load(Ordering::Relaxed),
        ),
        (
            "ryzanstein_engine_prefill_tokens_total",
            "counter",
            "Prompt tokens run through the model (recomputation included).",
            |s| s.prompt_tokens.load(Ordering::Relaxed),
        ),
        (
            "ryzanstein_prefix_cache_hit_tokens_total",
            "counter",
            "Prompt tokens of ended requests read from the prefix cache.",
            |s| s.prefix_hit_tokens.load(Ordering::Relaxed),
        ),
        (
            "ryzanstein_prefix_cache_miss_tokens_total",
            "counter",
            "Prompt tokens of ended requests not found in the prefix cache (computed).",
            |s| s.prefix_miss_tokens.load(Ordering::Relaxed),
        ),
        (
            "ryzanstein_prefix_cache_blocks",
            "gauge",
            "KV blocks (16 positions) the prefix cache holds, in use or idle.",
            |s| s.prefix_cached_blocks.load(Ordering::Relaxed) as u64,
        ),
        (
            "ryzanstein_prefix_cache_bytes",
            "gauge",
            "Bytes of keys and values held by the prefix cache's blocks (every layer).",
            |s| s.prefix_cached_bytes.load(Ordering::Relaxed) as u64,
        ),
        (
            "ryzanstein_prefix_cache_evictions_total",
            "counter",
            "Cached KV blocks evicted to make room for new ones.",
            |s| s.prefix_evictions.load(Ordering::Relaxed),
        ),
    ];
    if engines.is_empty() {
        return;
    }
    for (name, kind, help, get) in scalars {
        header(out, name, kind, help);
        for (model, st) in engines {
            let _ = writeln!(out, "{name}{{model=\"{model}\"}} {}", get(st));
        }
    }
    type Hist = fn(&EngineStats) -> &Histogram;
    let hists: [(&str, &str, Hist); 6] = [
        (
            "ryzanstein_admission_wait_seconds",
            "The wait of each admitted request from its admission to its slot.",
            |s| &s.admission_wait_seconds,
        ),
        (
            "ryzanstein_admission_predicted_wait_seconds",
            "The predicted wait for a slot of each request at its admission decision.",
            |s| &s.predicted_wait_seconds,
        ),
        (
            "ryzanstein_request_queue_time_seconds",
            "From submission to admission into the running batch.",
            |s| &s.queue_seconds,
        ),
        (
            "ryzanstein_batch_size_sequences",
            "Sequences per forward pass.",
            |s| &s.batch_seqs,
        ),
        (
            "ryzanstein_batch_size_tokens",
            "Tokens per forward pass.",
            |s| &s.batch_tokens,
        ),
        (
            "ryzanstein_step_seconds",
            "Seconds per forward pass.",
            |s| &s.step_seconds,
        ),
    ];
    for (name, help, get) in hists {
        header(out, name, "histogram", help);
        for (model, st) in engines {
            get(st).render(out, name, &format!("model=\"{model}\""));
        }
    }
}

/// VmRSS from /proc/self/status, in bytes (Linux only).
pub fn resident_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
