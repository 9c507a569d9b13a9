//! A small blocking HTTP/1.1 client over one `TcpStream`, for the load generator: it times
//! every byte's arrival itself, keeps the connection alive when the server allows it, and
//! reconnects when the server closes it (as llama-server does after a stream).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Longest status or header line accepted.
const LINE_BYTES_MAX: usize = 64 * 1024;
/// Largest non-streamed body accepted.
const BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// `http://host:port` split into what a connection needs.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host_header: String,
}

impl Target {
    pub fn parse(url: &str) -> io::Result<Target> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{url}: only http:// URLs"),
            )
        })?;
        let host_port = rest.split('/').next().unwrap_or(rest);
        let addr = host_port.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: no address"))
        })?;
        Ok(Target {
            addr,
            host_header: host_port.to_string(),
        })
    }
}

/// One keep-alive connection (opened lazily).
pub struct Conn {
    target: Target,
    timeout: Duration,
    stream: Option<BufReader<TcpStream>>,
    /// Connections opened over this `Conn`'s life.
    pub opened: u64,
}

/// The head of a response; the body is read through [`Conn::body_reader`].
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<usize>,
    pub close: bool,
    /// `Retry-After` in whole seconds (its HTTP-date form, or anything else, reads as None).
    pub retry_after_s: Option<u64>,
}

impl Conn {
    pub fn new(target: Target, timeout: Duration) -> Conn {
        Conn {
            target,
            timeout,
            stream: None,
            opened: 0,
        }
    }

    fn stream(&mut self) -> io::Result<&mut BufReader<TcpStream>> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.target.addr, self.timeout)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            self.opened += 1;
            self.stream = Some(BufReader::with_capacity(16 * 1024, s));
        }
        Ok(self.stream.as_mut().expect("set above"))
    }

    /// Sends a POST with a JSON body (and an `X-Session-Id` header when `session_id` is
    /// given) and reads the response head. A connection the server closed while idle is
    /// retried once on a fresh one.
    pub fn post(&mut self, path: &str, body: &[u8], session_id: Option<&str>) -> io::Result<Head> {
        assert!(
            session_id.is_none_or(|id| id.bytes().all(|b| b.is_ascii_graphic())),
            "session ids are made here, of visible ASCII"
        );
        let session = session_id.map_or(String::new(), |id| format!("X-Session-Id: {id}\r\n"));
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nAccept: text/event-stream, application/json\r\n{session}\r\n",
            self.target.host_header,
            body.len()
        );
        let fresh = self.stream.is_none();
        match self.send_and_read_head(req.as_bytes(), body) {
            Ok(h) => Ok(h),
            Err(e) if !fresh && is_stale(&e) => {
                self.stream = None;
                self.send_and_read_head(req.as_bytes(), body)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    fn send_and_read_head(&mut self, head: &[u8], body: &[u8]) -> io::Result<Head> {
        let s = self.stream()?;
        s.get_mut().write_all(head)?;
        s.get_mut().write_all(body)?;
        s.get_mut().flush()?;
        read_head(s)
    }

    /// Reads the whole body of a response (after [`Conn::post`]).
    pub fn read_body(&mut self, head: &Head) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.for_each_body_chunk(head, |c| {
            out.extend_from_slice(c);
            out.len() <= BODY_BYTES_MAX
        })?;
        Ok(out)
    }

    /// Calls `f` with each piece of the body as it arrives (chunk by chunk for chunked bodies);
    /// `f` returning false stops reading and drops the connection.
    pub fn for_each_body_chunk(
        &mut self,
        head: &Head,
        mut f: impl FnMut(&[u8]) -> bool,
    ) -> io::Result<()> {
        let s = self.stream()?;
        let complete = if head.chunked {
            read_chunked(s, &mut f)?
        } else if let Some(n) = head.content_length {
            let mut buf = vec![0u8; n];
            s.read_exact(&mut buf)?;
            f(&buf)
        } else {
            let mut buf = Vec::new();
            s.read_to_end(&mut buf)?;
            f(&buf);
            false // read to close: the connection is gone
        };
        if !complete || head.close {
            self.stream = None;
        }
        Ok(())
    }
}

fn is_stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

fn read_line(r: &mut impl BufRead, line: &mut String) -> io::Result<()> {
    line.clear();
    let n = r.take(LINE_BYTES_MAX as u64).read_line(line)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "header line too long",
        ));
    }
    Ok(())
}

fn read_head(r: &mut impl BufRead) -> io::Result<Head> {
    let mut line = String::new();
    read_line(r, &mut line)?;
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut parts = line.split_whitespace();
    let version = parts.next().ok_or_else(|| bad("empty status line"))?;
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut head = Head {
        status,
        chunked: false,
        content_length: None,
        close: version == "HTTP/1.0",
        retry_after_s: None,
    };
    loop {
        read_line(r, &mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            return Ok(head);
        }
        let Some((k, v)) = l.split_once(':') else {
            return Err(bad("bad header line"));
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "transfer-encoding" => head.chunked = v.contains("chunked"),
            "content-length" => head.content_length = v.parse().ok(),
            "connection" => head.close = v.contains("close"),
            "retry-after" => head.retry_after_s = v.parse().ok(),
            _ => {}
        }
    }
}

/// Reads a chunked body, handing each chunk to `f`; true if it was read to the end.
fn read_chunked(r: &mut impl BufRead, f: &mut impl FnMut(&[u8]) -> bool) -> io::Result<bool> {
    let mut line = String::new();
    let mut buf = Vec::new();
    loop {
        read_line(r, &mut line)?;
        let size_hex = line.trim().split(';').next().unwrap_or("");
        let n = usize::from_str_radix(size_hex, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if n == 0 {
            // Trailers end with an empty line.
            loop {
                read_line(r, &mut line)?;
                if line.trim().is_empty() {
                    return Ok(true);
                }
            }
        }
        if n > BODY_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk too large",
            ));
        }
        buf.resize(n + 2, 0);
        r.read_exact(&mut buf)?;
        if !f(&buf[..n]) {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_reassembled_chunk_by_chunk() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;x=y\r\n!\r\n0\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let head = read_head(&mut r).unwrap();
        assert_eq!(head.status, 200);
        assert!(head.chunked && !head.close);
        let mut got = Vec::new();
        assert!(read_chunked(&mut r, &mut |c| {
            got.push(c.to_vec());
            true
        })
        .unwrap());
        assert_eq!(got, [b"hello".to_vec(), b"!".to_vec()]);
    }

    #[test]
    fn a_session_id_goes_out_as_a_header() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut heads = Vec::new();
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s);
            for _ in 0..2 {
                let mut head = String::new();
                let mut line = String::new();
                while read_line(&mut r, &mut line).is_ok() && line != "\r\n" {
                    head.push_str(&line);
                }
                let mut body = [0u8; 2];
                r.read_exact(&mut body).unwrap();
                r.get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .unwrap();
                heads.push(head);
            }
            heads
        });
        let target = Target::parse(&format!("http://{addr}")).unwrap();
        let mut conn = Conn::new(target, Duration::from_secs(10));
        for id in [Some("bench-1-7"), None] {
            let head = conn.post("/v1/chat/completions", b"{}", id).unwrap();
            assert_eq!(head.status, 200);
            conn.read_body(&head).unwrap();
        }
        let heads = server.join().unwrap();
        assert!(
            heads[0].contains("\r\nX-Session-Id: bench-1-7\r\n"),
            "{}",
            heads[0]
        );
        assert!(!heads[1].contains("X-Session-Id"), "{}", heads[1]);
        assert_eq!(conn.opened, 1, "one keep-alive connection");
    }

    #[test]
    fn retry_after_is_read_in_whole_seconds() {
        let head = |h: &str| {
            let raw = format!("HTTP/1.1 503 Service Unavailable\r\n{h}Content-Length: 0\r\n\r\n");
            read_head(&mut BufReader::new(raw.as_bytes())).unwrap()
        };
        let h = head("Retry-After: 7\r\n");
        assert_eq!((h.status, h.retry_after_s), (503, Some(7)));
        assert_eq!(head("retry-after:0\r\n").retry_after_s, Some(0));
        assert_eq!(head("RETRY-AFTER:  12 \r\n").retry_after_s, Some(12));
        for not_seconds in [
            "",
            "Retry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n",
            "Retry-After: 1.5\r\n",
            "Retry-After: -1\r\n",
            "Retry-After:\r\n",
        ] {
            assert_eq!(head(not_seconds).retry_after_s, None, "{not_seconds:?}");
        }
    }

    #[test]
    fn bad_heads_are_errors() {
        for raw in [
            &b""[..],
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n",
        ] {
            assert!(read_head(&mut BufReader::new(raw)).is_err());
        }
    }
}
