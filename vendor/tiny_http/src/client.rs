use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read};

use std::net::SocketAddr;
use std::str::FromStr;

use crate::common::{HTTPVersion, Method};
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
    /// Ryzanstein patch (PATCHES.md #10): the request line is longer than `HEAD_BYTES_MAX`.
    UriTooLong,
    /// Ryzanstein patch (PATCHES.md #10): the head is over `HEAD_BYTES_MAX` or has more than
    /// `HEADERS_MAX` header lines.
    HeadTooLarge(HTTPVersion),
}

/// Ryzanstein patch (PATCHES.md #10): the most bytes of a request's head (request line and
/// header lines, with their line ends). Upstream grew the line buffer without bound. 32 KiB is
/// four times nginx's default line buffer (8 KiB) and twice Node's whole-head limit (16 KiB):
/// no real client comes near it, and a connection can hold no more than this while its head
/// is read.
pub const HEAD_BYTES_MAX: usize = 32 * 1024;
/// Ryzanstein patch (PATCHES.md #10): the most header lines of a request (hyper's default).
pub const HEADERS_MAX: usize = 100;

/// Ryzanstein patch (PATCHES.md #10): the protocol errors answered here get the same
/// OpenAI-style JSON body as the application's errors, so every client sees one error shape.
pub(crate) fn error_response(
    status: u16,
    code: &str,
    message: &str,
) -> crate::Response<std::io::Cursor<Vec<u8>>> {
    let body = format!(
        "{{\"error\":{{\"message\":\"{message}\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"{code}\"}}}}"
    );
    let content_type = crate::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .expect("a valid header");
    crate::Response::from_data(body.into_bytes())
        .with_status_code(crate::StatusCode(status))
        .with_header(content_type)
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Ryzanstein patch (PATCHES.md #6): once the previous request's body reader is done, the
    /// socket waits for a new request (the idle timeout, not the previous request's deadline).
    fn await_request(&mut self) {
        if let Some(r) = self.next_header_source.turn() {
            r.get_mut().await_request();
        }
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    ///
    /// Ryzanstein patch (PATCHES.md #10): at most `*budget` bytes, taken from the budget;
    /// `Ok(None)` when the line would exceed it. A line that is not ASCII is `WrongHeader`
    /// (answered 400) where upstream closed the connection without an answer.
    fn read_next_line(
        &mut self,
        budget: &mut usize,
        version: &HTTPVersion,
    ) -> Result<Option<AsciiString>, ReadError> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            if *budget == 0 {
                return Ok(None);
            }
            *budget -= 1;
            let byte = self.next_header_source.by_ref().bytes().next();

            let byte = match byte {
                Some(b) => b.map_err(ReadError::ReadIoError)?,
                None => {
                    let eof = IoError::new(ErrorKind::ConnectionAborted, "Unexpected EOF");
                    return Err(ReadError::ReadIoError(eof));
                }
            };

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                return AsciiString::from_ascii(buf)
                    .map(Some)
                    .map_err(|_| ReadError::WrongHeader(version.clone()));
            }

            prev_byte_was_cr = byte == b'\r';

            buf.push(byte);
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let (method, path, version, headers) = {
            // reading the request line
            let mut budget = HEAD_BYTES_MAX;
            let (method, path, version) = {
                let line = self
                    .read_next_line(&mut budget, &HTTPVersion(1, 1))?
                    .ok_or(ReadError::UriTooLong)?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    let line = self
                        .read_next_line(&mut budget, &version)?
                        .ok_or_else(|| ReadError::HeadTooLarge(version.clone()))?;

                    if line.is_empty() {
                        break;
                    };
                    if headers.len() == HEADERS_MAX {
                        return Err(ReadError::HeadTooLarge(version));
                    }
                    headers.push(match crate::Header::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        // Ryzanstein patch (PATCHES.md #10): a header needs a name.
                        Ok(h) if !h.field.as_str().is_empty() => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;

        // return the request
        Ok(request)
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        loop {
            // Ryzanstein patch (PATCHES.md #6): the idle timeout applies from here.
            self.await_request();
            let rq = match self.read() {
                Err(ReadError::WrongRequestLine) => {
                    let writer = self.sink.next().unwrap();
                    let response =
                        error_response(400, "bad_request", "the request line is malformed");
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = error_response(
                        400,
                        "bad_request",
                        "a header line is malformed or not ASCII",
                    );
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::TimedOut => {
                    // request timeout
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(408));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // closing the connection
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = error_response(
                        417,
                        "expectation_failed",
                        "only 'Expect: 100-continue' is supported",
                    );
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                // Ryzanstein patch (PATCHES.md #10): an oversized head is refused and the
                // connection closed: what follows cannot be parsed.
                Err(ReadError::UriTooLong) => {
                    let writer = self.sink.next().unwrap();
                    let message = format!("the request line is over {HEAD_BYTES_MAX} bytes");
                    let response = error_response(414, "uri_too_long", &message);
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None;
                }

                Err(ReadError::HeadTooLarge(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let message = format!(
                        "the request headers are over {HEAD_BYTES_MAX} bytes or {HEADERS_MAX} lines"
                    );
                    let response = error_response(431, "request_header_fields_too_large", &message);
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None;
                }

                Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                // Ryzanstein patch (PATCHES.md #10): answer through the request's own writer.
                // Upstream took the connection's next writer, which waits until this
                // request's writer is dropped: the connection thread hung for good and the
                // client never got an answer.
                let mut writer = rq.into_writer();
                let response = error_response(
                    505,
                    "http_version_not_supported",
                    "this server only supports HTTP versions 1.0 and 1.1",
                );
                response
                    .raw_print(&mut writer, HTTPVersion(1, 1), &[], false, None)
                    .and_then(|()| writer.flush())
                    .ok();
                continue;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            return Some(rq);
        }
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
