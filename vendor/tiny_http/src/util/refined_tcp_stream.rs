use std::io::Result as IoResult;
use std::io::{Error as IoError, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use crate::connection::Connection;
#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use crate::ssl::SslStream;

pub(crate) enum Stream {
    Http(Connection),
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    Https(SslStream),
}

impl Clone for Stream {
    fn clone(&self) -> Self {
        match self {
            Stream::Http(tcp_stream) => Stream::Http(tcp_stream.try_clone().unwrap()),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => Stream::Https(ssl_stream.clone()),
        }
    }
}

impl From<Connection> for Stream {
    fn from(tcp_stream: Connection) -> Self {
        Stream::Http(tcp_stream)
    }
}

impl Stream {
    fn try_clone(&self) -> IoResult<Stream> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.try_clone().map(Stream::Http),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => Ok(Stream::Https(ssl_stream.clone())),
        }
    }

    fn secure(&self) -> bool {
        match self {
            Stream::Http(_) => false,
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => true,
        }
    }

    fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.peer_addr(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.peer_addr(),
        }
    }

    fn set_read_timeout(&self, t: Duration) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.set_read_timeout(Some(t)),
            // Not built (no TLS feature): the timeouts are left to the TLS stream.
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => Ok(()),
        }
    }

    fn shutdown(&mut self, how: Shutdown) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.shutdown(how),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.read(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.write(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.write(buf),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.flush(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.flush(),
        }
    }
}

pub struct RefinedTcpStream {
    stream: Stream,
    close_read: bool,
    close_write: bool,
    // Ryzanstein patch (PATCHES.md #6): read timeouts, on the read half only.
    timeouts: Option<ReadTimeouts>,
    /// `None`: waiting for a request (idle); `Some`: the request being read must be in by then.
    deadline: Option<Instant>,
    /// The `SO_RCVTIMEO` last set, so that an unchanged one costs no system call.
    socket_timeout: Option<Duration>,
    /// A request timed out: every later read fails (the connection is done).
    expired: bool,
}

/// How long a connection may wait for the bytes of a request (Ryzanstein patch, PATCHES.md #6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadTimeouts {
    /// Longest wait for the first byte of a request (a new connection, or keep-alive between
    /// requests). Expiry closes the connection without an answer.
    pub idle: Duration,
    /// From a request's first byte, its head and body must be in within this; no single read
    /// waits past it either. Expiry is a `TimedOut` error (tiny_http answers 408 to a late
    /// head; a late body fails the application's read).
    pub request: Duration,
}

impl RefinedTcpStream {
    /// Ryzanstein patch (PATCHES.md #9): a failed `dup` (EMFILE) gives the stream back with
    /// the error instead of panicking the accept thread.
    pub(crate) fn new<S>(
        stream: S,
    ) -> Result<(RefinedTcpStream, RefinedTcpStream), (IoError, Stream)>
    where
        S: Into<Stream>,
    {
        let stream: Stream = stream.into();

        let read = match stream.try_clone() {
            Ok(r) => r,
            Err(e) => return Err((e, stream)),
        };
        let write = stream;

        let read = RefinedTcpStream {
            stream: read,
            close_read: true,
            close_write: false,
            timeouts: None,
            deadline: None,
            socket_timeout: None,
            expired: false,
        };

        let write = RefinedTcpStream {
            stream: write,
            close_read: false,
            close_write: true,
            timeouts: None,
            deadline: None,
            socket_timeout: None,
            expired: false,
        };

        Ok((read, write))
    }

    /// Returns true if this struct wraps around a secure connection.
    #[inline]
    pub(crate) fn secure(&self) -> bool {
        self.stream.secure()
    }

    pub(crate) fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        self.stream.peer_addr()
    }

    /// Bounds every later read (Ryzanstein patch, PATCHES.md #6).
    pub(crate) fn set_read_timeouts(&mut self, t: ReadTimeouts) {
        self.timeouts = Some(t);
    }

    /// The next bytes read begin a new request: until they come, the idle timeout applies.
    pub(crate) fn await_request(&mut self) {
        self.deadline = None;
    }

    fn timed_read(&mut self, t: ReadTimeouts, buf: &mut [u8]) -> IoResult<usize> {
        if self.expired {
            return Err(IoError::new(
                ErrorKind::ConnectionAborted,
                "request timed out",
            ));
        }
        let wait = match self.deadline {
            None => t.idle,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(w) if !w.is_zero() => w,
                _ => return Err(self.expire()),
            },
        };
        if self.socket_timeout != Some(wait) {
            self.stream.set_read_timeout(wait)?;
            self.socket_timeout = Some(wait);
        }
        match self.stream.read(buf) {
            Ok(n) => {
                if n > 0 && self.deadline.is_none() {
                    self.deadline = Some(Instant::now() + t.request);
                }
                Ok(n)
            }
            // SO_RCVTIMEO expiry is EAGAIN (WouldBlock) on Linux.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if self.deadline.is_none() {
                    self.expired = true;
                    Err(IoError::new(ErrorKind::ConnectionAborted, "idle timeout"))
                } else {
                    Err(self.expire())
                }
            }
            Err(e) => Err(e),
        }
    }

    fn expire(&mut self) -> IoError {
        self.expired = true;
        IoError::new(ErrorKind::TimedOut, "the request was not received in time")
    }
}

impl Drop for RefinedTcpStream {
    fn drop(&mut self) {
        if self.close_read {
            self.stream.shutdown(Shutdown::Read).ok();
        }

        if self.close_write {
            self.stream.shutdown(Shutdown::Write).ok();
        }
    }
}

impl Read for RefinedTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self.timeouts {
            Some(t) => self.timed_read(t, buf),
            None => self.stream.read(buf),
        }
    }
}

impl Write for RefinedTcpStream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.stream.flush()
    }
}
