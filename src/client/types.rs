//! Wire types of the OpenAI-compatible API as a client sends and reads them.
//!
//! Requests serialize only the fields that are set; `extra` carries anything else (server
//! extensions such as `top_k` or `ignore_eos`). Responses are read leniently (`#[serde(default)]`)
//! so that any OpenAI-compatible server's answers parse, not only Ryzanstein's.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A completion prompt: text or token ids.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

impl Default for Prompt {
    fn default() -> Self {
        Prompt::Text(String::new())
    }
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Self {
        Prompt::Text(s.to_string())
    }
}

impl From<String> for Prompt {
    fn from(s: String) -> Self {
        Prompt::Text(s)
    }
}

impl From<Vec<u32>> for Prompt {
    fn from(t: Vec<u32>) -> Self {
        Prompt::Tokens(t)
    }
}

/// `POST /v1/completions`. `stream` is set by the method called.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CompletionRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// Any other field, sent as is.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CompletionRequest {
    pub fn new(prompt: impl Into<Prompt>) -> Self {
        CompletionRequest {
            prompt: prompt.into(),
            ..Self::default()
        }
    }
}

/// One chat message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// `POST /v1/chat/completions`. `stream` is set by the method called.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChatRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub messages: Vec<Message>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    pub fn new(messages: Vec<Message>) -> Self {
        ChatRequest {
            messages,
            ..Self::default()
        }
    }
}

/// Token counts as the server bills them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct CompletionChoice {
    #[serde(default)]
    pub index: usize,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// A whole `/v1/completions` answer.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Completion {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub choices: Vec<CompletionChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ChatChoice {
    #[serde(default)]
    pub index: usize,
    #[serde(default)]
    pub message: Message,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// A whole `/v1/chat/completions` answer.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ChatCompletion {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub choices: Vec<ChatChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// The incremental part of a chat stream chunk.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Delta {
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub content: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamChoice {
    #[serde(default)]
    pub index: usize,
    /// Completions streams.
    #[serde(default)]
    pub text: Option<String>,
    /// Chat streams.
    #[serde(default)]
    pub delta: Option<Delta>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

impl StreamChoice {
    /// The new text of this choice (`text` or `delta.content`), empty if none.
    pub fn text(&self) -> &str {
        self.text
            .as_deref()
            .or_else(|| self.delta.as_ref().and_then(|d| d.content.as_deref()))
            .unwrap_or("")
    }
}

/// One `data:` event of a stream (completions or chat).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamChunk {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<StreamChoice>,
    /// Only in the last chunk, when `stream_options.include_usage` was asked.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// One entry of `GET /v1/models`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    #[serde(default)]
    pub created: Option<u64>,
    #[serde(default)]
    pub owned_by: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ModelList {
    #[serde(default)]
    pub data: Vec<ModelInfo>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Tokens {
    pub tokens: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_send_only_what_is_set() {
        let mut r = CompletionRequest::new(vec![1, 2, 3]);
        r.max_tokens = Some(4);
        r.extra.insert("ignore_eos".into(), Value::Bool(true));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"prompt": [1, 2, 3], "max_tokens": 4, "ignore_eos": true})
        );
        let c = ChatRequest::new(vec![Message::new("user", "hi")]);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"messages": [{"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn stream_chunks_of_both_kinds_give_their_text() {
        let c: StreamChunk =
            serde_json::from_str(r#"{"choices":[{"index":0,"text":"a","finish_reason":null}]}"#)
                .unwrap();
        assert_eq!(c.choices[0].text(), "a");
        let c: StreamChunk =
            serde_json::from_str(r#"{"choices":[{"index":0,"delta":{"content":"b"}}]}"#).unwrap();
        assert_eq!(c.choices[0].text(), "b");
        let c: StreamChunk = serde_json::from_str(
            r#"{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#,
        )
        .unwrap();
        assert_eq!(c.usage.unwrap().completion_tokens, 3);
    }
}
