//! Response bodies and stream chunks, shaped like OpenAI's for completions and chat.

use serde_json::{json, Map, Value};

/// Which endpoint a response belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Of `prompt_tokens`, those read from the prefix cache (OpenAI's
    /// `prompt_tokens_details.cached_tokens`).
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

impl Usage {
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// A token with its text for log-prob reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenText {
    /// The token's text (lossy UTF-8 for byte tokens).
    pub text: String,
    /// The token's raw bytes.
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// One generated token's log-prob entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LogprobEntry {
    pub chosen: TokenText,
    /// Most likely first.
    pub top: Vec<TokenText>,
}

/// One choice of a whole (non-streamed) response.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub index: usize,
    pub text: String,
    pub finish_reason: &'static str,
    /// `Some` when the request asked for log-probs.
    pub logprobs: Option<Vec<LogprobEntry>>,
}

/// What every body and chunk of one response repeats.
#[derive(Debug, Clone)]
pub struct Header {
    pub endpoint: Endpoint,
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
}

/// A log-prob value that JSON can hold (-inf becomes the most negative finite f32).
fn lp(x: f32) -> f64 {
    if x.is_finite() {
        x as f64
    } else {
        f32::MIN as f64
    }
}

impl Header {
    /// The id prefix OpenAI uses for this endpoint.
    pub fn id_prefix(endpoint: Endpoint) -> &'static str {
        match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    fn envelope(&self, chunk: bool, choices: Vec<Value>) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("object".into(), json!(self.object(chunk)));
        m.insert("created".into(), json!(self.created));
        m.insert("model".into(), json!(self.model));
        m.insert("choices".into(), Value::Array(choices));
        m
    }

    /// The whole response of a non-streamed request.
    pub fn full(&self, choices: &[Choice], usage: Usage) -> Value {
        let choices = choices
            .iter()
            .map(|c| {
                let logprobs = c.logprobs.as_ref().map(|l| self.logprobs(l, 0));
                match self.endpoint {
                    Endpoint::Completions => json!({
                        "index": c.index,
                        "text": c.text,
                        "logprobs": logprobs,
                        "finish_reason": c.finish_reason,
                    }),
                    Endpoint::Chat => json!({
                        "index": c.index,
                        "message": {"role": "assistant", "content": c.text},
                        "logprobs": logprobs,
                        "finish_reason": c.finish_reason,
                    }),
                }
            })
            .collect();
        let mut m = self.envelope(false, choices);
        m.insert("usage".into(), usage.to_json());
        Value::Object(m)
    }

    /// One stream chunk for choice `index`: new text, its tokens' log-probs (if asked), and
    /// the finish reason on the last chunk. `first` marks a chat choice's first chunk, which
    /// carries the assistant role. `text_offset` is where `text` starts in the choice's text.
    pub fn chunk(
        &self,
        index: usize,
        text: &str,
        logprobs: Option<&[LogprobEntry]>,
        finish_reason: Option<&'static str>,
        first: bool,
        text_offset: usize,
    ) -> Value {
        let logprobs = logprobs.map(|l| self.logprobs(l, text_offset));
        let choice = match self.endpoint {
            Endpoint::Completions => json!({
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }),
            Endpoint::Chat => {
                let mut delta = Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if !text.is_empty() || first {
                    delta.insert("content".into(), json!(text));
                }
                json!({
                    "index": index,
                    "delta": delta,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason,
                })
            }
        };
        Value::Object(self.envelope(true, vec![choice]))
    }

    /// The final usage chunk of a stream (`stream_options.include_usage`): no choices.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        let mut m = self.envelope(true, Vec::new());
        m.insert("usage".into(), usage.to_json());
        Value::Object(m)
    }

    /// Log-probs in this endpoint's shape. `offset`: where the first token's text starts.
    fn logprobs(&self, entries: &[LogprobEntry], offset: usize) -> Value {
        match self.endpoint {
            Endpoint::Completions => completion_logprobs(entries, offset),
            Endpoint::Chat => {
                let item = |t: &TokenText| json!({"token": t.text, "logprob": lp(t.logprob), "bytes": t.bytes});
                let content: Vec<Value> = entries
                    .iter()
                    .map(|e| {
                        let mut v = item(&e.chosen);
                        v["top_logprobs"] = Value::Array(e.top.iter().map(item).collect());
                        v
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
        }
    }
}

/// The legacy completions shape: parallel arrays, `top_logprobs` as token → log-prob maps.
fn completion_logprobs(entries: &[LogprobEntry], mut offset: usize) -> Value {
    let mut tokens = Vec::with_capacity(entries.len());
    let mut token_logprobs = Vec::with_capacity(entries.len());
    let mut top = Vec::with_capacity(entries.len());
    let mut offsets = Vec::with_capacity(entries.len());
    for e in entries {
        tokens.push(json!(e.chosen.text));
        token_logprobs.push(json!(lp(e.chosen.logprob)));
        let mut m = Map::new();
        for t in &e.top {
            m.entry(t.text.clone()).or_insert(json!(lp(t.logprob)));
        }
        top.push(Value::Object(m));
        offsets.push(json!(offset));
        offset += e.chosen.text.len();
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(endpoint: Endpoint) -> Header {
        Header {
            endpoint,
            id: "x-1".into(),
            created: 7,
            model: "m".into(),
        }
    }

    fn entry(text: &str, logprob: f32) -> LogprobEntry {
        let t = TokenText {
            text: text.into(),
            bytes: text.as_bytes().to_vec(),
            logprob,
        };
        LogprobEntry {
            chosen: t.clone(),
            top: vec![t],
        }
    }

    #[test]
    fn completion_logprobs_have_offsets_and_maps() {
        let v = header(Endpoint::Completions).full(
            &[Choice {
                index: 0,
                text: "ab c".into(),
                finish_reason: "length",
                logprobs: Some(vec![entry("ab", -0.5), entry(" c", f32::NEG_INFINITY)]),
            }],
            Usage {
                prompt_tokens: 3,
                cached_tokens: 0,
                completion_tokens: 2,
            },
        );
        let l = &v["choices"][0]["logprobs"];
        assert_eq!(l["text_offset"], json!([0, 2]));
        assert_eq!(l["top_logprobs"][0]["ab"], json!(-0.5));
        assert!(l["token_logprobs"][1].as_f64().expect("finite") < -1e30);
        assert_eq!(v["usage"]["total_tokens"], json!(5));
        assert_eq!(
            v["usage"]["prompt_tokens_details"]["cached_tokens"],
            json!(0)
        );
        assert_eq!(v["object"], json!("text_completion"));
    }

    #[test]
    fn chat_chunks_carry_the_role_first() {
        let h = header(Endpoint::Chat);
        let first = h.chunk(0, "", None, None, true, 0);
        assert_eq!(first["choices"][0]["delta"]["role"], json!("assistant"));
        let last = h.chunk(0, "", None, Some("stop"), false, 0);
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert_eq!(last["object"], json!("chat.completion.chunk"));
        let u = h.usage_chunk(Usage::default());
        assert_eq!(u["choices"], json!([]));
    }
}
