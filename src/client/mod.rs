//! A blocking client for Ryzanstein and any OpenAI-compatible server, over a bounded pool of
//! keep-alive connections.
//!
//! Brief overview:
//! - [`Client`] (cheap to clone, `Send + Sync`): completions and chat completions, whole
//!   ([`Client::completion`], [`Client::chat`]) or streamed as an iterator of events
//!   ([`Client::completion_stream`], [`Client::chat_stream`] → [`EventStream`]), the model
//!   list, tokenization, and plain JSON calls for anything else.
//! - [`ClientConfig`]: the pool's bounds and every timeout, each with a default.
//! - [`PoolStats`]: connections opened, reused and closed, the reuse rate, stale connections
//!   dropped or retried, and the wait for a connection.
//! - [`Error`]: one enum for every failure, with [`Error::kind`] for counting by kind.
//!
//! The pool: ureq's `Agent` (without default features: plain HTTP/1.1, no TLS) keeps idle
//! connections, at most `max_idle`, each closed once idle for `idle_timeout` (checked when the
//! pool is next used), and probes a pooled connection with a non-blocking read before reusing
//! it. On top of it, a semaphore caps connections in use at `max_connections` (a request
//! waits at most `checkout_timeout` for one), `prewarm` opens connections up front, and a
//! request that fails on a reused connection before any answer arrived is retried once on a
//! fresh one when it is safe to repeat (GET, `/tokenize`, `/detokenize`; generations only
//! with [`ClientConfig::retry_generations`]). See `pool.rs` for why the counts are exact.
//!
//! **Invariant:** a request holds its connection permit until its body has been read to the
//! end or dropped, so at most `max_connections` connections are ever open to a server.
//! **Boundary:** depends on nothing else in the crate; talks to any server.
//!
//! ```no_run
//! use ryzanstein::client::{Client, ClientConfig, CompletionRequest};
//!
//! let client = Client::new(ClientConfig::new("http://127.0.0.1:8080"))?;
//! let mut req = CompletionRequest::new("The capital of France is");
//! req.max_tokens = Some(8);
//! println!("{}", client.completion(&req)?.choices[0].text);
//! for chunk in client.completion_stream(&req)? {
//!     print!("{}", chunk?.choices.first().map_or("", |c| c.text()));
//! }
//! println!("\nreuse rate {:.2}", client.stats().reuse_rate());
//! # Ok::<(), ryzanstein::client::Error>(())
//! ```

mod error;
mod pool;
mod stream;
mod types;

use std::io::Read;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use ureq::http::Response as HttpResponse;
use ureq::unversioned::resolver::DefaultResolver;

/// A response whose body is still to be read.
type Response = HttpResponse<ureq::Body>;

pub use error::Error;
pub use pool::PoolStats;
pub use stream::{EventStream, SSE_LINE_BYTES_MAX};
pub use types::{
    ChatChoice, ChatCompletion, ChatRequest, Completion, CompletionChoice, CompletionRequest,
    Delta, Message, ModelInfo, Prompt, StreamChoice, StreamChunk, Usage,
};

use pool::{take_opened_here, Counters, CountingConnector, Permit, Semaphore};

/// Default cap on open connections.
pub const MAX_CONNECTIONS_DEFAULT: usize = 16;
/// Most connections [`ClientConfig::max_connections`] may ask for: beyond it, a typo.
pub const MAX_CONNECTIONS_LIMIT: usize = 4096;
/// Largest non-streamed response body read.
pub const BODY_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
/// Most bytes of an error body kept for the message.
const ERROR_BODY_BYTES_MAX: u64 = 64 * 1024;

/// The pool's bounds and the timeouts. [`ClientConfig::new`] sets every default.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `http://host:port` of the server (its root: paths such as `/v1/completions` are
    /// appended).
    pub base_url: String,
    /// Sent as `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Most connections open at once (and requests in flight). Default 16.
    pub max_connections: usize,
    /// Most idle connections kept (at most `max_connections`). Default: `max_connections`.
    pub max_idle: usize,
    /// An idle connection older than this is closed, not reused. Default 30 s, below the
    /// usual keep-alive timeouts of servers and proxies (nginx: 75 s).
    pub idle_timeout: Duration,
    /// Longest wait for a free connection before [`Error::CheckoutTimeout`]. Default 30 s.
    pub checkout_timeout: Duration,
    /// Connections opened by [`Client::new`] before the first request. Default 0.
    pub prewarm: usize,
    /// What pre-warming requests (GET). Default `/v1/models`, which every OpenAI-compatible
    /// server answers.
    pub prewarm_path: String,
    /// TCP connect. Default 5 s.
    pub connect_timeout: Duration,
    /// From the request sent to the response's head (includes queueing and, for whole
    /// answers, the generation). Default 600 s.
    pub response_timeout: Duration,
    /// Longest wait for any byte of a body: for a stream, the longest gap between events.
    /// Default 120 s.
    pub read_timeout: Duration,
    /// Each write of the request. Default 30 s.
    pub write_timeout: Duration,
    /// Largest non-streamed body accepted. Default 64 MiB.
    pub body_bytes_max: u64,
    /// Also retry a generation once on a fresh connection when a reused one failed before
    /// any answer arrived. Off by default: the server may have started it (a repeat costs
    /// compute and, with sampling, may answer differently).
    pub retry_generations: bool,
}

impl ClientConfig {
    pub fn new(base_url: &str) -> ClientConfig {
        ClientConfig {
            base_url: base_url.to_string(),
            api_key: None,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            max_idle: MAX_CONNECTIONS_DEFAULT,
            idle_timeout: Duration::from_secs(30),
            checkout_timeout: Duration::from_secs(30),
            prewarm: 0,
            prewarm_path: "/v1/models".into(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(600),
            read_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(30),
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            retry_generations: false,
        }
    }

    /// Sets `max_connections` and `max_idle` together.
    pub fn with_max_connections(mut self, n: usize) -> ClientConfig {
        self.max_connections = n;
        self.max_idle = n;
        self
    }

    fn validate(&self) -> Result<String, Error> {
        let bad = |m: String| Err(Error::Config(m));
        if !(1..=MAX_CONNECTIONS_LIMIT).contains(&self.max_connections) {
            return bad(format!(
                "max_connections is {}; it must be 1 to {MAX_CONNECTIONS_LIMIT}",
                self.max_connections
            ));
        }
        if self.max_idle > self.max_connections || self.prewarm > self.max_connections {
            return bad("max_idle and prewarm must not exceed max_connections".into());
        }
        let base = self.base_url.trim_end_matches('/');
        if base.starts_with("https://") {
            return bad(format!(
                "{base}: https is not supported (the client is built without TLS)"
            ));
        }
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return bad(format!("{base}: expected http://host:port"));
        }
        Ok(base.to_string())
    }
}

/// Whether a failed request may be sent again.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Retry {
    Safe,
    Generation,
}

/// The body of a request.
enum Body<'a> {
    Get,
    Post(&'a [u8]),
}

struct Inner {
    agent: ureq::Agent,
    base: String,
    auth: Option<String>,
    sem: Arc<Semaphore>,
    counters: Arc<Counters>,
    cfg: ClientConfig,
}

/// A pooled client; clones share the pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Client {
    /// Builds the client and opens `cfg.prewarm` connections.
    pub fn new(cfg: ClientConfig) -> Result<Client, Error> {
        let base = cfg.validate()?;
        let counters = Arc::new(Counters::default());
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .no_delay(true)
            .max_idle_connections(cfg.max_idle)
            .max_idle_connections_per_host(cfg.max_idle)
            .max_idle_age(cfg.idle_timeout)
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_send_request(Some(cfg.write_timeout))
            .timeout_send_body(Some(cfg.write_timeout))
            .timeout_recv_response(Some(cfg.response_timeout))
            .timeout_per_read(Some(cfg.read_timeout))
            .timeout_per_write(Some(cfg.write_timeout))
            .user_agent(concat!("ryzanstein/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            CountingConnector::new(counters.clone()),
            DefaultResolver::default(),
        );
        let client = Client {
            inner: Arc::new(Inner {
                agent,
                base,
                auth: cfg.api_key.as_ref().map(|k| format!("Bearer {k}")),
                sem: Arc::new(Semaphore::new(cfg.max_connections)),
                counters,
                cfg,
            }),
        };
        if client.inner.cfg.prewarm > 0 {
            client.prewarm(client.inner.cfg.prewarm)?;
        }
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// The pool's figures so far.
    pub fn stats(&self) -> PoolStats {
        self.inner.counters.snapshot()
    }

    /// Opens up to `n` connections now (at most `max_connections`) by sending `n` GETs of
    /// `prewarm_path` at once and holding each answer until all have one; they then all go
    /// back to the pool idle. Returns how many succeeded.
    pub fn prewarm(&self, n: usize) -> Result<usize, Error> {
        let n = n.min(self.inner.cfg.max_connections);
        if n == 0 {
            return Ok(0);
        }
        let barrier = Barrier::new(n);
        let path = self.inner.cfg.prewarm_path.clone();
        let results: Vec<Result<(), Error>> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    let (barrier, path) = (&barrier, &path);
                    sc.spawn(move || {
                        let r = self.call(Body::Get, path, Retry::Safe);
                        // Every thread reaches the barrier, failed or not, so none waits
                        // forever; a call is bounded by the timeouts.
                        barrier.wait();
                        let (permit, resp) = r?;
                        let _ = self.read_body(resp, &permit)?;
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Other("pre-warm panicked".into())))
                })
                .collect()
        });
        let ok = results.iter().filter(|r| r.is_ok()).count();
        match results.into_iter().find_map(Result::err) {
            Some(e) if ok == 0 => Err(e),
            _ => Ok(ok),
        }
    }

    /// Takes a connection permit and gives it back, as every request does: for the criterion
    /// bench of the checkout path (`benches/client_pool.rs`).
    #[doc(hidden)]
    pub fn checkout_and_return(&self) -> Result<(), Error> {
        let inner = &self.inner;
        inner
            .sem
            .acquire(inner.cfg.checkout_timeout, &inner.counters)
            .map(drop)
            .map_err(|waited| Error::CheckoutTimeout { waited })
    }

    /// `POST /v1/completions`, the whole answer.
    pub fn completion(&self, req: &CompletionRequest) -> Result<Completion, Error> {
        self.post_typed("/v1/completions", req, false)
    }

    /// `POST /v1/completions` streamed (with `include_usage`).
    pub fn completion_stream(&self, req: &CompletionRequest) -> Result<EventStream, Error> {
        self.stream("/v1/completions", req)
    }

    /// `POST /v1/chat/completions`, the whole answer.
    pub fn chat(&self, req: &ChatRequest) -> Result<ChatCompletion, Error> {
        self.post_typed("/v1/chat/completions", req, false)
    }

    /// `POST /v1/chat/completions` streamed (with `include_usage`).
    pub fn chat_stream(&self, req: &ChatRequest) -> Result<EventStream, Error> {
        self.stream("/v1/chat/completions", req)
    }

    /// `GET /v1/models`.
    pub fn models(&self) -> Result<Vec<ModelInfo>, Error> {
        let list: types::ModelList = self.json(Body::Get, "/v1/models", Retry::Safe)?;
        Ok(list.data)
    }

    /// `POST /tokenize`: the token ids of `text` (the body carries the text as `prompt`, as
    /// Ryzanstein and vLLM read it, and as `content`, as llama-server reads it).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, Error> {
        let body = serde_json::json!({ "prompt": text, "content": text });
        let body = serde_json::to_vec(&body).map_err(|e| Error::Other(e.to_string()))?;
        let t: types::Tokens = self.json(Body::Post(&body), "/tokenize", Retry::Safe)?;
        Ok(t.tokens)
    }

    /// `GET path`, parsed as JSON.
    pub fn get_json(&self, path: &str) -> Result<Value, Error> {
        self.json(Body::Get, path, Retry::Safe)
    }

    /// `GET path` as text (for `/metrics`).
    pub fn get_text(&self, path: &str) -> Result<String, Error> {
        let (permit, resp) = self.call(Body::Get, path, Retry::Safe)?;
        let bytes = self.read_body(resp, &permit)?;
        String::from_utf8(bytes).map_err(|_| Error::Decode("the body is not UTF-8".into()))
    }

    /// `POST path` with a JSON body, parsed as JSON. Retried on a stale connection only for
    /// `/tokenize` and `/detokenize` (and generations if configured).
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let retry = if matches!(path, "/tokenize" | "/detokenize") {
            Retry::Safe
        } else {
            Retry::Generation
        };
        let bytes = serde_json::to_vec(body).map_err(|e| Error::Other(e.to_string()))?;
        self.json(Body::Post(&bytes), path, retry)
    }

    fn post_typed<T: DeserializeOwned>(
        &self,
        path: &str,
        req: &impl serde::Serialize,
        stream: bool,
    ) -> Result<T, Error> {
        let body = request_body(req, stream)?;
        self.json(Body::Post(&body), path, Retry::Generation)
    }

    fn stream(&self, path: &str, req: &impl serde::Serialize) -> Result<EventStream, Error> {
        let body = request_body(req, true)?;
        let (permit, resp) = self.call(Body::Post(&body), path, Retry::Generation)?;
        let resp = check_status(resp)?;
        Ok(EventStream::new(resp.into_body().into_reader(), permit))
    }

    fn json<T: DeserializeOwned>(&self, body: Body, path: &str, retry: Retry) -> Result<T, Error> {
        let (permit, resp) = self.call(body, path, retry)?;
        let bytes = self.read_body(resp, &permit)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(format!("{path}: {e}")))
    }

    /// Checks the status and reads the whole body (which returns the connection to the pool
    /// while the permit is still held).
    fn read_body(&self, resp: Response, _held: &Permit) -> Result<Vec<u8>, Error> {
        let resp = check_status(resp)?;
        Ok(resp
            .into_body()
            .with_config()
            .limit(self.inner.cfg.body_bytes_max)
            .read_to_vec()?)
    }

    /// Takes a permit and sends the request; retries once on a fresh connection when a
    /// reused one fails before the answer's head and the request may be repeated.
    fn call(&self, body: Body, path: &str, retry: Retry) -> Result<(Permit, Response), Error> {
        let inner = &self.inner;
        let permit = inner
            .sem
            .acquire(inner.cfg.checkout_timeout, &inner.counters)
            .map_err(|waited| Error::CheckoutTimeout { waited })?;
        let may_retry = retry == Retry::Safe || inner.cfg.retry_generations;
        let url = format!("{}{path}", inner.base);
        let mut retried = false;
        loop {
            take_opened_here();
            let r = self.send_once(&body, &url);
            let fresh = take_opened_here() > 0;
            let c = &inner.counters;
            c.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let stale = matches!(&r, Err(e) if e.is_stale_connection());
            if !fresh && (r.is_ok() || stale) {
                c.reused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if stale && !fresh && may_retry && !retried {
                c.stale_retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                retried = true;
                continue;
            }
            return r.map(|resp| (permit, resp));
        }
    }

    fn send_once(&self, body: &Body, url: &str) -> Result<Response, Error> {
        let inner = &self.inner;
        let r = match body {
            Body::Get => {
                let mut rb = inner.agent.get(url);
                if let Some(a) = &inner.auth {
                    rb = rb.header("Authorization", a);
                }
                rb.call()
            }
            Body::Post(bytes) => {
                let mut rb = inner
                    .agent
                    .post(url)
                    .header("Content-Type", "application/json");
                if let Some(a) = &inner.auth {
                    rb = rb.header("Authorization", a);
                }
                rb.send(*bytes)
            }
        };
        r.map_err(Error::from)
    }
}

/// The request as JSON, with `stream` (and `include_usage` for streams) set.
fn request_body(req: &impl serde::Serialize, stream: bool) -> Result<Vec<u8>, Error> {
    let mut v = serde_json::to_value(req).map_err(|e| Error::Other(e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("stream".into(), Value::Bool(stream));
        if stream {
            o.insert(
                "stream_options".into(),
                serde_json::json!({ "include_usage": true }),
            );
        }
    }
    serde_json::to_vec(&v).map_err(|e| Error::Other(e.to_string()))
}

/// Passes 2xx answers through; turns others into [`Error::Status`] (reading the error body,
/// which also frees the connection for reuse).
fn check_status(resp: Response) -> Result<Response, Error> {
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    let retry_after_s = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let mut text = String::new();
    let _ = resp
        .into_body()
        .into_reader()
        .take(ERROR_BODY_BYTES_MAX)
        .read_to_string(&mut text);
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.chars().take(500).collect());
    Err(Error::Status {
        status,
        message,
        retry_after_s,
    })
}
