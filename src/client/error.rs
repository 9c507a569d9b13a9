//! The client's one error type.

use std::io;
use std::time::Duration;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The base URL or a setting is unusable.
    #[error("client configuration: {0}")]
    Config(String),
    /// No connection permit came free within `checkout_timeout`.
    #[error("no connection free after waiting {waited:?} (max_connections reached)")]
    CheckoutTimeout { waited: Duration },
    /// Could not connect (refused, unreachable, unknown host).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// A phase of the call ran over its timeout.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The connection broke mid-exchange (reset, closed early, or a stream cut before
    /// `[DONE]`).
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The server answered with an error status (or an error event in a stream).
    #[error("HTTP {status}: {message}")]
    Status {
        status: u16,
        /// `error.message` of an OpenAI-style body, else the body itself (cut short).
        message: String,
        /// `Retry-After` in seconds, when given (503s).
        retry_after_s: Option<u64>,
    },
    /// The answer is not what the API says it should be.
    #[error("bad response: {0}")]
    Decode(String),
    /// Anything else from the HTTP layer.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// A short, stable name for the kind of error (for counting errors by kind).
    pub fn kind(&self) -> String {
        match self {
            Error::Config(_) => "config".into(),
            Error::CheckoutTimeout { .. } => "checkout_timeout".into(),
            Error::Connect(_) => "connect".into(),
            Error::Timeout(_) => "timeout".into(),
            Error::ConnectionLost(_) => "connection_lost".into(),
            Error::Status { status, .. } => format!("http_{status}"),
            Error::Decode(_) => "bad_response".into(),
            Error::Other(_) => "other".into(),
        }
    }

    /// Whether the failure looks like a pooled connection the server had already closed:
    /// the request may never have reached it.
    pub(crate) fn is_stale_connection(&self) -> bool {
        matches!(self, Error::ConnectionLost(_))
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        // ureq hands its own errors out of body readers wrapped in an io::Error.
        if e.get_ref().is_some_and(|x| x.is::<ureq::Error>()) {
            let kind = e.kind();
            return match e.into_inner().map(|b| b.downcast::<ureq::Error>()) {
                Some(Ok(u)) => Error::from(*u),
                _ => Error::Other(format!("body read failed ({kind})")),
            };
        }
        use io::ErrorKind::*;
        match e.kind() {
            ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable => {
                Error::Connect(e.to_string())
            }
            TimedOut | WouldBlock => Error::Timeout(e.to_string()),
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected => {
                Error::ConnectionLost(e.to_string())
            }
            _ => Error::Other(e.to_string()),
        }
    }
}

impl From<ureq::Error> for Error {
    fn from(e: ureq::Error) -> Self {
        match e {
            ureq::Error::Io(io) => Error::from(io),
            ureq::Error::Timeout(t) => Error::Timeout(t.to_string()),
            ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => {
                Error::Connect(e.to_string())
            }
            ureq::Error::StatusCode(status) => Error::Status {
                status,
                message: String::new(),
                retry_after_s: None,
            },
            ureq::Error::BadUri(m) => Error::Config(m),
            ureq::Error::BodyExceedsLimit(n) => {
                Error::Decode(format!("the body is over the {n}-byte limit"))
            }
            ureq::Error::Protocol(p) => Error::Decode(p.to_string()),
            other => Error::Other(other.to_string()),
        }
    }
}
