//! Routing, authentication, the small endpoints, and the per-request guard: a handler that
//! panics is answered 500 and the worker lives on; every request is counted and logged once.

use std::cell::Cell;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::request::{
    ChatRequest, Common, CompletionRequest, DetokenizeRequest, Prompt, TokenizeRequest,
};
use crate::api::response::Endpoint;
use crate::api::ApiError;
use crate::api::{parse_and_validate, ParsedBody};
use crate::model::sampler::SamplingParams;

use crate::engine::admission;
use crate::engine::{AcquireError, Lease, LoadedModel as Loaded, SubmitError, Ticket};

use super::generate::{self, InFlight, Plan};
use super::http::{BodyError, HttpRequest};
use super::metrics::Live;
use super::{auth, chat, models, State};

/// How a handler answered.
pub(crate) enum Reply {
    Json(Value),
    Json503(Value),
    /// 202: an admin action was started.
    Accepted(Value),
    Text(String, &'static str),
    /// The handler wrote the answer itself (a stream) with this status.
    Done(u16),
}

/// What the request's log line says besides route and status.
pub(crate) struct Log {
    /// Request id: in the log line and in completion ids.
    pub id: u64,
    pub start: Instant,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub queue: Option<Duration>,
    pub ttft: Option<Duration>,
    pub note: Option<&'static str>,
    /// The model that served it (empty if none).
    pub model: String,
    /// A generation request admitted on arrival by expected wait: its place in the model's
    /// queue count, held until it is submitted.
    pub admitted: Option<Ticket>,
}

/// The routes that generate, each holding one of `max_concurrent_requests` slots.
fn is_generation(route: &str) -> bool {
    matches!(route, "/v1/completions" | "/v1/chat/completions")
}

/// (method, path) of every route; the path doubles as the metrics label.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/health/ready"),
    ("GET", "/metrics"),
    ("GET", "/v1/models"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("POST", "/debug/panic"),
];

/// The metrics label of a path: the route's path or pattern (`/v1/models/{id}/load`), or
/// "other" (bounded label values).
fn route_label(st: &State, path: &str) -> &'static str {
    if let Some((pattern, _)) = models::route_of(path) {
        return pattern;
    }
    ROUTES
        .iter()
        .find(|(_, p)| *p == path && (*p != "/debug/panic" || st.opts.panic_route))
        .map_or("other", |(_, p)| p)
}

/// The methods allowed on a route label.
fn allowed_methods(route: &str) -> Vec<&'static str> {
    let fixed = ROUTES.iter().filter(|(_, p)| *p == route).map(|(m, _)| *m);
    let per_model = models::MODEL_ROUTES
        .iter()
        .filter(|(_, p, _)| *p == route)
        .map(|(m, _, _)| *m);
    fixed.chain(per_model).collect()
}

/// Called on a request's connection thread before it is queued for a worker. A generation
/// request is decided here, by expected wait ([`crate::engine::admission`]): refused at once
/// (503 through the same auth, routing and log line as on a worker, with no hand-off), or
/// admitted with its place counted in its model's queue and queued for a generation worker
/// ([`super::GenQueues`]). Either way it is taken (`None`). Anything else is returned to be
/// queued for the general workers, so health checks never wait behind generations. Weak:
/// the server's `State` owns the listener that calls this.
pub(crate) fn early(st: &Weak<State>, req: HttpRequest) -> Option<HttpRequest> {
    if req.method() != "POST" || !is_generation(req.path()) {
        return Some(req);
    }
    let Some(st) = st.upgrade() else {
        return Some(req);
    };
    if st.shutting_down.load(Ordering::SeqCst) {
        // The workers may be gone: answer (503) here.
        serve_as(&st, req, None, None);
        return None;
    }
    if auth::check(&st, &req, route_label(&st, req.path())).is_err() {
        // Its 401 here (dispatch checks the key before anything else); not an admission.
        serve_as(&st, req, None, None);
        return None;
    }
    if hold_early_retry(&st, &req) {
        // Paced, not decided: its resend (no longer early) is decided afresh, so that every
        // admitted request's wait counts from its own arrival.
        let e = ApiError::unavailable(
            "resent before the Retry-After of its refusal: held until then; resend now",
            1,
        );
        serve_as(&st, req, Some(e), None);
        return None;
    }
    match admit(&st, &req) {
        Admission::Refused(e) => {
            let (peer, retry_after_s) = (req.remote_addr(), e.retry_after_s.unwrap_or(1));
            // Answered through auth and routing first: remembered only if it was the 503.
            if serve_as(&st, req, Some(e), None) == 503 {
                remember_refusal(peer, retry_after_s);
            }
        }
        Admission::Admitted { model, ticket } => st.gen.push(model, req, Some(ticket)),
        Admission::Undecided => st.gen.push(None, req, None),
    }
    None
}

thread_local! {
    /// The last refusal on this connection's thread (tiny_http serves a connection on one
    /// thread for its life): the peer, and when its `Retry-After` runs out.
    static REFUSED: Cell<Option<(SocketAddr, Instant)>> = const { Cell::new(None) };
}

/// Longest hold of an early retry (a `Retry-After` is at most a minute).
const HOLD_MAX: Duration = Duration::from_secs(60);

fn remember_refusal(peer: Option<SocketAddr>, retry_after_s: u64) {
    if let Some(peer) = peer {
        let until = Instant::now() + Duration::from_secs(retry_after_s);
        REFUSED.with(|r| r.set(Some((peer, until))));
    }
}

/// A client that resends a refused request before its `Retry-After` (as wrk and many HTTP
/// libraries do) is held here, on its connection's thread, until that time, and then
/// answered 503 again without a decision (its next resend is decided as a new arrival):
/// otherwise such clients resend as fast as the server refuses, and the refusals take the
/// cores the admitted requests need. A held connection costs a sleeping thread. Counting the
/// hold in the request's wait instead would push such a client's next Retry-After further
/// each round, until none of its requests could be admitted. Returns whether it held.
fn hold_early_retry(st: &State, req: &HttpRequest) -> bool {
    let Some((peer, until)) = REFUSED.with(Cell::take) else {
        return false;
    };
    let now = Instant::now();
    if req.remote_addr() != Some(peer) || until <= now {
        return false;
    }
    let until = until.min(now + HOLD_MAX);
    while Instant::now() < until && !st.shutting_down.load(Ordering::Relaxed) {
        // Whole seconds: a thousand held connections waking every 100 ms would cost the
        // compute threads more than the refusals they replace.
        std::thread::sleep((until - Instant::now()).min(Duration::from_secs(1)));
    }
    st.metrics.held_retries.fetch_add(1, Ordering::Relaxed);
    true
}

/// What the connection's thread decided for a generation request.
enum Admission {
    Refused(ApiError),
    /// Queued for model `model` (a catalog index), its place held by `ticket`.
    Admitted {
        model: Option<usize>,
        ticket: Ticket,
    },
    /// No loaded model to ask, or a body that does not parse: the worker decides (a load,
    /// a 400), and `submit` checks the wait then.
    Undecided,
}

/// Decides a generation request by its model's predicted wait. Reads only the body's `model`
/// and `max_tokens` fields; the request's prompt is not tokenized yet, so its place counts
/// the model's mean prompt.
fn admit(st: &State, req: &HttpRequest) -> Admission {
    #[derive(serde::Deserialize)]
    struct Fields {
        model: Option<String>,
        max_tokens: Option<usize>,
        max_completion_tokens: Option<usize>,
    }
    let Some(f) = req
        .prefetched_body()
        .and_then(|b| serde_json::from_slice::<Fields>(b).ok())
    else {
        return Admission::Undecided;
    };
    let Some(i) = st.registry.resolve(f.model.as_deref()).ok() else {
        return Admission::Undecided;
    };
    let Some(loaded) = st.registry.loaded_model(i) else {
        return Admission::Undecided;
    };
    let h = &loaded.handle;
    // Uniform in [0, 1): the top 53 bits of a fresh random value.
    let spread = (st.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let limits = &st.cfg().limits;
    let max_tokens = f
        .max_completion_tokens
        .or(f.max_tokens)
        .unwrap_or(limits.max_tokens_default)
        .min(limits.max_tokens_cap);
    let g = h.gauge();
    let steps = admission::expected_steps(max_tokens, g.completion_share());
    match h.admit(g.mean_prompt_tokens(), steps, spread) {
        Ok(ticket) => Admission::Admitted {
            model: Some(i),
            ticket,
        },
        Err(e) => {
            let retry_after_s = match &e {
                SubmitError::Overloaded { retry_after_s, .. } => *retry_after_s,
                _ => st.cfg().limits.retry_after_s,
            };
            Admission::Refused(ApiError::unavailable(e.to_string(), retry_after_s))
        }
    }
}

/// Serves one request end to end; never panics.
pub(crate) fn serve(st: &State, req: HttpRequest) {
    serve_as(st, req, None, None);
}

/// Serves a generation request taken from a generation queue (with its place in its model's
/// queue count, if it was admitted on arrival).
pub(crate) fn serve_generation(st: &State, req: HttpRequest, admitted: Option<Ticket>) {
    serve_as(st, req, None, admitted);
}

/// [`serve`], answering a generation with `refusal` instead of running it if one is given
/// (on a connection's thread, whose stack is small and which should not hold the
/// connection's reads, a generation never runs).
fn serve_as(
    st: &State,
    mut req: HttpRequest,
    refusal: Option<ApiError>,
    admitted: Option<Ticket>,
) -> u16 {
    let mut log = Log {
        id: st.next_u64(),
        start: Instant::now(),
        prompt_tokens: 0,
        completion_tokens: 0,
        queue: None,
        ttft: None,
        note: None,
        model: String::new(),
        admitted,
    };
    let route = route_label(st, req.path());
    let result = if st.shutting_down.load(Ordering::Relaxed) {
        // Taken after the drain began (a kept-alive connection): the client retries
        // elsewhere or later.
        log.note = Some("shutting down");
        Ok(Err(ApiError::unavailable(
            "the server is shutting down",
            st.cfg().limits.retry_after_s,
        )))
    } else {
        catch_unwind(AssertUnwindSafe(|| {
            dispatch(st, route, &mut req, &mut log, refusal)
        }))
    };
    // Each answer is counted just before it is written, so a client that has its response
    // finds it in /metrics.
    let status = match result {
        Ok(Ok(reply)) => answer(st, route, &mut req, reply),
        Ok(Err(e)) => answer_error(st, route, &mut req, &e),
        Err(_) => {
            st.metrics.panics.fetch_add(1, Ordering::Relaxed);
            log.note = Some("handler panicked");
            answer_error(
                st,
                route,
                &mut req,
                &ApiError::internal("the server failed on this request"),
            )
        }
    };
    let ms = |d: Option<Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1e3);
    tracing::info!(
        id = format!("{:016x}", log.id),
        method = req.method(),
        route,
        status,
        model = %log.model,
        prompt_tokens = log.prompt_tokens,
        generated_tokens = log.completion_tokens,
        queue_ms = format!("{:.1}", ms(log.queue)),
        ttft_ms = format!("{:.1}", ms(log.ttft)),
        total_ms = format!("{:.1}", log.start.elapsed().as_secs_f64() * 1e3),
        note = log.note.unwrap_or(""),
        "request"
    );
    status
}

/// Writes a handler's answer (counted first); returns its status.
fn answer(st: &State, route: &'static str, req: &mut HttpRequest, reply: Reply) -> u16 {
    let json = |v: &Value| serde_json::to_vec(v).unwrap_or_default();
    let (status, content_type, body, headers) = match reply {
        Reply::Json(v) => (200, "application/json", json(&v), vec![]),
        Reply::Json503(v) => (
            503,
            "application/json",
            json(&v),
            vec![("Retry-After", "1".to_string())],
        ),
        Reply::Accepted(v) => (202, "application/json", json(&v), vec![]),
        Reply::Text(t, ct) => (200, ct, t.into_bytes(), vec![]),
        Reply::Done(status) => {
            if req.is_pending() {
                // A handler bug; the client still gets an answer.
                let e = ApiError::internal("no response was produced");
                return answer_error(st, route, req, &e);
            }
            st.metrics.count_request(route, status);
            return status;
        }
    };
    st.metrics.count_request(route, status);
    req.respond(status, content_type, body, &headers);
    status
}

/// Writes an error answer (counted first) unless a stream already started; returns its
/// status.
fn answer_error(st: &State, route: &'static str, req: &mut HttpRequest, e: &ApiError) -> u16 {
    st.metrics.count_request(route, e.status);
    if !req.is_pending() {
        // Headers are out (a stream): nothing more can be said.
        return e.status;
    }
    let mut headers = Vec::new();
    if let Some(s) = e.retry_after_s {
        headers.push(("Retry-After", s.to_string()));
    }
    if e.status == 405 {
        headers.push(("Allow", allowed_methods(route).join(", ")));
    }
    if e.status == 401 {
        headers.push(("WWW-Authenticate", "Bearer".to_string()));
    }
    let body = serde_json::to_vec(&e.to_json()).unwrap_or_default();
    req.respond(e.status, "application/json", body, &headers);
    e.status
}

fn dispatch(
    st: &State,
    route: &'static str,
    req: &mut HttpRequest,
    log: &mut Log,
    refusal: Option<ApiError>,
) -> Result<Reply, ApiError> {
    auth::check(st, req, route)?;
    if route == "other" {
        return Err(ApiError::not_found(req.path()));
    }
    let method = req.method().to_string();
    if !allowed_methods(route).contains(&method.as_str()) {
        return Err(ApiError::method_not_allowed(&method, route));
    }
    if let Some((pattern, id)) = models::route_of(req.path()) {
        let id = id.to_string();
        log.model.clone_from(&id);
        return match pattern {
            "/v1/models/{id}" => models::one(st, &id),
            "/v1/models/{id}/events" => models::events(st, req, &id),
            "/v1/models/{id}/load" => models::load(st, &id),
            _ => models::unload(st, &id),
        };
    }
    match route {
        "/health" => Ok(Reply::Json(json!({"status": "ok"}))),
        "/health/ready" => Ok(ready(st)),
        "/metrics" => Ok(Reply::Text(metrics_page(st), "text/plain; version=0.0.4")),
        "/v1/models" => Ok(Reply::Json(models::list(st))),
        "/v1/completions" | "/v1/chat/completions" | "/tokenize" | "/detokenize" => {
            with_body(st, route, req, log, refusal)
        }
        "/debug/panic" => panic!("a panic requested through /debug/panic"),
        _ => Err(ApiError::not_found(req.path())),
    }
}

fn ready(st: &State) -> Reply {
    let default = st
        .registry
        .catalog()
        .default_index()
        .map(|i| st.registry.id(i).to_string());
    if st.registry.all_loaded(&st.ready_models) {
        return Reply::Json(json!({"status": "ready", "model": default}));
    }
    match st.ready_failure() {
        Some((id, e)) => Reply::Json503(json!({"status": "failed", "model": id, "error": e})),
        None => Reply::Json503(json!({"status": "loading", "model": default})),
    }
}

fn metrics_page(st: &State) -> String {
    let loaded = st.registry.loaded();
    st.metrics.render(&Live {
        engines: loaded
            .iter()
            .map(|m| (m.id.as_str(), m.handle.stats()))
            .collect(),
        gauges: loaded
            .iter()
            .map(|m| (m.id.as_str(), m.handle.gauge()))
            .collect(),
        registry: &st.registry,
        ready: st.registry.all_loaded(&st.ready_models),
        in_flight: st.in_flight.load(Ordering::Relaxed),
        connections_accepted: st.http.connections_accepted(),
        connections_open: st.http.connections_open(),
        connections_rejected: st.http.connections_rejected(),
        accept_errors: st.http.accept_errors(),
    })
}

/// The routes with a JSON body: read it, parse and validate it (the function the fuzz target
/// `request` calls), then serve it.
fn with_body(
    st: &State,
    route: &str,
    req: &mut HttpRequest,
    log: &mut Log,
    refusal: Option<ApiError>,
) -> Result<Reply, ApiError> {
    // A generation takes its concurrency slot first: past the cap the 503 costs no parsing
    // (the body is already in memory, read by the connection's thread). Held to the end.
    let _slot = if !is_generation(route) {
        None
    } else if let Some(e) = refusal {
        log.note = Some("refused");
        return Err(e);
    } else {
        Some(InFlight::acquire(st)?)
    };
    let body = read_body(st, req)?;
    match parse_and_validate(route, &body, &st.cfg().limits)? {
        ParsedBody::Completion(r) => completions(st, req, r, log),
        ParsedBody::Chat(r) => chat_completions(st, req, r, log),
        ParsedBody::Tokenize(r) => tokenize(st, r, log),
        ParsedBody::Detokenize(r) => detokenize(st, r, log),
    }
}

fn read_body(st: &State, req: &mut HttpRequest) -> Result<Vec<u8>, ApiError> {
    let limit = st.cfg().limits.body_bytes_max;
    req.read_body(limit).map_err(|e| match e {
        BodyError::TooLarge => ApiError::body_too_large(limit),
        BodyError::TimedOut => ApiError::read_timeout(st.cfg().limits.request_read_timeout_ms),
        BodyError::Upgrade => ApiError {
            code: Some("upgrade_not_supported"),
            ..ApiError::bad_json("'Connection: upgrade' is not supported")
        },
        BodyError::Io(e) => ApiError::bad_json(format!("cannot read the request body: {e}")),
    })
}

/// The model named by the request (or the default if it names none), loaded: at once if
/// it is; otherwise its load is started or joined and this waits up to `wait`. Unknown name:
/// 404; still loading at the deadline: 503 + Retry-After; failed to load: 500 with the reason.
fn model(st: &State, name: Option<&str>, wait: Duration, log: &mut Log) -> Result<Lease, ApiError> {
    let retry = st.cfg().limits.retry_after_s;
    let lease = st.registry.acquire(name, wait).map_err(|e| match e {
        AcquireError::NotFound(n) => ApiError::model_not_found(&n),
        AcquireError::NoDefault => ApiError::missing("model"),
        AcquireError::Loading { .. } | AcquireError::ShuttingDown => {
            ApiError::unavailable(e.to_string(), retry)
        }
        AcquireError::Failed { .. } => ApiError {
            code: Some("model_load_failed"),
            ..ApiError::internal(e.to_string())
        },
    })?;
    log.model.clone_from(&lease.id);
    Ok(lease)
}

/// How long a generation request waits for its model to load.
fn load_wait(st: &State) -> Duration {
    Duration::from_millis(st.cfg().models.load_wait_ms)
}

/// Longest prompt model `m` takes.
fn prompt_limit(st: &State, m: &Loaded) -> usize {
    let ctx_max = m.n_ctx().saturating_sub(1);
    match st.cfg().limits.prompt_tokens_max {
        0 => ctx_max,
        n => n.min(ctx_max),
    }
}

/// Checks a tokenized prompt: ids in the vocabulary, length within the limit.
pub(crate) fn check_prompt(st: &State, m: &Loaded, ids: &[u32]) -> Result<(), ApiError> {
    let n_vocab = m.tokenizer.n_vocab();
    if let Some(id) = ids.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(ApiError::invalid(
            "prompt",
            format!("token id {id} is outside the vocabulary of {n_vocab}"),
        ));
    }
    let max = prompt_limit(st, m);
    if ids.len() > max {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                "prompt",
                format!(
                    "the prompt is {} tokens; at most {max} are allowed",
                    ids.len()
                ),
            )
        });
    }
    if ids.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    Ok(())
}

fn prompt_tokens(st: &State, m: &Loaded, p: &Prompt) -> Result<Vec<u32>, ApiError> {
    let ids = match p {
        // Special tokens in the text are parsed, as llama-server and `generate` do, so a
        // client may send an already templated prompt.
        Prompt::Text(t) => m.tokenizer.encode(t, true, true),
        Prompt::Tokens(ids) => ids.clone(),
    };
    check_prompt(st, m, &ids)?;
    Ok(ids)
}

/// The engine's sampling parameters for a request.
fn sampling(
    st: &State,
    m: &Loaded,
    c: &Common,
    n_logprobs: Option<usize>,
) -> Result<SamplingParams, ApiError> {
    let s = &c.sampling;
    let n_vocab = m.tokenizer.n_vocab();
    if let Some((id, _)) = s.logit_bias.iter().find(|(id, _)| *id as usize >= n_vocab) {
        return Err(ApiError::invalid(
            "logit_bias",
            format!("token id {id} is outside the vocabulary of {n_vocab}"),
        ));
    }
    Ok(SamplingParams {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repetition_penalty: s.repetition_penalty,
        frequency_penalty: s.frequency_penalty,
        presence_penalty: s.presence_penalty,
        // llama-server's window for the penalties.
        penalty_last_n: 64,
        logit_bias: s.logit_bias.clone(),
        seed: s.seed.unwrap_or_else(|| st.next_u64()),
        n_logprobs: n_logprobs.unwrap_or(0),
        logprob: n_logprobs.is_some(),
    })
}

fn plan(
    st: &State,
    m: &Loaded,
    endpoint: Endpoint,
    prompts: Vec<Vec<u32>>,
    c: &Common,
    logprobs: Option<usize>,
) -> Result<Plan, ApiError> {
    Ok(Plan {
        endpoint,
        prompts,
        n: c.n,
        max_tokens: c.max_tokens.unwrap_or(st.cfg().limits.max_tokens_default),
        sampling: sampling(st, m, c, logprobs)?,
        stop: c.stop.clone(),
        logprobs,
        stream: c.stream,
        include_usage: c.include_usage && c.stream,
        ignore_eos: c.ignore_eos,
    })
}

fn completions(
    st: &State,
    req: &mut HttpRequest,
    r: CompletionRequest,
    log: &mut Log,
) -> Result<Reply, ApiError> {
    let m = model(st, r.common.model.as_deref(), load_wait(st), log)?;
    let m: &Loaded = &m;
    let prompts = r
        .prompts
        .iter()
        .map(|p| prompt_tokens(st, m, p))
        .collect::<Result<Vec<_>, _>>()?;
    let plan = plan(st, m, Endpoint::Completions, prompts, &r.common, r.logprobs)?;
    generate::run(st, m, req, plan, log)
}

fn chat_completions(
    st: &State,
    req: &mut HttpRequest,
    r: ChatRequest,
    log: &mut Log,
) -> Result<Reply, ApiError> {
    let m = model(st, r.common.model.as_deref(), load_wait(st), log)?;
    let m: &Loaded = &m;
    let ids = chat::prompt_tokens(m, &r.messages)?;
    check_prompt(st, m, &ids)?;
    let logprobs = r.logprobs.then_some(r.top_logprobs);
    let plan = plan(st, m, Endpoint::Chat, vec![ids], &r.common, logprobs)?;
    generate::run(st, m, req, plan, log)
}

// Tokenizing does not wait for a load (it starts one): it holds no generation slot, so it
// must not hold a worker either.
fn tokenize(st: &State, r: TokenizeRequest, log: &mut Log) -> Result<Reply, ApiError> {
    let m = model(st, r.model.as_deref(), Duration::ZERO, log)?;
    let tokens = m.tokenizer.encode(&r.prompt, r.add_special_tokens, true);
    Ok(Reply::Json(json!({
        "tokens": tokens,
        "count": tokens.len(),
        "max_model_len": m.n_ctx(),
    })))
}

fn detokenize(st: &State, r: DetokenizeRequest, log: &mut Log) -> Result<Reply, ApiError> {
    let m = model(st, r.model.as_deref(), Duration::ZERO, log)?;
    let n_vocab = m.tokenizer.n_vocab();
    if let Some(id) = r.tokens.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(ApiError::invalid(
            "tokens",
            format!("token id {id} is outside the vocabulary of {n_vocab}"),
        ));
    }
    Ok(Reply::Json(
        json!({"prompt": m.tokenizer.decode(&r.tokens)}),
    ))
}
