//! The load generator behind `ryzanstein bench`: drives any OpenAI-compatible server with
//! completions requests, closed-loop (N clients, each sending its next request when the last
//! one ends) or open-loop (Poisson arrivals at a rate), and reports vLLM `bench serve` metrics:
//! TTFT (time to the first streamed chunk with text), ITL (gaps between chunks), TPOT
//! ((e2e − TTFT)/(completion tokens − 1)), E2EL, request and output-token throughput. Token
//! counts come from the server's `usage` (cached prompt tokens from its
//! `prompt_tokens_details`, where it gives them). [`WorkloadKind`] says what the requests
//! are: random token ids of a fixed length or a JSONL prompt file ([`parse_prompts`]), one
//! shared document with a question of each request's own, or multi-turn conversations over
//! that document (texts in [`conversation`]); [`chart`] draws the SVG charts.
//!
//! For admission and overload tests a closed-loop level can run for a fixed time
//! ([`run_level_timed`]) over thousands of keep-alive connections (one client thread each, on
//! a small stack), and [`On503`] says what a client does when the server refuses it with 503:
//! record an error, resend at once, or resend after the response's `Retry-After`.

pub mod chart;
pub mod conversation;
pub mod http;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use conversation::{question, Conversation};
use http::{Conn, Target};

/// What every request of a run looks like.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Sent as `model` when set.
    pub model: Option<String>,
    /// Prompt length in tokens (sent as token ids).
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    pub stream: bool,
    /// Token ids are drawn uniformly from this range.
    pub token_range: (u32, u32),
    /// Ask the server to ignore end-of-generation tokens (llama.cpp and vLLM extension).
    pub ignore_eos: bool,
    /// Per-request timeout.
    pub timeout: Duration,
    pub seed: u64,
    /// Prompts from a file, used in turn (request i sends prompt i mod len); when set, they
    /// replace the random token-id prompts (of [`WorkloadKind::Random`]).
    pub prompts: Option<Arc<Vec<PromptSpec>>>,
    pub kind: WorkloadKind,
    /// Index of a level's first question (first conversation in multi-turn): the caller
    /// advances it from level to level so that no two levels ask the same question, which a
    /// server's prompt cache would otherwise answer whole.
    pub first_index: usize,
    /// What a client does when a request is refused with 503.
    pub on_503: On503,
}

/// What a client does with a 503 answer (`ryzanstein bench --on-503`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum On503 {
    /// Record the request as error `http_503` and go on to the next one.
    #[default]
    Fail,
    /// Resend the same request at once, on the same connection (a new one if the server
    /// closed it).
    Immediate,
    /// Sleep the response's `Retry-After` seconds (1 when it gives none), then resend.
    Honor,
}

impl On503 {
    /// The name `ryzanstein bench --on-503` takes.
    pub fn name(&self) -> &'static str {
        match self {
            On503::Fail => "fail",
            On503::Immediate => "immediate",
            On503::Honor => "honor",
        }
    }
}

/// The wait before resending after a 503 that gives no `Retry-After` (under [`On503::Honor`]).
pub const RETRY_AFTER_DEFAULT: Duration = Duration::from_secs(1);

/// What the requests of a run are.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkloadKind {
    /// Random token ids (`prompt_tokens` from `token_range`) to `/v1/completions`, or the
    /// prompt file's prompts.
    Random,
    /// Chat requests whose system message is one `document` shared by all, followed by a
    /// question of the request's own ([`question`]).
    SharedPrefix { document: Arc<str> },
    /// Conversations of `turns` chat requests: the first sends the document as the system
    /// message and a question, each next one the whole history (with the server's answers,
    /// collected from the responses) and a new question. The unit of a level is then a
    /// conversation; every request carries `X-Session-Id` naming its conversation.
    MultiTurn { document: Arc<str>, turns: usize },
}

impl WorkloadKind {
    /// Requests one unit of a level sends: `turns` for multi-turn, else 1.
    pub fn requests_per_unit(&self) -> usize {
        match self {
            WorkloadKind::MultiTurn { turns, .. } => *turns,
            _ => 1,
        }
    }

    /// The name `ryzanstein bench --workload` takes.
    pub fn name(&self) -> &'static str {
        match self {
            WorkloadKind::Random => "random",
            WorkloadKind::SharedPrefix { .. } => "shared-prefix",
            WorkloadKind::MultiTurn { .. } => "multi-turn",
        }
    }
}

/// One prompt of a prompt file.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptSpec {
    /// Sent to `/v1/chat/completions` as `messages` when true, else to `/v1/completions` as
    /// `prompt`.
    pub chat: bool,
    /// The `prompt` (text or token ids) or `messages` value, as given.
    pub input: Value,
    /// Overrides the workload's `max_tokens`.
    pub max_tokens: Option<usize>,
}

/// Most prompts a prompt file may hold.
pub const PROMPTS_MAX: usize = 1_000_000;

/// Parses a JSONL prompt file: one prompt per non-empty line, either a JSON string (a text
/// prompt) or an object with `prompt` (text or token ids) or `messages` (chat), and an
/// optional `max_tokens`. Errors name the line.
pub fn parse_prompts(text: &str) -> Result<Vec<PromptSpec>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if out.len() == PROMPTS_MAX {
            return Err(format!("more than {PROMPTS_MAX} prompts"));
        }
        let at = |m: &str| format!("line {}: {m}", i + 1);
        let v: Value = serde_json::from_str(line).map_err(|e| at(&e.to_string()))?;
        let spec = match v {
            Value::String(_) => PromptSpec {
                chat: false,
                input: v,
                max_tokens: None,
            },
            Value::Object(mut o) => {
                let max_tokens = match o.remove("max_tokens") {
                    None | Some(Value::Null) => None,
                    Some(m) => Some(
                        m.as_u64()
                            .filter(|&m| m > 0)
                            .ok_or_else(|| at("max_tokens must be a positive integer"))?
                            as usize,
                    ),
                };
                let (chat, input) = match (o.remove("prompt"), o.remove("messages")) {
                    (Some(p @ (Value::String(_) | Value::Array(_))), None) => (false, p),
                    (None, Some(m @ Value::Array(_))) => (true, m),
                    _ => return Err(at("expected exactly one of prompt or messages")),
                };
                PromptSpec {
                    chat,
                    input,
                    max_tokens,
                }
            }
            _ => return Err(at("expected a JSON string or object")),
        };
        out.push(spec);
    }
    if out.is_empty() {
        return Err("no prompts".into());
    }
    Ok(out)
}

/// How requests arrive in one level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arrivals {
    /// `clients` clients, each sending its next request as soon as the last one ends.
    Closed { clients: usize },
    /// Poisson arrivals at `rate` requests per second, at most `clients` in flight.
    Open { rate: f64, clients: usize },
}

/// One finished request.
#[derive(Clone, Debug, Default)]
struct Sample {
    error: Option<String>,
    ttft_s: f64,
    e2e_s: f64,
    itl_s: Vec<f64>,
    prompt_tokens: u64,
    /// `usage.prompt_tokens_details.cached_tokens`; 0 when the server does not say.
    cached_prompt_tokens: u64,
    completion_tokens: u64,
    /// The generated text (streamed deltas concatenated), which a conversation's next turn
    /// sends back; taken out before the sample is stored.
    answer: String,
    /// Index of the request in its conversation (multi-turn), from 0.
    turn: Option<usize>,
    /// 503s this request received (each one followed by a resend, except a last one that
    /// ended it as `http_503`).
    refusals: u64,
    /// From the first send of the request to the end of its answer; `e2e_s` and `ttft_s` are
    /// measured from the send that was answered.
    first_send_to_answer_s: f64,
}

/// p50/p90/p99/max and mean of one metric, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Dist {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    fn of_seconds(mut xs: Vec<f64>) -> Dist {
        if xs.is_empty() {
            return Dist::default();
        }
        xs.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            let i = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1;
            xs[i] * 1e3
        };
        Dist {
            mean: xs.iter().sum::<f64>() / xs.len() as f64 * 1e3,
            p50: pick(0.50),
            p90: pick(0.90),
            p99: pick(0.99),
            max: xs[xs.len() - 1] * 1e3,
        }
    }
}

/// The result of one level.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LevelReport {
    pub clients: usize,
    /// Requests per second offered (open loop), or null.
    pub rate: Option<f64>,
    /// Wall time of the level, from its start until its last request ended; every per-second
    /// figure is over it.
    pub duration_s: f64,
    /// Units the level started: requests, or conversations in a multi-turn workload.
    pub started: usize,
    pub completed: usize,
    pub errors: BTreeMap<String, usize>,
    pub request_throughput: f64,
    /// 503 answers received, resent requests' refusals included.
    pub refusals_503: u64,
    pub refusals_per_s: f64,
    /// Requests answered 2xx (and read whole) per second: the same as `request_throughput`.
    pub answered_2xx_per_s: f64,
    pub output_throughput: f64,
    pub prompt_tokens: u64,
    /// Prompt tokens the server says it took from its cache (`prompt_tokens_details`).
    pub cached_prompt_tokens: u64,
    /// `cached_prompt_tokens / prompt_tokens` (0 when no prompt tokens).
    pub cached_prompt_share: f64,
    pub completion_tokens: u64,
    pub ttft_ms: Dist,
    pub tpot_ms: Dist,
    pub itl_ms: Dist,
    pub e2el_ms: Dist,
    /// Answered requests, from their first send (before any 503) to the end of the answer;
    /// `ttft_ms` and `e2el_ms` are from the send that was answered.
    pub first_send_to_answer_ms: Dist,
    /// TCP connections the clients opened (keep-alive reuse shows as fewer than requests).
    pub connections_opened: u64,
    /// Requests that met every SLO, per second (when SLOs are given).
    pub goodput: Option<f64>,
    /// Multi-turn: the figures of each turn index (turn 1 first); empty otherwise.
    pub turns: Vec<TurnReport>,
}

/// The requests of one turn index across a level's conversations.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TurnReport {
    /// Counted from 1.
    pub turn: usize,
    pub completed: usize,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub ttft_ms: Dist,
}

/// Service-level objectives for goodput, in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
}

impl Slo {
    fn is_set(&self) -> bool {
        self.ttft_ms.is_some() || self.tpot_ms.is_some() || self.e2el_ms.is_some()
    }

    fn met(&self, s: &Sample) -> bool {
        let ok = |limit: Option<f64>, v: f64| limit.is_none_or(|l| v * 1e3 <= l);
        s.error.is_none()
            && ok(self.ttft_ms, s.ttft_s)
            && ok(self.tpot_ms, tpot_s(s).unwrap_or(0.0))
            && ok(self.e2el_ms, s.e2e_s)
    }
}

fn tpot_s(s: &Sample) -> Option<f64> {
    (s.completion_tokens > 1).then(|| (s.e2e_s - s.ttft_s) / (s.completion_tokens - 1) as f64)
}

/// Most samples a level reserves room for up front (more grow the vector as they come).
const SAMPLES_RESERVED_MAX: usize = 1 << 16;

/// Stack of a client thread: small, so that thousands of clients fit (a client holds its
/// buffers on the heap).
pub const CLIENT_STACK_BYTES: usize = 256 * 1024;

/// Descriptors kept free beyond one per client (the process's own files, a second server's
/// connection while the first one closes).
pub const SPARE_DESCRIPTORS: u64 = 64;

/// Runs one level against `url`: `n` requests, or `n` conversations in a multi-turn workload
/// (`n × turns` requests). `on_done` is told how many requests have ended so far.
pub fn run_level(
    url: &str,
    w: &Workload,
    arrivals: Arrivals,
    n: usize,
    slo: &Slo,
    on_done: &(dyn Fn(usize) + Sync),
) -> std::io::Result<LevelReport> {
    run(url, w, arrivals, n, None, slo, on_done)
}

/// Runs one closed-loop level of `clients` for `duration`: each client sends its next request
/// (conversation, in multi-turn) until the deadline; what started before it ends as usual
/// (bounded by the workload's timeout; a conversation under way sends its remaining turns),
/// but a request still refused with 503 at the deadline is not resent and ends as `http_503`.
pub fn run_level_timed(
    url: &str,
    w: &Workload,
    clients: usize,
    duration: Duration,
    slo: &Slo,
    on_done: &(dyn Fn(usize) + Sync),
) -> std::io::Result<LevelReport> {
    run(
        url,
        w,
        Arrivals::Closed { clients },
        usize::MAX,
        Some(duration),
        slo,
        on_done,
    )
}

fn run(
    url: &str,
    w: &Workload,
    arrivals: Arrivals,
    n: usize,
    duration: Option<Duration>,
    slo: &Slo,
    on_done: &(dyn Fn(usize) + Sync),
) -> std::io::Result<LevelReport> {
    let target = Target::parse(url)?;
    let (clients, rate) = match arrivals {
        Arrivals::Closed { clients } => (clients.max(1), None),
        Arrivals::Open { rate, clients } => (clients.max(1), Some(rate)),
    };
    let threads = clients.min(n);
    raise_descriptor_limit(threads as u64 + SPARE_DESCRIPTORS);
    let schedule = arrival_offsets(rate, n, w.seed);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let samples = Mutex::new(Vec::with_capacity(
        n.saturating_mul(w.kind.requests_per_unit())
            .min(SAMPLES_RESERVED_MAX),
    ));
    let opened = Mutex::new(0u64);
    // The level starts when every client thread is up (starting a thousand threads takes a
    // while): the clients wait at this gate for the start time.
    let gate = (Mutex::new(None::<Instant>), Condvar::new());
    let open_gate = || {
        let t0 = Instant::now();
        *gate.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(t0);
        gate.1.notify_all();
        t0
    };
    let t0 = std::thread::scope(|sc| {
        for c in 0..threads {
            let (target, next, stop, samples, opened, schedule, gate) = (
                target.clone(),
                &next,
                &stop,
                &samples,
                &opened,
                &schedule,
                &gate,
            );
            let spawned = std::thread::Builder::new()
                .name(format!("bench-client-{c}"))
                .stack_size(CLIENT_STACK_BYTES)
                .spawn_scoped(sc, move || {
                    let t0 = {
                        let mut start = gate.0.lock().unwrap_or_else(|e| e.into_inner());
                        loop {
                            if let Some(t0) = *start {
                                break t0;
                            }
                            start = gate.1.wait(start).unwrap_or_else(|e| e.into_inner());
                        }
                    };
                    let deadline = duration.map(|d| t0 + d);
                    let mut conn = Conn::new(target, w.timeout);
                    let mut rng = w.seed ^ (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    let mut record = |s: Sample| {
                        let mut all = samples.lock().unwrap_or_else(|e| e.into_inner());
                        all.push(s);
                        on_done(all.len());
                    };
                    loop {
                        if stop.load(Ordering::Relaxed)
                            || deadline.is_some_and(|d| Instant::now() >= d)
                        {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        if let Some(at) = schedule.get(i) {
                            let due = t0 + *at;
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                        }
                        match &w.kind {
                            WorkloadKind::MultiTurn { document, turns } => {
                                let k = w.first_index + i;
                                run_conversation(
                                    &mut conn,
                                    w,
                                    document,
                                    *turns,
                                    k,
                                    deadline,
                                    &mut record,
                                );
                            }
                            _ => {
                                let (path, body) = request_body(w, &mut rng, i);
                                let mut s =
                                    send_until_answered(&mut conn, w, path, &body, None, deadline);
                                s.answer = String::new();
                                record(s);
                            }
                        }
                    }
                    *opened.lock().unwrap_or_else(|e| e.into_inner()) += conn.opened;
                });
            if let Err(e) = spawned {
                // The clients already started find the stop flag once through the gate.
                stop.store(true, Ordering::Relaxed);
                open_gate();
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot start client thread {} of {threads}: {e}", c + 1),
                ));
            }
        }
        Ok(open_gate())
    })?;
    let duration_s = t0.elapsed().as_secs_f64();
    let started = next.into_inner().min(n);
    let samples = samples.into_inner().unwrap_or_else(|e| e.into_inner());
    let opened = opened.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(summarize(
        samples,
        Level {
            clients,
            rate,
            duration_s,
            started,
            connections_opened: opened,
        },
        slo,
    ))
}

/// Raises the soft limit on open descriptors (`RLIMIT_NOFILE`) to the hard limit when it is
/// below `needed` (a client holds one connection); returns the soft limit now in force, or
/// None when it cannot be read.
pub fn raise_descriptor_limit(needed: u64) -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur >= needed {
        return Some(lim.rlim_cur);
    }
    // The hard limit first; where it is unlimited the kernel may refuse it (its own cap on
    // open files), so then just what is needed.
    for want in [lim.rlim_max, needed.min(lim.rlim_max)] {
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Some(want);
        }
    }
    Some(lim.rlim_cur)
}

/// Conversation `k`: `turns` requests in a row on one connection, each sending the history so
/// far plus question `k × turns + turn`. A failed turn ends the conversation; the turns it
/// did not send are recorded as `abandoned` errors, so a level's counts still add up.
fn run_conversation(
    conn: &mut Conn,
    w: &Workload,
    document: &str,
    turns: usize,
    k: usize,
    deadline: Option<Instant>,
    record: &mut impl FnMut(Sample),
) {
    let session = format!("bench-{:x}-{k}", w.seed);
    let mut c = Conversation::new(document);
    for turn in 0..turns {
        c.ask(question(k * turns + turn));
        let body = finish_body(
            w,
            json!({ "messages": c.messages(), "max_tokens": w.max_tokens }),
        );
        let mut s = send_until_answered(
            conn,
            w,
            "/v1/chat/completions",
            &body,
            Some(&session),
            deadline,
        );
        s.turn = Some(turn);
        let answer = std::mem::take(&mut s.answer);
        let failed = s.error.is_some();
        record(s);
        if failed {
            for rest in turn + 1..turns {
                record(Sample {
                    error: Some("abandoned".into()),
                    turn: Some(rest),
                    ..Sample::default()
                });
            }
            return;
        }
        c.answer(answer);
    }
}

/// Poisson arrival times (exponential gaps) for an open loop; empty for a closed loop.
fn arrival_offsets(rate: Option<f64>, n: usize, seed: u64) -> Vec<Duration> {
    let Some(rate) = rate.filter(|r| *r > 0.0) else {
        return Vec::new();
    };
    let mut rng = seed | 1;
    let mut t = 0.0f64;
    (0..n)
        .map(|_| {
            let u = (next_u64(&mut rng) >> 11) as f64 / (1u64 << 53) as f64;
            t += -(1.0 - u).ln() / rate;
            Duration::from_secs_f64(t)
        })
        .collect()
}

fn next_u64(s: &mut u64) -> u64 {
    // splitmix64
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The path and JSON body of request `i` of a random or shared-prefix workload.
fn request_body(w: &Workload, rng: &mut u64, i: usize) -> (&'static str, Vec<u8>) {
    let spec = w
        .prompts
        .as_ref()
        .filter(|p| !p.is_empty())
        .map(|p| &p[i % p.len()]);
    let (path, body) = match (&w.kind, spec) {
        (WorkloadKind::SharedPrefix { document }, _) => (
            "/v1/chat/completions",
            json!({
                "messages": [
                    { "role": "system", "content": &**document },
                    { "role": "user", "content": question(w.first_index + i) },
                ],
                "max_tokens": w.max_tokens,
            }),
        ),
        (_, Some(s)) if s.chat => (
            "/v1/chat/completions",
            json!({ "messages": s.input, "max_tokens": s.max_tokens.unwrap_or(w.max_tokens) }),
        ),
        (_, Some(s)) => (
            "/v1/completions",
            json!({ "prompt": s.input, "max_tokens": s.max_tokens.unwrap_or(w.max_tokens) }),
        ),
        (_, None) => {
            let (lo, hi) = w.token_range;
            let span = u64::from(hi.saturating_sub(lo).max(1));
            let prompt: Vec<u32> = (0..w.prompt_tokens)
                .map(|_| lo + (next_u64(rng) % span) as u32)
                .collect();
            (
                "/v1/completions",
                json!({ "prompt": prompt, "max_tokens": w.max_tokens }),
            )
        }
    };
    (path, finish_body(w, body))
}

/// Adds the fields every request carries (greedy, streaming, `ignore_eos`, model) to a body
/// holding the prompt and `max_tokens`, and serializes it.
fn finish_body(w: &Workload, mut body: Value) -> Vec<u8> {
    body["temperature"] = json!(0.0);
    body["stream"] = json!(w.stream);
    if w.stream {
        body["stream_options"] = json!({ "include_usage": true });
    }
    if w.ignore_eos {
        body["ignore_eos"] = json!(true);
    }
    if let Some(m) = &w.model {
        body["model"] = json!(m);
    }
    serde_json::to_vec(&body).expect("a JSON value serializes")
}

/// Sends one request and, after each 503, resends it as `w.on_503` says until it gets another
/// answer. Resending stops at `deadline` (a timed level's end) and once `w.timeout` has passed
/// since the first send: the request then ends as `http_503`, its refusals counted. A wait
/// that would end past that point is slept until it (so that a client honoring `Retry-After`
/// sends nothing sooner, and one near the deadline does not start new requests meanwhile).
fn send_until_answered(
    conn: &mut Conn,
    w: &Workload,
    path: &str,
    body: &[u8],
    session_id: Option<&str>,
    deadline: Option<Instant>,
) -> Sample {
    let first = Instant::now();
    let give_up = deadline.map_or(first + w.timeout, |d| d.min(first + w.timeout));
    let mut refusals = 0;
    loop {
        let sent = Instant::now();
        let (mut s, refusal) = one_request(conn, w, path, body, session_id, sent);
        refusals += u64::from(refusal.is_some());
        let wait = match (refusal, w.on_503) {
            (None, _) | (Some(_), On503::Fail) => None,
            (Some(_), On503::Immediate) => Some(Duration::ZERO),
            (Some(r), On503::Honor) => Some(
                r.retry_after_s
                    .map_or(RETRY_AFTER_DEFAULT, Duration::from_secs),
            ),
        };
        let resend_at = wait.map(|d| Instant::now().checked_add(d).unwrap_or(give_up));
        if let Some(at) = resend_at {
            if let Some(d) = at.min(give_up).checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        if resend_at.is_none_or(|at| at >= give_up) {
            s.refusals = refusals;
            s.first_send_to_answer_s = (sent - first).as_secs_f64() + s.e2e_s;
            return s;
        }
    }
}

/// A 503 answer.
struct Refusal {
    retry_after_s: Option<u64>,
}

/// One send of a request, timed from `t0`; a 503 comes back as error `http_503` and a
/// [`Refusal`].
fn one_request(
    conn: &mut Conn,
    w: &Workload,
    path: &str,
    body: &[u8],
    session_id: Option<&str>,
    t0: Instant,
) -> (Sample, Option<Refusal>) {
    let mut s = Sample::default();
    let head = match conn.post(path, body, session_id) {
        Ok(h) => h,
        Err(e) => {
            s.error = Some(io_kind(&e));
            return (s, None);
        }
    };
    if head.status != 200 {
        let _ = conn.read_body(&head);
        s.error = Some(format!("http_{}", head.status));
        s.e2e_s = t0.elapsed().as_secs_f64();
        let refusal = (head.status == 503).then_some(Refusal {
            retry_after_s: head.retry_after_s,
        });
        return (s, refusal);
    }
    let r = if w.stream {
        read_stream(conn, &head, t0, &mut s)
    } else {
        read_whole(conn, &head, t0, &mut s)
    };
    if let Err(e) = r {
        s.error = Some(e);
    }
    (s, None)
}

fn io_kind(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connect_refused".into(),
        TimedOut | WouldBlock => "timeout".into(),
        ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof => {
            "connection_lost".into()
        }
        _ => "io".into(),
    }
}

fn read_whole(
    conn: &mut Conn,
    head: &http::Head,
    t0: Instant,
    s: &mut Sample,
) -> Result<(), String> {
    let body = conn.read_body(head).map_err(|e| io_kind(&e))?;
    s.e2e_s = t0.elapsed().as_secs_f64();
    s.ttft_s = s.e2e_s;
    let v: Value = serde_json::from_slice(&body).map_err(|_| "bad_json".to_string())?;
    let choice = &v["choices"][0];
    let text = choice["message"]["content"]
        .as_str()
        .or(choice["text"].as_str());
    s.answer.push_str(text.unwrap_or(""));
    take_usage(&v, s)
}

fn take_usage(v: &Value, s: &mut Sample) -> Result<(), String> {
    let u = v.get("usage").filter(|u| !u.is_null()).ok_or("no_usage")?;
    s.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
    s.cached_prompt_tokens = u["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    s.completion_tokens = u["completion_tokens"].as_u64().ok_or("no_usage")?;
    Ok(())
}

/// Reads SSE events as they arrive: the first chunk with a choice sets TTFT, each later one adds
/// an inter-chunk gap; the usage chunk gives the token counts.
fn read_stream(
    conn: &mut Conn,
    head: &http::Head,
    t0: Instant,
    s: &mut Sample,
) -> Result<(), String> {
    let mut pending = Vec::new();
    let mut last: Option<Instant> = None;
    let mut done = false;
    let mut err: Option<String> = None;
    let r = conn.for_each_body_chunk(head, |chunk| {
        pending.extend_from_slice(chunk);
        while let Some(end) = find_event_end(&pending) {
            let event: Vec<u8> = pending.drain(..end).collect();
            match handle_event(&event, s) {
                Ok(EventKind::Text) => {
                    let now = Instant::now();
                    match last {
                        None => s.ttft_s = (now - t0).as_secs_f64(),
                        Some(prev) => s.itl_s.push((now - prev).as_secs_f64()),
                    }
                    last = Some(now);
                }
                Ok(EventKind::Done) => done = true,
                Ok(EventKind::Other) => {}
                Err(e) => err = Some(e),
            }
        }
        err.is_none()
    });
    s.e2e_s = t0.elapsed().as_secs_f64();
    r.map_err(|e| io_kind(&e))?;
    if let Some(e) = err {
        return Err(e);
    }
    if !done {
        return Err("stream_cut".into());
    }
    if s.completion_tokens == 0 {
        // No usage chunk: count text chunks (one token each on the servers we drive).
        s.completion_tokens = s.itl_s.len() as u64 + u64::from(last.is_some());
    }
    Ok(())
}

enum EventKind {
    Text,
    Done,
    Other,
}

/// End (exclusive, including the blank line) of the first complete event in `buf`.
fn find_event_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

fn handle_event(event: &[u8], s: &mut Sample) -> Result<EventKind, String> {
    let text = std::str::from_utf8(event).map_err(|_| "bad_utf8".to_string())?;
    let mut kind = EventKind::Other;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(EventKind::Done);
        }
        let v: Value = serde_json::from_str(data).map_err(|_| "bad_json".to_string())?;
        if v.get("error").is_some() {
            return Err("stream_error".into());
        }
        // vLLM's definition: every completions chunk that carries a choice is a token event
        // (its text may be empty, e.g. a special token), the usage-only chunk is not. A chat
        // chunk counts when its delta has content: the role-only first delta is sent before
        // the prompt is even read (ours: `"content": ""` at once; llama-server's: `null`), and
        // counting it would make TTFT the time to the response head.
        for c in v["choices"].as_array().into_iter().flatten() {
            let text = match c["delta"]["content"].as_str() {
                Some(t) if !t.is_empty() => Some(t),
                Some(_) => None,
                None => c["text"].as_str(),
            };
            if let Some(t) = text {
                kind = EventKind::Text;
                s.answer.push_str(t);
            }
        }
        let _ = take_usage(&v, s);
    }
    Ok(kind)
}

/// What [`summarize`] takes besides the samples.
struct Level {
    clients: usize,
    rate: Option<f64>,
    duration_s: f64,
    started: usize,
    connections_opened: u64,
}

fn summarize(samples: Vec<Sample>, level: Level, slo: &Slo) -> LevelReport {
    let Level {
        clients,
        rate,
        duration_s,
        started,
        connections_opened,
    } = level;
    let mut errors = BTreeMap::new();
    for e in samples.iter().filter_map(|s| s.error.as_ref()) {
        *errors.entry(e.clone()).or_insert(0) += 1;
    }
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.error.is_none()).collect();
    let completion_tokens: u64 = ok.iter().map(|s| s.completion_tokens).sum();
    let prompt_tokens: u64 = ok.iter().map(|s| s.prompt_tokens).sum();
    let cached_prompt_tokens: u64 = ok.iter().map(|s| s.cached_prompt_tokens).sum();
    let refusals_503: u64 = samples.iter().map(|s| s.refusals).sum();
    let per_s = |n: f64| {
        if duration_s > 0.0 {
            n / duration_s
        } else {
            0.0
        }
    };
    LevelReport {
        clients,
        rate,
        duration_s,
        started,
        completed: ok.len(),
        errors,
        request_throughput: per_s(ok.len() as f64),
        refusals_503,
        refusals_per_s: per_s(refusals_503 as f64),
        answered_2xx_per_s: per_s(ok.len() as f64),
        output_throughput: per_s(completion_tokens as f64),
        prompt_tokens,
        cached_prompt_tokens,
        cached_prompt_share: if prompt_tokens > 0 {
            cached_prompt_tokens as f64 / prompt_tokens as f64
        } else {
            0.0
        },
        completion_tokens,
        ttft_ms: Dist::of_seconds(ok.iter().map(|s| s.ttft_s).collect()),
        tpot_ms: Dist::of_seconds(ok.iter().filter_map(|s| tpot_s(s)).collect()),
        itl_ms: Dist::of_seconds(ok.iter().flat_map(|s| s.itl_s.iter().copied()).collect()),
        e2el_ms: Dist::of_seconds(ok.iter().map(|s| s.e2e_s).collect()),
        first_send_to_answer_ms: Dist::of_seconds(
            ok.iter().map(|s| s.first_send_to_answer_s).collect(),
        ),
        connections_opened,
        goodput: slo
            .is_set()
            .then(|| per_s(samples.iter().filter(|s| slo.met(s)).count() as f64)),
        turns: turn_reports(&samples, &ok),
    }
}

/// One report per turn index seen in `samples` (none when no sample has a turn).
fn turn_reports(samples: &[Sample], ok: &[&Sample]) -> Vec<TurnReport> {
    let n_turns = samples
        .iter()
        .filter_map(|s| s.turn)
        .max()
        .map_or(0, |t| t + 1);
    (0..n_turns)
        .map(|t| {
            let of_turn: Vec<&Sample> = ok.iter().copied().filter(|s| s.turn == Some(t)).collect();
            TurnReport {
                turn: t + 1,
                completed: of_turn.len(),
                prompt_tokens: of_turn.iter().map(|s| s.prompt_tokens).sum(),
                cached_prompt_tokens: of_turn.iter().map(|s| s.cached_prompt_tokens).sum(),
                ttft_ms: Dist::of_seconds(of_turn.iter().map(|s| s.ttft_s).collect()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpListener};

    fn level(clients: usize, duration_s: f64, connections_opened: u64) -> Level {
        Level {
            clients,
            rate: None,
            duration_s,
            started: clients,
            connections_opened,
        }
    }

    /// A non-streamed completion of 3 prompt and 2 completion tokens.
    fn answered() -> Vec<u8> {
        let body =
            br#"{"choices":[{"text":"hi"}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#;
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    /// A 503 with `extra` header lines (each ending in CRLF).
    fn refused(extra: &str) -> Vec<u8> {
        format!("HTTP/1.1 503 Service Unavailable\r\n{extra}Content-Length: 2\r\n\r\n{{}}")
            .into_bytes()
    }

    /// A server on 127.0.0.1 with a thread per connection: the `i`-th request it reads (over
    /// all connections, from 0) is answered `answer(i)`, and the connection closed after when
    /// the answer says `Connection: close`. Its threads live as long as the test process.
    fn fake_server(answer: impl Fn(usize) -> Vec<u8> + Send + Sync + 'static) -> SocketAddr {
        // A backlog for a thousand connections at once (std's is 128).
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(4096).unwrap();
        let listener: TcpListener = socket.into();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(answer);
        let count = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                let (answer, count) = (answer.clone(), count.clone());
                std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        let mut r = BufReader::new(s);
                        let mut line = String::new();
                        loop {
                            let mut len = 0;
                            loop {
                                line.clear();
                                if r.read_line(&mut line).unwrap_or(0) == 0 {
                                    return;
                                }
                                if line == "\r\n" {
                                    break;
                                }
                                let l = line.to_ascii_lowercase();
                                if let Some(v) = l.strip_prefix("content-length:") {
                                    len = v.trim().parse().unwrap();
                                }
                            }
                            let mut body = vec![0; len];
                            r.read_exact(&mut body).unwrap();
                            let out = answer(count.fetch_add(1, Ordering::SeqCst));
                            if r.get_mut().write_all(&out).is_err() {
                                return;
                            }
                            let head = String::from_utf8_lossy(&out).to_ascii_lowercase();
                            if head.contains("connection: close") {
                                return;
                            }
                        }
                    })
                    .unwrap();
            }
        });
        addr
    }

    fn plain_workload(on_503: On503) -> Workload {
        Workload {
            model: None,
            prompt_tokens: 3,
            max_tokens: 2,
            stream: false,
            token_range: (10, 20),
            ignore_eos: true,
            timeout: Duration::from_secs(10),
            seed: 1,
            prompts: None,
            kind: WorkloadKind::Random,
            first_index: 0,
            on_503,
        }
    }

    fn url_of(addr: SocketAddr) -> String {
        format!("http://{addr}")
    }

    fn closed(addr: SocketAddr, w: &Workload, clients: usize, n: usize) -> LevelReport {
        let url = url_of(addr);
        run_level(
            &url,
            w,
            Arrivals::Closed { clients },
            n,
            &Slo::default(),
            &|_| {},
        )
        .unwrap()
    }

    #[test]
    fn honor_waits_retry_after_then_resends_and_keeps_the_sample() {
        // Refused with Retry-After: 1, then with none (1 s by default), then answered.
        let addr = fake_server(|i| match i {
            0 => refused("Retry-After: 1\r\n"),
            1 => refused("Connection: close\r\n"),
            _ => answered(),
        });
        let r = closed(addr, &plain_workload(On503::Honor), 1, 1);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!((r.started, r.completed, r.refusals_503), (1, 1, 2));
        assert_eq!(r.completion_tokens, 2);
        assert_eq!(r.answered_2xx_per_s, r.request_throughput);
        assert!((r.refusals_per_s - 2.0 / r.duration_s).abs() < 1e-9);
        // Two waits of a second before the answered send; e2e is of that send alone.
        let first = r.first_send_to_answer_ms.max;
        assert!(first >= 2000.0, "{first}");
        assert!(r.e2el_ms.max < first - 1500.0, "{:?}", r.e2el_ms);
        assert_eq!(r.connections_opened, 2, "a new connection after the close");
    }

    #[test]
    fn immediate_resends_at_once_and_fail_records_the_503() {
        let addr = fake_server(|i| match i {
            0..=2 => refused("Retry-After: 30\r\n"),
            _ => answered(),
        });
        let t0 = Instant::now();
        let r = closed(addr, &plain_workload(On503::Immediate), 1, 2);
        assert!(t0.elapsed() < Duration::from_secs(5), "Retry-After ignored");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!((r.completed, r.refusals_503), (2, 3));
        assert_eq!(r.connections_opened, 1, "keep-alive through the 503s");

        let addr = fake_server(|i| {
            if i % 2 == 0 {
                refused("Retry-After: 1\r\n")
            } else {
                answered()
            }
        });
        let r = closed(addr, &plain_workload(On503::Fail), 1, 4);
        assert_eq!(r.errors.get("http_503"), Some(&2));
        assert_eq!((r.completed, r.refusals_503), (2, 2));
    }

    #[test]
    fn refusals_past_the_deadline_or_the_timeout_end_as_503() {
        // Always refused: resent at once until the level's end, then abandoned.
        let addr = fake_server(|_| refused("Retry-After: 0\r\n"));
        let url = format!("http://{addr}");
        for on_503 in [On503::Immediate, On503::Honor] {
            let t0 = Instant::now();
            let w = plain_workload(on_503);
            let r = run_level_timed(
                &url,
                &w,
                2,
                Duration::from_millis(300),
                &Slo::default(),
                &|_| {},
            )
            .unwrap();
            assert!(t0.elapsed() < Duration::from_secs(3));
            assert!(r.duration_s >= 0.3, "{}", r.duration_s);
            assert_eq!(r.completed, 0);
            assert_eq!(r.errors.get("http_503"), Some(&r.started));
            assert!(r.started >= 2 && r.refusals_503 > r.started as u64, "{r:?}");
        }
        // Without a deadline, a Retry-After beyond the request's timeout is waited out until
        // the timeout, and the request given up then.
        let addr = fake_server(|_| refused("Retry-After: 60\r\n"));
        let mut w = plain_workload(On503::Honor);
        w.timeout = Duration::from_millis(300);
        let t0 = Instant::now();
        let r = closed(addr, &w, 1, 2);
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(600) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert_eq!((r.errors.get("http_503"), r.refusals_503), (Some(&2), 2));
        // With a deadline, a wait past it ends the request there; the client starts no other.
        let r = run_level_timed(
            &url_of(addr),
            &plain_workload(On503::Honor),
            3,
            Duration::from_millis(300),
            &Slo::default(),
            &|_| {},
        )
        .unwrap();
        assert!(
            r.duration_s >= 0.3 && r.duration_s < 3.0,
            "{}",
            r.duration_s
        );
        assert_eq!(r.started, 3, "one request per client: {r:?}");
        assert_eq!((r.errors.get("http_503"), r.refusals_503), (Some(&3), 3));
    }

    #[test]
    fn a_timed_level_sends_until_its_deadline_over_a_thousand_connections() {
        let addr = fake_server(|_| answered());
        let url = format!("http://{addr}");
        let clients = 1000;
        let r = run_level_timed(
            &url,
            &plain_workload(On503::Honor),
            clients,
            Duration::from_millis(1500),
            &Slo::default(),
            &|_| {},
        )
        .unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.clients, clients);
        assert_eq!(r.connections_opened, clients as u64, "one keep-alive each");
        assert!(r.completed > clients, "{}", r.completed);
        assert_eq!((r.started, r.refusals_503), (r.completed, 0));
        assert_eq!(r.completion_tokens, 2 * r.completed as u64);
        assert!(r.duration_s >= 1.5);
    }

    #[test]
    fn the_descriptor_limit_is_raised_as_far_as_the_hard_limit_allows() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct passed.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        let want = (4096 + SPARE_DESCRIPTORS).min(lim.rlim_max);
        let now = raise_descriptor_limit(want).expect("readable");
        assert!(now >= want, "{now} < {want}");
        assert_eq!(raise_descriptor_limit(0), Some(now), "never lowered");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let d = Dist::of_seconds((1..=100).map(|i| i as f64 / 1000.0).collect());
        assert_eq!((d.p50, d.p90, d.p99, d.max), (50.0, 90.0, 99.0, 100.0));
        assert!((d.mean - 50.5).abs() < 1e-9);
        assert_eq!(Dist::of_seconds(vec![]), Dist::default());
    }

    #[test]
    fn sse_events_are_split_and_classified() {
        let mut s = Sample::default();
        let buf = b"data: {\"choices\":[{\"text\":\"hi\"}]}\n\n: ping\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\ndata: [DONE]\n\n";
        let mut rest = &buf[..];
        let mut kinds = Vec::new();
        while let Some(end) = find_event_end(rest) {
            kinds.push(match handle_event(&rest[..end], &mut s).unwrap() {
                EventKind::Text => 't',
                EventKind::Done => 'd',
                EventKind::Other => 'o',
            });
            rest = &rest[end..];
        }
        assert_eq!(kinds, ['t', 'o', 'o', 'd']);
        assert_eq!((s.prompt_tokens, s.completion_tokens), (5, 7));
    }

    #[test]
    fn prompt_files_take_text_tokens_and_chats() {
        let p = parse_prompts(
            "\"plain\"\n\n{\"prompt\": [1, 2], \"max_tokens\": 3}\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
        )
        .unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].chat, p[0].max_tokens), (false, None));
        assert_eq!((p[1].chat, p[1].max_tokens), (false, Some(3)));
        assert!(p[2].chat);
        let w = Workload {
            model: None,
            prompt_tokens: 4,
            max_tokens: 7,
            stream: true,
            token_range: (10, 20),
            ignore_eos: true,
            timeout: Duration::from_secs(1),
            seed: 1,
            prompts: Some(Arc::new(p)),
            kind: WorkloadKind::Random,
            first_index: 0,
            on_503: On503::Fail,
        };
        let mut rng = 1;
        let (path, body) = request_body(&w, &mut rng, 4);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(path, "/v1/completions");
        assert_eq!(
            (v["prompt"].clone(), v["max_tokens"].clone()),
            (json!([1, 2]), json!(3))
        );
        assert_eq!(v["ignore_eos"], json!(true));
        let (path, _) = request_body(&w, &mut rng, 5);
        assert_eq!(path, "/v1/chat/completions");
        for bad in [
            "",
            "3",
            "{\"prompt\": 1}",
            "{\"prompt\": \"a\", \"messages\": []}",
            "{\"prompt\": \"a\", \"max_tokens\": 0}",
            "nope",
        ] {
            assert!(parse_prompts(bad).is_err(), "{bad}");
        }
        assert!(parse_prompts("\"a\"\n[").unwrap_err().starts_with("line 2"));
    }

    #[test]
    fn shared_prefix_requests_share_the_document_and_not_the_question() {
        let document: Arc<str> = conversation::document(40, 3).into();
        let w = Workload {
            model: Some("m".into()),
            prompt_tokens: 4,
            max_tokens: 8,
            stream: true,
            token_range: (10, 20),
            ignore_eos: false,
            timeout: Duration::from_secs(1),
            seed: 1,
            prompts: None,
            kind: WorkloadKind::SharedPrefix {
                document: document.clone(),
            },
            first_index: 100,
            on_503: On503::Fail,
        };
        let mut rng = 1;
        let bodies: Vec<Value> = (0..3)
            .map(|i| {
                let (path, body) = request_body(&w, &mut rng, i);
                assert_eq!(path, "/v1/chat/completions");
                serde_json::from_slice(&body).unwrap()
            })
            .collect();
        for (i, b) in bodies.iter().enumerate() {
            let m = &b["messages"];
            assert_eq!(m[0], json!({ "role": "system", "content": &*document }));
            assert_eq!(
                m[1]["content"],
                json!(question(100 + i)),
                "first_index offsets"
            );
            assert_eq!((&b["max_tokens"], &b["model"]), (&json!(8), &json!("m")));
            assert_eq!(b["stream_options"], json!({ "include_usage": true }));
            assert!(b.get("ignore_eos").is_none());
        }
        assert_ne!(bodies[0]["messages"][1], bodies[1]["messages"][1]);
    }

    #[test]
    fn streamed_text_is_collected_and_cached_tokens_read() {
        let mut s = Sample::default();
        for event in [
            &b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"[..],
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            b"data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":40}}}\n\n",
        ] {
            handle_event(event, &mut s).unwrap();
        }
        assert_eq!(s.answer, "Hello");
        assert_eq!((s.prompt_tokens, s.cached_prompt_tokens), (50, 40));
        // A role-only first delta (ours: empty content, llama-server's: null) is no token.
        for role_only in [
            &b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n"[..],
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        ] {
            let kind = handle_event(role_only, &mut Sample::default());
            assert!(matches!(kind, Ok(EventKind::Other)));
        }
        // A completions chunk with empty text still is (a special token, say).
        let kind = handle_event(
            b"data: {\"choices\":[{\"text\":\"\"}]}\n\n",
            &mut Sample::default(),
        );
        assert!(matches!(kind, Ok(EventKind::Text)));
    }

    #[test]
    fn turns_are_reported_by_index_and_abandoned_ones_counted() {
        let sample = |turn, ttft_s, error: Option<&str>| Sample {
            turn: Some(turn),
            ttft_s,
            prompt_tokens: 10 * (turn as u64 + 1),
            cached_prompt_tokens: 5 * turn as u64,
            completion_tokens: 1,
            error: error.map(String::from),
            ..Sample::default()
        };
        let samples = vec![
            sample(0, 0.1, None),
            sample(1, 0.2, None),
            sample(2, 0.3, None),
            sample(0, 0.1, None),
            sample(1, 0.4, Some("http_500")),
            sample(2, 0.0, Some("abandoned")),
        ];
        let r = summarize(samples, level(2, 1.0, 2), &Slo::default());
        assert_eq!(r.completed, 4);
        assert_eq!((r.errors["http_500"], r.errors["abandoned"]), (1, 1));
        assert_eq!(r.turns.len(), 3);
        assert_eq!(
            r.turns.iter().map(|t| t.completed).collect::<Vec<_>>(),
            [2, 1, 1]
        );
        assert_eq!((r.turns[2].turn, r.turns[2].ttft_ms.p50), (3, 300.0));
        assert_eq!((r.prompt_tokens, r.cached_prompt_tokens), (70, 15));
        assert!((r.cached_prompt_share - 15.0 / 70.0).abs() < 1e-12);
        let plain = summarize(vec![Sample::default()], level(1, 1.0, 1), &Slo::default());
        assert!(plain.turns.is_empty());
        assert_eq!(plain.cached_prompt_share, 0.0);
    }

    #[test]
    fn poisson_offsets_have_the_asked_rate() {
        let at = arrival_offsets(Some(50.0), 5000, 7);
        let rate = 5000.0 / at.last().unwrap().as_secs_f64();
        assert!((rate - 50.0).abs() < 3.0, "{rate}");
        assert!(at.windows(2).all(|w| w[0] <= w[1]));
        assert!(arrival_offsets(None, 10, 7).is_empty());
    }
}
