//! Routing, authentication, the small endpoints, and the per-request guard: a handler that
//! panics is answered 500 and the worker lives on; every request is counted and logged once.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::request::{
    ChatRequest, Common, CompletionRequest, DetokenizeRequest, Prompt, TokenizeRequest,
};
use crate::api::response::Endpoint;
use crate::api::ApiError;
use crate::model::sampler::SamplingParams;

use super::generate::{self, Plan};
use super::http::{BodyError, HttpRequest};
use super::metrics::Live;
use super::{chat, Loaded, State};

/// How a handler answered.
pub(crate) enum Reply {
    Json(Value),
    Json503(Value),
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

/// The metrics label of a path: the route's path, or "other" (bounded label values).
fn route_label(st: &State, path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|(_, p)| *p == path && (*p != "/debug/panic" || st.opts.panic_route))
        .map_or("other", |(_, p)| p)
}

/// Serves one request end to end; never panics.
pub(crate) fn serve(st: &State, mut req: HttpRequest) {
    let mut log = Log {
        id: st.next_u64(),
        start: Instant::now(),
        prompt_tokens: 0,
        completion_tokens: 0,
        queue: None,
        ttft: None,
        note: None,
    };
    let route = route_label(st, req.path());
    let result = catch_unwind(AssertUnwindSafe(|| dispatch(st, route, &mut req, &mut log)));
    let status = match result {
        Ok(Ok(reply)) => answer(&mut req, reply),
        Ok(Err(e)) => answer_error(&mut req, &e),
        Err(_) => {
            st.metrics
                .panics
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log.note = Some("handler panicked");
            answer_error(
                &mut req,
                &ApiError::internal("the server failed on this request"),
            )
        }
    };
    st.metrics.count_request(route, status);
    let ms = |d: Option<Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1e3);
    tracing::info!(
        id = format!("{:016x}", log.id),
        method = req.method(),
        route,
        status,
        model = %st.model_id,
        prompt_tokens = log.prompt_tokens,
        generated_tokens = log.completion_tokens,
        queue_ms = format!("{:.1}", ms(log.queue)),
        ttft_ms = format!("{:.1}", ms(log.ttft)),
        total_ms = format!("{:.1}", log.start.elapsed().as_secs_f64() * 1e3),
        note = log.note.unwrap_or(""),
        "request"
    );
}

fn answer(req: &mut HttpRequest, reply: Reply) -> u16 {
    let json = |v: &Value| serde_json::to_vec(v).unwrap_or_default();
    match reply {
        Reply::Json(v) => {
            req.respond(200, "application/json", json(&v), &[]);
            200
        }
        Reply::Json503(v) => {
            req.respond(
                503,
                "application/json",
                json(&v),
                &[("Retry-After", "1".into())],
            );
            503
        }
        Reply::Text(t, ct) => {
            req.respond(200, ct, t.into_bytes(), &[]);
            200
        }
        Reply::Done(status) => {
            if req.is_pending() {
                // A handler bug; the client still gets an answer.
                return answer_error(req, &ApiError::internal("no response was produced"));
            }
            status
        }
    }
}

fn answer_error(req: &mut HttpRequest, e: &ApiError) -> u16 {
    if !req.is_pending() {
        // Headers are out (a stream): nothing more can be said.
        return e.status;
    }
    let mut headers = Vec::new();
    if let Some(s) = e.retry_after_s {
        headers.push(("Retry-After", s.to_string()));
    }
    if e.status == 405 {
        let allow: Vec<&str> = ROUTES
            .iter()
            .filter(|(_, p)| *p == req.path())
            .map(|(m, _)| *m)
            .collect();
        headers.push(("Allow", allow.join(", ")));
    }
    let body = serde_json::to_vec(&e.to_json()).unwrap_or_default();
    req.respond(e.status, "application/json", body, &headers);
    e.status
}

/// Whether a path needs the API key (when one is set): the API, not health or metrics.
fn needs_key(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/tokenize" || path == "/detokenize"
}

/// Compares in time independent of where the strings differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_key(st: &State, req: &HttpRequest) -> Result<(), ApiError> {
    let Some(key) = &st.cfg().api_key else {
        return Ok(());
    };
    if !needs_key(req.path()) {
        return Ok(());
    }
    let given = req
        .header("Authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if same_secret(g.as_bytes(), key.as_bytes()) => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

fn dispatch(
    st: &State,
    route: &'static str,
    req: &mut HttpRequest,
    log: &mut Log,
) -> Result<Reply, ApiError> {
    check_key(st, req)?;
    if route == "other" {
        return Err(ApiError::not_found(req.path()));
    }
    let method = req.method().to_string();
    if !ROUTES.iter().any(|(m, p)| *p == route && *m == method) {
        return Err(ApiError::method_not_allowed(&method, route));
    }
    match route {
        "/health" => Ok(Reply::Json(json!({"status": "ok"}))),
        "/health/ready" => Ok(ready(st)),
        "/metrics" => Ok(Reply::Text(metrics_page(st), "text/plain; version=0.0.4")),
        "/v1/models" => Ok(Reply::Json(models(st))),
        "/v1/completions" => completions(st, req, log),
        "/v1/chat/completions" => chat_completions(st, req, log),
        "/tokenize" => tokenize(st, req),
        "/detokenize" => detokenize(st, req),
        "/debug/panic" => panic!("a panic requested through /debug/panic"),
        _ => Err(ApiError::not_found(req.path())),
    }
}

fn ready(st: &State) -> Reply {
    if st.model.get().is_some() {
        return Reply::Json(json!({"status": "ready", "model": st.model_id}));
    }
    match st.load_error.get() {
        Some(e) => Reply::Json503(json!({"status": "failed", "model": st.model_id, "error": e})),
        None => Reply::Json503(json!({"status": "loading", "model": st.model_id})),
    }
}

fn metrics_page(st: &State) -> String {
    let m = st.model.get();
    st.metrics.render(&Live {
        engine: m.map(|m| (st.model_id.as_str(), m.handle.stats())),
        ready: m.is_some(),
        in_flight: st.in_flight.load(std::sync::atomic::Ordering::Relaxed),
        connections_accepted: st.http.connections_accepted(),
        connections_open: st.http.connections_open(),
        accept_errors: st.http.accept_errors(),
    })
}

fn models(st: &State) -> Value {
    let created = st.model.get().map_or(0, |m| m.created);
    json!({
        "object": "list",
        "data": [{
            "id": st.model_id,
            "object": "model",
            "created": created,
            "owned_by": "ryzanstein",
            "ready": st.model.get().is_some(),
            "max_model_len": st.cfg().engine.n_ctx,
        }],
    })
}

fn read_body(st: &State, req: &mut HttpRequest) -> Result<Vec<u8>, ApiError> {
    let limit = st.cfg().limits.body_bytes_max;
    req.read_body(limit).map_err(|e| match e {
        BodyError::TooLarge => ApiError::body_too_large(limit),
        BodyError::Io(e) => ApiError::bad_json(format!("cannot read the request body: {e}")),
    })
}

/// The loaded model named by the request (or the default if it names none): 404 for another
/// name, 503 while it loads.
fn model<'a>(st: &'a State, name: Option<&str>) -> Result<&'a Loaded, ApiError> {
    if let Some(n) = name {
        if n != st.model_id {
            return Err(ApiError::model_not_found(n));
        }
    }
    st.model.get().ok_or_else(|| {
        let why = match st.load_error.get() {
            Some(e) => format!("the model failed to load: {e}"),
            None => format!("the model '{}' is still loading", st.model_id),
        };
        ApiError::unavailable(why, st.cfg().limits.retry_after_s)
    })
}

/// Longest prompt this server takes.
fn prompt_limit(st: &State) -> usize {
    let ctx_max = st.cfg().engine.n_ctx.saturating_sub(1);
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
    let max = prompt_limit(st);
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
    n_logprobs: usize,
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
        n_logprobs,
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
        sampling: sampling(st, m, c, logprobs.unwrap_or(0))?,
        stop: c.stop.clone(),
        logprobs,
        stream: c.stream,
        include_usage: c.include_usage && c.stream,
        ignore_eos: c.ignore_eos,
    })
}

fn completions(st: &State, req: &mut HttpRequest, log: &mut Log) -> Result<Reply, ApiError> {
    let body = read_body(st, req)?;
    let r = CompletionRequest::parse(&body, &st.cfg().limits)?;
    let m = model(st, r.common.model.as_deref())?;
    let prompts = r
        .prompts
        .iter()
        .map(|p| prompt_tokens(st, m, p))
        .collect::<Result<Vec<_>, _>>()?;
    let plan = plan(st, m, Endpoint::Completions, prompts, &r.common, r.logprobs)?;
    generate::run(st, m, req, plan, log)
}

fn chat_completions(st: &State, req: &mut HttpRequest, log: &mut Log) -> Result<Reply, ApiError> {
    let body = read_body(st, req)?;
    let r = ChatRequest::parse(&body, &st.cfg().limits)?;
    let m = model(st, r.common.model.as_deref())?;
    let ids = chat::prompt_tokens(m, &r.messages)?;
    check_prompt(st, m, &ids)?;
    let logprobs = r.logprobs.then_some(r.top_logprobs);
    let plan = plan(st, m, Endpoint::Chat, vec![ids], &r.common, logprobs)?;
    generate::run(st, m, req, plan, log)
}

fn tokenize(st: &State, req: &mut HttpRequest) -> Result<Reply, ApiError> {
    let body = read_body(st, req)?;
    let r = TokenizeRequest::parse(&body)?;
    let m = model(st, r.model.as_deref())?;
    let tokens = m.tokenizer.encode(&r.prompt, r.add_special_tokens, true);
    Ok(Reply::Json(json!({
        "tokens": tokens,
        "count": tokens.len(),
        "max_model_len": st.cfg().engine.n_ctx,
    })))
}

fn detokenize(st: &State, req: &mut HttpRequest) -> Result<Reply, ApiError> {
    let body = read_body(st, req)?;
    let r = DetokenizeRequest::parse(&body)?;
    let m = model(st, r.model.as_deref())?;
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
