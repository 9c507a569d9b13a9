//! The HTTP edge: the only module that knows the server runs on tiny_http.
//!
//! tiny_http (vendored, `vendor/tiny_http/PATCHES.md`) parses requests on one thread per
//! connection and queues them; our `http-N` workers take them from [`HttpServer::recv_timeout`].
//! What this module adds on top, and why:
//! - The listener is built with socket2 so accepted sockets inherit `TCP_NODELAY` (no 40 ms
//!   Nagle stall between small SSE writes) and `SO_SNDTIMEO` (a client that stops reading
//!   fails the write instead of holding a worker forever). Never `SO_RCVTIMEO`: on the
//!   listener it would make `accept()` time out.
//! - Bodies are capped: `Content-Length` is checked before reading and the reader is wrapped
//!   in `.take(limit + 1)` for chunked bodies.
//! - Connections are bounded (patches #5 and #6 of the vendored tiny_http): an idle
//!   connection is closed after `idle_timeout_ms`; a request's head and body must arrive within
//!   `request_read_timeout_ms` of its first byte (a late head gets tiny_http's 408, a late body
//!   our 408 — [`BodyError::TimedOut`]); past `max_connections` open connections a new one is
//!   answered [`reject_response`] (503) by its own connection thread and closed, never reaching
//!   a worker.
//! - A request can be answered on its connection's thread before it is queued
//!   ([`HttpServer::set_early_answer`], patch #11): the server refuses there what arrives at
//!   its concurrency cap, so a refusal wakes no worker.
//! - Streams bypass `Request::respond` (it buffers chunked bodies 8 KiB at a time): the raw
//!   writer from `Request::into_writer` gets our own chunk framing and a flush per event
//!   ([`SseWriter`]). HTTP/1.0 clients get the events unframed and the connection closes after.
//! - [`HttpRequest`] keeps the tiny_http request in an `Option` so that a handler that panics
//!   before answering still gets a 500 from the worker's guard.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::api::ApiError;
use crate::config::Limits;

/// Pending connections the kernel queues before `accept()`.
const LISTEN_BACKLOG: i32 = 1024;

/// The listening server.
pub struct HttpServer {
    inner: tiny_http::Server,
    addr: SocketAddr,
}

impl HttpServer {
    /// Binds `listen` (host:port; port 0 picks a free one) and starts accepting at once.
    pub fn bind(listen: &str, limits: &Limits) -> io::Result<HttpServer> {
        let addr = listen.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no address for {listen}"),
            )
        })?;
        let listener = listener(addr, Duration::from_millis(limits.write_timeout_ms))?;
        let addr = listener.local_addr()?;
        let inner =
            tiny_http::Server::from_listener_with_limits(listener, None, connection_limits(limits))
                .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(HttpServer { inner, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next request, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> io::Result<Option<HttpRequest>> {
        Ok(self.inner.recv_timeout(timeout)?.map(HttpRequest::new))
    }

    /// From now on each request goes through `answer` on its connection's thread before it is
    /// queued for a worker: `answer` returns the request to queue it, or `None` having
    /// answered it (vendored tiny_http patch #11). Only the first call takes effect.
    pub fn set_early_answer<F>(&self, answer: F)
    where
        F: Fn(HttpRequest) -> Option<HttpRequest> + Send + Sync + 'static,
    {
        self.inner
            .set_early_answer(Box::new(move |r| answer(HttpRequest::new(r))?.inner));
    }

    /// Wakes one worker blocked in `recv_timeout` (call once per worker at shutdown).
    pub fn unblock(&self) {
        self.inner.unblock();
    }

    /// Closes the listening socket: new connections are refused; those already open go on
    /// (the first step of a shutdown).
    pub fn stop_accepting(&self) {
        self.inner.stop_accepting();
    }

    pub fn connections_accepted(&self) -> u64 {
        self.inner.connections_accepted()
    }

    pub fn connections_open(&self) -> usize {
        self.inner.num_connections()
    }

    pub fn accept_errors(&self) -> u64 {
        self.inner.accept_errors()
    }

    /// Connections answered 503 for being over `max_connections`.
    pub fn connections_rejected(&self) -> u64 {
        self.inner.connections_rejected()
    }
}

/// What the vendored tiny_http enforces on connections, from our limits.
fn connection_limits(l: &Limits) -> tiny_http::ConnectionLimits {
    tiny_http::ConnectionLimits {
        read_timeouts: Some(tiny_http::ReadTimeouts {
            idle: Duration::from_millis(l.idle_timeout_ms),
            request: Duration::from_millis(l.request_read_timeout_ms),
        }),
        max_connections: Some(l.max_connections),
        reject_response: reject_response(l.max_connections, l.retry_after_s),
        // Slow bodies hold connection threads, never workers.
        prefetch_body_bytes: Some(l.body_bytes_max),
    }
}

/// The whole answer to a connection over the cap: 503, `Retry-After`, an OpenAI-style error
/// body, `Connection: close` (written verbatim by tiny_http's connection thread).
pub fn reject_response(max_connections: usize, retry_after_s: u64) -> Vec<u8> {
    let e = ApiError::unavailable(
        format!("the server has its limit of {max_connections} open connections; retry later"),
        retry_after_s,
    );
    let body = serde_json::to_vec(&e.to_json()).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Retry-After: {retry_after_s}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// A TCP listener whose accepted sockets inherit `TCP_NODELAY` and `SO_SNDTIMEO`.
pub fn listener(addr: SocketAddr, write_timeout: Duration) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    if !write_timeout.is_zero() {
        socket.set_write_timeout(Some(write_timeout))?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    /// Not all in within `request_read_timeout_ms` of the request's first byte.
    TimedOut,
    /// `Connection: upgrade`: not supported (see [`HttpRequest::read_body`]).
    Upgrade,
    Io(io::Error),
}

/// One request. Answer it with [`HttpRequest::respond`] or [`HttpRequest::into_sse`]; one that
/// is dropped unanswered gets an empty 500 from tiny_http.
pub struct HttpRequest {
    inner: Option<tiny_http::Request>,
    method: String,
    path: String,
}

impl HttpRequest {
    fn new(r: tiny_http::Request) -> HttpRequest {
        let method = r.method().as_str().to_string();
        let path = r.url().split('?').next().unwrap_or("").to_string();
        HttpRequest {
            inner: Some(r),
            method,
            path,
        }
    }

    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path without the query string.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let r = self.inner.as_ref()?;
        r.headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The whole body, when the connection's thread has read it and nothing has read it
    /// since (vendored tiny_http patch #12): for an early look that leaves it in place.
    pub fn prefetched_body(&self) -> Option<&[u8]> {
        self.inner.as_ref()?.prefetched_body()
    }

    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.as_ref().and_then(|r| r.remote_addr().copied())
    }

    fn is_http10(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|r| *r.http_version() == tiny_http::HTTPVersion(1, 0))
    }

    /// Whether the request is still unanswered.
    pub fn is_pending(&self) -> bool {
        self.inner.is_some()
    }

    /// Reads the whole body, at most `limit` bytes. A declared length over the limit is
    /// refused before a byte is read.
    pub fn read_body(&mut self, limit: usize) -> Result<Vec<u8>, BodyError> {
        let r = self
            .inner
            .as_mut()
            .ok_or_else(|| BodyError::Io(io::Error::other("request already answered")))?;
        if r.body_length().is_some_and(|n| n > limit) {
            return Err(BodyError::TooLarge);
        }
        // tiny_http gives a `Connection: upgrade` request the raw socket as its body, so
        // reading it would wait for the client to close: a worker held by one idle client.
        if self
            .header("Connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        {
            return Err(BodyError::Upgrade);
        }
        let r = self
            .inner
            .as_mut()
            .ok_or_else(|| BodyError::Io(io::Error::other("request already answered")))?;
        let mut body = Vec::with_capacity(r.body_length().unwrap_or(0));
        r.as_reader()
            .take(limit as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => BodyError::TimedOut,
                _ => BodyError::Io(e),
            })?;
        if body.len() > limit {
            return Err(BodyError::TooLarge);
        }
        Ok(body)
    }

    /// Sends a whole response. `headers` are (name, value) pairs.
    pub fn respond(
        &mut self,
        status: u16,
        content_type: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) {
        let Some(r) = self.inner.take() else {
            return;
        };
        let mut resp = tiny_http::Response::from_data(body).with_status_code(status);
        for (k, v) in std::iter::once(&("Content-Type", content_type.to_string())).chain(headers) {
            if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
                resp.add_header(h);
            }
        }
        // The client may be gone; nothing to do about it here.
        let _ = r.respond(resp);
    }

    /// Answers with a `text/event-stream` and returns the writer for its events.
    pub fn into_sse(&mut self) -> io::Result<SseWriter> {
        let http10 = self.is_http10();
        let close = self
            .header("Connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"));
        let r = self
            .inner
            .take()
            .ok_or_else(|| io::Error::other("request already answered"))?;
        let mut w = SseWriter {
            out: r.into_writer(),
            chunked: !http10,
            buf: Vec::with_capacity(512),
        };
        let mut head = String::from(if http10 {
            "HTTP/1.0 200 OK\r\n"
        } else {
            "HTTP/1.1 200 OK\r\n"
        });
        head.push_str(
            "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n",
        );
        if http10 || close {
            head.push_str("Connection: close\r\n");
        }
        if !http10 {
            head.push_str("Transfer-Encoding: chunked\r\n");
        }
        head.push_str("\r\n");
        w.out.write_all(head.as_bytes())?;
        w.out.flush()?;
        Ok(w)
    }
}

/// Writes Server-Sent Events, each in its own HTTP chunk, flushed at once.
pub struct SseWriter {
    out: Box<dyn Write + Send>,
    chunked: bool,
    buf: Vec<u8>,
}

impl SseWriter {
    /// A writer over any sink, `chunked` framing each event as one HTTP chunk. The server gets
    /// its writers from [`HttpRequest::into_sse`]; this is for benches and tests.
    pub fn new(out: Box<dyn Write + Send>, chunked: bool) -> SseWriter {
        SseWriter {
            out,
            chunked,
            buf: Vec::with_capacity(512),
        }
    }

    /// `data: <json>` as one event.
    pub fn data(&mut self, json: &serde_json::Value) -> io::Result<()> {
        let mut ev = Vec::with_capacity(256);
        ev.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut ev, json).map_err(io::Error::other)?;
        ev.extend_from_slice(b"\n\n");
        self.event(&ev)
    }

    /// A comment line: clients ignore it, proxies see traffic.
    pub fn ping(&mut self) -> io::Result<()> {
        self.event(b": ping\n\n")
    }

    /// `data: [DONE]`, then the end of the chunked body.
    pub fn done(mut self) -> io::Result<()> {
        self.event(b"data: [DONE]\n\n")?;
        if self.chunked {
            self.out.write_all(b"0\r\n\r\n")?;
        }
        self.out.flush()
    }

    fn event(&mut self, ev: &[u8]) -> io::Result<()> {
        self.buf.clear();
        if self.chunked {
            self.buf
                .extend_from_slice(format!("{:x}\r\n", ev.len()).as_bytes());
        }
        self.buf.extend_from_slice(ev);
        if self.chunked {
            self.buf.extend_from_slice(b"\r\n");
        }
        self.out.write_all(&self.buf)?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::SockRef;

    /// The facts file says accepted sockets inherit TCP_NODELAY and (very likely) SO_SNDTIMEO
    /// from the listener; tiny_http never sets either, so the server depends on it.
    #[test]
    fn accepted_sockets_inherit_nodelay_and_send_timeout() {
        let l =
            listener("127.0.0.1:0".parse().unwrap(), Duration::from_millis(1500)).expect("bind");
        let addr = l.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        let (accepted, _) = l.accept().expect("accept");
        let s = SockRef::from(&accepted);
        assert!(
            s.tcp_nodelay().expect("getsockopt"),
            "TCP_NODELAY inherited"
        );
        let t = s
            .write_timeout()
            .expect("getsockopt")
            .expect("SO_SNDTIMEO inherited");
        assert!(
            (Duration::from_millis(1400)..=Duration::from_millis(1600)).contains(&t),
            "{t:?}"
        );
        assert_eq!(
            s.read_timeout().expect("getsockopt"),
            None,
            "no SO_RCVTIMEO"
        );
    }
}
