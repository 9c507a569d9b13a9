//! A streamed answer as an iterator of events.
//!
//! Server-Sent Events are read line by line as they arrive (ureq's body reader returns as
//! soon as any bytes decode, so nothing waits for a buffer to fill). `data:` lines make up an
//! event, a blank line ends it, comments (`: ping`) and other fields are skipped, and
//! `data: [DONE]` ends the stream. The stream then reads the body to its end so the
//! connection goes back to the pool; dropping a stream early closes its connection instead,
//! which is how a client cancels a generation.

use std::io::{self, BufRead, Read};

use super::error::Error;
use super::pool::Permit;
use super::types::StreamChunk;

/// Longest SSE line accepted (one event's JSON).
pub const SSE_LINE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Most bytes read after `[DONE]` while waiting for the end of the body.
const TRAILER_BYTES_MAX: u64 = 64 * 1024;

/// Parses SSE from any buffered reader.
pub(crate) struct SseReader<R> {
    r: R,
    line: Vec<u8>,
    data: String,
    done: bool,
}

impl<R: BufRead> SseReader<R> {
    pub fn new(r: R) -> Self {
        SseReader {
            r,
            line: Vec::with_capacity(1024),
            data: String::new(),
            done: false,
        }
    }

    /// The next event's data, `Ok(None)` after `[DONE]`.
    pub fn next_data(&mut self) -> Result<Option<String>, Error> {
        if self.done {
            return Ok(None);
        }
        loop {
            self.line.clear();
            let n = (&mut self.r)
                .take(SSE_LINE_BYTES_MAX)
                .read_until(b'\n', &mut self.line)?;
            if n == 0 {
                self.done = true;
                return Err(Error::ConnectionLost(
                    "the stream ended before [DONE]".into(),
                ));
            }
            if self.line.last() != Some(&b'\n') && n as u64 == SSE_LINE_BYTES_MAX {
                self.done = true;
                return Err(Error::Decode("an SSE line is too long".into()));
            }
            let line = std::str::from_utf8(&self.line)
                .map_err(|_| Error::Decode("an SSE line is not UTF-8".into()))?
                .trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if self.data.is_empty() {
                    continue;
                }
                let data = std::mem::take(&mut self.data);
                if data == "[DONE]" {
                    self.done = true;
                    self.drain_trailer();
                    return Ok(None);
                }
                return Ok(Some(data));
            }
            if let Some(rest) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            }
            // Comments (`:`), `event:`, `id:` and `retry:` lines carry nothing we use.
        }
    }

    /// Reads what follows `[DONE]` (normally just the end of the chunked body) so that the
    /// connection can be reused.
    fn drain_trailer(&mut self) {
        let _ = io::copy(&mut (&mut self.r).take(TRAILER_BYTES_MAX), &mut io::sink());
    }
}

/// The events of one streamed completion or chat completion. Yields each `data:` chunk as it
/// arrives and ends after `[DONE]`; an error event or a cut stream yields one `Err` and ends.
pub struct EventStream {
    // Field order matters: the body (and with it the connection) is released before the
    // permit, so a waiting checkout finds the connection back in the pool.
    sse: SseReader<io::BufReader<ureq::BodyReader<'static>>>,
    _permit: Permit,
}

impl EventStream {
    pub(crate) fn new(body: ureq::BodyReader<'static>, permit: Permit) -> EventStream {
        EventStream {
            sse: SseReader::new(io::BufReader::with_capacity(16 * 1024, body)),
            _permit: permit,
        }
    }

    /// Reads the whole stream: the text of choice 0 and the usage, if the server sent it.
    pub fn collect_text(self) -> Result<(String, Option<super::Usage>), Error> {
        let mut text = String::new();
        let mut usage = None;
        for chunk in self {
            let chunk = chunk?;
            if let Some(c) = chunk.choices.iter().find(|c| c.index == 0) {
                text.push_str(c.text());
            }
            usage = chunk.usage.or(usage);
        }
        Ok((text, usage))
    }
}

impl Iterator for EventStream {
    type Item = Result<StreamChunk, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let data = match self.sse.next_data() {
            Ok(Some(d)) => d,
            Ok(None) => return None,
            Err(e) => {
                self.sse.done = true;
                return Some(Err(e));
            }
        };
        Some(parse_chunk(&data).inspect_err(|_| self.sse.done = true))
    }
}

fn parse_chunk(data: &str) -> Result<StreamChunk, Error> {
    let v: serde_json::Value = serde_json::from_str(data)
        .map_err(|e| Error::Decode(format!("a stream event is not JSON: {e}")))?;
    if let Some(err) = v.get("error") {
        let message = err
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("error event in the stream")
            .to_string();
        let status = err.get("code").and_then(|c| c.as_u64()).unwrap_or(500) as u16;
        return Err(Error::Status {
            status,
            message,
            retry_after_s: None,
        });
    }
    serde_json::from_value(v).map_err(|e| Error::Decode(format!("a stream event: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(raw: &[u8]) -> (Vec<String>, Option<String>) {
        let mut r = SseReader::new(raw);
        let mut out = Vec::new();
        loop {
            match r.next_data() {
                Ok(Some(d)) => out.push(d),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e.kind())),
            }
        }
    }

    #[test]
    fn events_comments_and_done() {
        let raw = b": ping\n\ndata: {\"a\":1}\n\ndata: x\r\ndata: y\r\n\r\nevent: e\nid: 3\n\ndata: [DONE]\n\n";
        assert_eq!(all(raw), (vec!["{\"a\":1}".into(), "x\ny".into()], None));
    }

    #[test]
    fn a_cut_stream_is_an_error() {
        assert_eq!(
            all(b"data: 1\n\ndata: 2"),
            (vec!["1".into()], Some("connection_lost".into()))
        );
    }

    #[test]
    fn error_events_become_status_errors() {
        let e = parse_chunk(r#"{"error":{"message":"boom","code":503}}"#).unwrap_err();
        assert!(matches!(e, Error::Status { status: 503, .. }), "{e:?}");
        assert!(parse_chunk("{not json").is_err());
    }
}
