//! Request bodies of the OpenAI-compatible API, parsed and checked against the [`Limits`].
//!
//! Parsing goes through `serde_json::Value` and typed getters rather than derived structs so
//! that every error names the field at fault (`param`), wrong types are rejected and unknown
//! fields are ignored, as OpenAI's own API does.

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::config::Limits;

/// Largest `logprobs` (completions) and `top_logprobs` (chat), as OpenAI allows.
pub const TOP_LOGPROBS_MAX: usize = 20;

/// Sampling fields, with OpenAI's defaults where the request is silent.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    /// 0 = off (extension).
    pub top_k: usize,
    /// 0 = off (extension).
    pub min_p: f32,
    /// 1 = off (extension).
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// `None`: the server draws one.
    pub seed: Option<u64>,
    /// (token id, bias) in the order given.
    pub logit_bias: Vec<(u32, f32)>,
}

/// What completions and chat completions share.
#[derive(Debug, Clone, PartialEq)]
pub struct Common {
    pub model: Option<String>,
    /// `None`: the server's default.
    pub max_tokens: Option<usize>,
    pub n: usize,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub user: Option<String>,
    pub sampling: Sampling,
    /// Keep generating past end-of-generation tokens until `max_tokens` (extension, as in
    /// llama-server and vLLM; benchmarks use it to fix the output length).
    pub ignore_eos: bool,
}

/// One prompt of `/v1/completions`.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub common: Common,
    /// One or more prompts; choices come back prompt by prompt, `n` each.
    pub prompts: Vec<Prompt>,
    /// Top log-probs per token (0 = only the chosen token's); `None` = no log-probs.
    pub logprobs: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub common: Common,
    pub messages: Vec<ChatMessage>,
    pub logprobs: bool,
    pub top_logprobs: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: String,
    pub add_special_tokens: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

/// Typed access to a JSON object's fields; `null` counts as absent.
pub struct Fields {
    obj: Map<String, Value>,
}

impl Fields {
    /// Parses a request body that must be a JSON object.
    pub fn parse(body: &[u8]) -> Result<Fields, ApiError> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(obj)) => Ok(Fields { obj }),
            Ok(_) => Err(ApiError::bad_json("the request body must be a JSON object")),
            Err(e) => Err(ApiError::bad_json(format!(
                "the request body is not valid JSON: {e}"
            ))),
        }
    }

    fn get(&self, k: &str) -> Option<&Value> {
        self.obj.get(k).filter(|v| !v.is_null())
    }

    fn f32(&self, k: &str) -> Result<Option<f32>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| ApiError::wrong_type(k, "a number")),
        }
    }

    fn f32_in(&self, k: &str, lo: f32, hi: f32) -> Result<Option<f32>, ApiError> {
        match self.f32(k)? {
            Some(x) if !(lo..=hi).contains(&x) => Err(ApiError::invalid(
                k,
                format!("'{k}' is {x}; it must be between {lo} and {hi}"),
            )),
            x => Ok(x),
        }
    }

    fn uint(&self, k: &str) -> Result<Option<u64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| ApiError::wrong_type(k, "a non-negative integer")),
        }
    }

    /// A non-negative integer at most `max` (named `what` in the message).
    fn uint_max(&self, k: &str, max: usize, what: &str) -> Result<Option<usize>, ApiError> {
        match self.uint(k)? {
            Some(x) if x > max as u64 => Err(ApiError::invalid(
                k,
                format!("'{k}' is {x}; {what} is {max}"),
            )),
            x => Ok(x.map(|x| x as usize)),
        }
    }

    fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| ApiError::wrong_type(k, "a boolean")),
        }
    }

    fn string(&self, k: &str) -> Result<Option<String>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::wrong_type(k, "a string")),
        }
    }

    fn sampling(&self, limits: &Limits) -> Result<Sampling, ApiError> {
        let top_k = match self.get("top_k") {
            None => 0,
            // -1 means "off" in vLLM and llama.cpp.
            Some(v) if v.as_i64() == Some(-1) => 0,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| ApiError::wrong_type("top_k", "a non-negative integer or -1"))?
                as usize,
        };
        let seed = match self.get("seed") {
            None => None,
            // OpenAI takes any 64-bit integer; negative seeds keep their bits.
            Some(v) => Some(
                v.as_u64()
                    .or_else(|| v.as_i64().map(|x| x as u64))
                    .ok_or_else(|| ApiError::wrong_type("seed", "an integer"))?,
            ),
        };
        let repetition_penalty = self.f32_in("repetition_penalty", 0.0, 10.0)?.unwrap_or(1.0);
        if repetition_penalty <= 0.0 {
            return Err(ApiError::invalid(
                "repetition_penalty",
                "'repetition_penalty' must be above 0",
            ));
        }
        let top_p = self.f32_in("top_p", 0.0, 1.0)?.unwrap_or(1.0);
        if top_p <= 0.0 {
            return Err(ApiError::invalid("top_p", "'top_p' must be above 0"));
        }
        Ok(Sampling {
            temperature: self.f32_in("temperature", 0.0, 2.0)?.unwrap_or(1.0),
            top_p,
            top_k,
            min_p: self.f32_in("min_p", 0.0, 1.0)?.unwrap_or(0.0),
            repetition_penalty,
            presence_penalty: self.f32_in("presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
            frequency_penalty: self.f32_in("frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
            seed,
            logit_bias: self.logit_bias(limits.logit_bias_max)?,
        })
    }

    fn logit_bias(&self, max: usize) -> Result<Vec<(u32, f32)>, ApiError> {
        let k = "logit_bias";
        let Some(v) = self.get(k) else {
            return Ok(Vec::new());
        };
        let map = v
            .as_object()
            .ok_or_else(|| ApiError::wrong_type(k, "an object of token id to bias"))?;
        if map.len() > max {
            return Err(ApiError::invalid(
                k,
                format!(
                    "{} logit_bias entries; at most {max} are allowed",
                    map.len()
                ),
            ));
        }
        let mut out = Vec::with_capacity(map.len());
        for (id, bias) in map {
            let id: u32 = id.parse().map_err(|_| {
                ApiError::invalid(k, format!("logit_bias key '{id}' is not a token id"))
            })?;
            let bias = bias
                .as_f64()
                .ok_or_else(|| ApiError::wrong_type(k, "an object of token id to number"))?;
            if !(-100.0..=100.0).contains(&bias) {
                return Err(ApiError::invalid(
                    k,
                    format!("logit_bias for token {id} is {bias}; it must be between -100 and 100"),
                ));
            }
            out.push((id, bias as f32));
        }
        Ok(out)
    }

    fn stop(&self, limits: &Limits) -> Result<Vec<String>, ApiError> {
        let k = "stop";
        let stops = match self.get(k) {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::wrong_type(k, "a string or an array of strings"))?,
            Some(_) => return Err(ApiError::wrong_type(k, "a string or an array of strings")),
        };
        if stops.len() > limits.stop_max {
            return Err(ApiError::invalid(
                k,
                format!(
                    "{} stop strings; at most {} are allowed",
                    stops.len(),
                    limits.stop_max
                ),
            ));
        }
        for s in &stops {
            if s.is_empty() || s.len() > limits.stop_bytes_max {
                return Err(ApiError::invalid(
                    k,
                    format!(
                        "stop strings must be 1 to {} bytes long",
                        limits.stop_bytes_max
                    ),
                ));
            }
        }
        Ok(stops)
    }

    /// The fields both generation endpoints share. `max_tokens_keys` in order of preference.
    fn common(&self, limits: &Limits, max_tokens_keys: &[&str]) -> Result<Common, ApiError> {
        let mut max_tokens = None;
        for k in max_tokens_keys {
            if let Some(m) = self.uint_max(k, limits.max_tokens_cap, "the server's cap")? {
                if m == 0 {
                    return Err(ApiError::invalid(k, format!("'{k}' must be at least 1")));
                }
                max_tokens = max_tokens.or(Some(m));
            }
        }
        let n = self
            .uint_max("n", limits.n_max, "the server's cap")?
            .unwrap_or(1);
        if n == 0 {
            return Err(ApiError::invalid("n", "'n' must be at least 1"));
        }
        let include_usage = match self.get("stream_options") {
            None => false,
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::wrong_type(
                        "stream_options.include_usage",
                        "a boolean",
                    ))
                }
            },
            Some(_) => return Err(ApiError::wrong_type("stream_options", "an object")),
        };
        Ok(Common {
            model: self.string("model")?,
            max_tokens,
            n,
            stop: self.stop(limits)?,
            stream: self.bool("stream")?.unwrap_or(false),
            include_usage,
            user: self.string("user")?,
            sampling: self.sampling(limits)?,
            ignore_eos: self.bool("ignore_eos")?.unwrap_or(false),
        })
    }
}

/// Checks `prompts × n` against the per-request cap.
fn check_choices(n_prompts: usize, n: usize, limits: &Limits) -> Result<(), ApiError> {
    if n_prompts * n > limits.choices_max {
        return Err(ApiError::invalid(
            "n",
            format!(
                "{n_prompts} prompts × n = {n} ask for {} sequences; at most {} are allowed",
                n_prompts * n,
                limits.choices_max
            ),
        ));
    }
    Ok(())
}

impl CompletionRequest {
    pub fn parse(body: &[u8], limits: &Limits) -> Result<CompletionRequest, ApiError> {
        let f = Fields::parse(body)?;
        let prompts = parse_prompts(f.get("prompt"))?;
        if f.bool("echo")?.unwrap_or(false) {
            return Err(ApiError::invalid("echo", "'echo' is not supported"));
        }
        let common = f.common(limits, &["max_tokens"])?;
        check_choices(prompts.len(), common.n, limits)?;
        Ok(CompletionRequest {
            prompts,
            logprobs: f.uint_max("logprobs", TOP_LOGPROBS_MAX, "the most allowed")?,
            common,
        })
    }
}

/// `prompt`: a string, an array of strings, an array of token ids or an array of arrays of
/// token ids.
fn parse_prompts(v: Option<&Value>) -> Result<Vec<Prompt>, ApiError> {
    let k = "prompt";
    let expected = "a string, an array of strings, an array of token ids or an array of them";
    let tokens = |a: &[Value]| -> Option<Vec<u32>> {
        a.iter()
            .map(|t| t.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect()
    };
    let prompts = match v {
        None => return Err(ApiError::missing(k)),
        Some(Value::String(s)) => vec![Prompt::Text(s.clone())],
        Some(Value::Array(a)) if a.is_empty() => Vec::new(),
        Some(Value::Array(a)) if a[0].is_number() => {
            vec![Prompt::Tokens(
                tokens(a).ok_or_else(|| ApiError::wrong_type(k, expected))?,
            )]
        }
        Some(Value::Array(a)) => a
            .iter()
            .map(|p| match p {
                Value::String(s) => Some(Prompt::Text(s.clone())),
                Value::Array(t) => tokens(t).map(Prompt::Tokens),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::wrong_type(k, expected))?,
        Some(_) => return Err(ApiError::wrong_type(k, expected)),
    };
    let empty = |p: &Prompt| match p {
        Prompt::Text(s) => s.is_empty(),
        Prompt::Tokens(t) => t.is_empty(),
    };
    if prompts.is_empty() || prompts.iter().any(empty) {
        return Err(ApiError::invalid(k, "the prompt is empty"));
    }
    Ok(prompts)
}

impl ChatRequest {
    pub fn parse(body: &[u8], limits: &Limits) -> Result<ChatRequest, ApiError> {
        let f = Fields::parse(body)?;
        let messages = parse_messages(f.get("messages"))?;
        let common = f.common(limits, &["max_completion_tokens", "max_tokens"])?;
        check_choices(1, common.n, limits)?;
        let logprobs = f.bool("logprobs")?.unwrap_or(false);
        let top_logprobs = f
            .uint_max("top_logprobs", TOP_LOGPROBS_MAX, "the most allowed")?
            .unwrap_or(0);
        if top_logprobs > 0 && !logprobs {
            return Err(ApiError::invalid(
                "top_logprobs",
                "'top_logprobs' needs 'logprobs' set to true",
            ));
        }
        Ok(ChatRequest {
            common,
            messages,
            logprobs,
            top_logprobs,
        })
    }
}

/// `messages`: objects with a `role` and a `content` that is a string or an array of
/// `{"type": "text", "text": ...}` parts (joined with newlines).
fn parse_messages(v: Option<&Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let k = "messages";
    let arr = match v {
        None => return Err(ApiError::missing(k)),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::wrong_type(k, "an array of messages")),
    };
    if arr.is_empty() {
        return Err(ApiError::invalid(k, "'messages' is empty"));
    }
    arr.iter()
        .enumerate()
        .map(|(i, m)| {
            let param = format!("messages[{i}]");
            let m = m
                .as_object()
                .ok_or_else(|| ApiError::wrong_type(&param, "an object"))?;
            let role = match m.get("role") {
                Some(Value::String(r)) => r.clone(),
                _ => return Err(ApiError::wrong_type(&format!("{param}.role"), "a string")),
            };
            let content = message_content(m.get("content"), &format!("{param}.content"))?;
            Ok(ChatMessage { role, content })
        })
        .collect()
}

fn message_content(v: Option<&Value>, param: &str) -> Result<String, ApiError> {
    let expected = "a string or an array of text parts";
    match v {
        // Assistant messages with tool calls may carry no content.
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for p in parts {
                let ty = p.get("type").and_then(Value::as_str);
                let text = p.get("text").and_then(Value::as_str);
                match (ty, text) {
                    (Some("text"), Some(t)) => texts.push(t),
                    (Some("text"), None) => return Err(ApiError::wrong_type(param, expected)),
                    (Some(other), _) => {
                        return Err(ApiError::invalid(
                            param,
                            format!("content parts of type '{other}' are not supported"),
                        ))
                    }
                    (None, _) => return Err(ApiError::wrong_type(param, expected)),
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err(ApiError::wrong_type(param, expected)),
    }
}

impl TokenizeRequest {
    pub fn parse(body: &[u8]) -> Result<TokenizeRequest, ApiError> {
        let f = Fields::parse(body)?;
        Ok(TokenizeRequest {
            model: f.string("model")?,
            prompt: f
                .string("prompt")?
                .ok_or_else(|| ApiError::missing("prompt"))?,
            add_special_tokens: f.bool("add_special_tokens")?.unwrap_or(true),
        })
    }
}

impl DetokenizeRequest {
    pub fn parse(body: &[u8]) -> Result<DetokenizeRequest, ApiError> {
        let f = Fields::parse(body)?;
        let k = "tokens";
        let tokens = match f.get(k) {
            None => return Err(ApiError::missing(k)),
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| t.as_u64().and_then(|x| u32::try_from(x).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| ApiError::wrong_type(k, "an array of token ids"))?,
            Some(_) => return Err(ApiError::wrong_type(k, "an array of token ids")),
        };
        Ok(DetokenizeRequest {
            model: f.string("model")?,
            tokens,
        })
    }
}

/// A request body parsed and checked against the limits, by route.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedBody {
    Completion(CompletionRequest),
    Chat(ChatRequest),
    Tokenize(TokenizeRequest),
    Detokenize(DetokenizeRequest),
}

/// The routes whose JSON body [`parse_and_validate`] reads.
pub const BODY_ROUTES: [&str; 4] = [
    "/v1/completions",
    "/v1/chat/completions",
    "/tokenize",
    "/detokenize",
];

/// Parses the body of a request to `route` and checks it against `limits`: everything the
/// server checks before it looks at a model (which then checks token ids against its
/// vocabulary and the prompt's length against its context). The server calls this for every
/// body it reads; the fuzz target `request` calls it on arbitrary bytes. A route that takes no
/// body is a 404.
pub fn parse_and_validate(
    route: &str,
    body: &[u8],
    limits: &Limits,
) -> Result<ParsedBody, ApiError> {
    match route {
        "/v1/completions" => CompletionRequest::parse(body, limits).map(ParsedBody::Completion),
        "/v1/chat/completions" => ChatRequest::parse(body, limits).map(ParsedBody::Chat),
        "/tokenize" => TokenizeRequest::parse(body).map(ParsedBody::Tokenize),
        "/detokenize" => DetokenizeRequest::parse(body).map(ParsedBody::Detokenize),
        _ => Err(ApiError::not_found(route)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(body: &str) -> Result<CompletionRequest, ApiError> {
        CompletionRequest::parse(body.as_bytes(), &Limits::default())
    }

    #[test]
    fn prompts_in_every_shape() {
        let p = |b: &str| completion(b).expect("valid").prompts;
        assert_eq!(p(r#"{"prompt":"hi"}"#), vec![Prompt::Text("hi".into())]);
        assert_eq!(p(r#"{"prompt":[1,2]}"#), vec![Prompt::Tokens(vec![1, 2])]);
        assert_eq!(
            p(r#"{"prompt":["a",[3]]}"#),
            vec![Prompt::Text("a".into()), Prompt::Tokens(vec![3])]
        );
        for bad in [r#"{"prompt":""}"#, r#"{"prompt":[]}"#, r#"{"prompt":[[]]}"#] {
            assert_eq!(
                completion(bad).unwrap_err().param.as_deref(),
                Some("prompt")
            );
        }
        let e = completion(r#"{"prompt":[1,-2]}"#).unwrap_err();
        assert_eq!((e.status, e.code), (400, Some("invalid_type")));
    }

    #[test]
    fn wrong_types_name_the_param_and_unknown_fields_pass() {
        for (body, param) in [
            (r#"{"prompt":"x","temperature":"hot"}"#, "temperature"),
            (r#"{"prompt":"x","max_tokens":1.5}"#, "max_tokens"),
            (r#"{"prompt":"x","stream":1}"#, "stream"),
            (r#"{"prompt":"x","stop":[1]}"#, "stop"),
            (r#"{"prompt":"x","logit_bias":{"a":1}}"#, "logit_bias"),
            (r#"{"prompt":"x","n":0}"#, "n"),
            (r#"{"prompt":"x","max_tokens":100000}"#, "max_tokens"),
            (r#"{"prompt":"x","top_p":0}"#, "top_p"),
        ] {
            let e = completion(body).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{body}");
        }
        let r = completion(r#"{"prompt":"x","frobnicate":{"a":[1]},"seed":-1,"top_k":-1}"#)
            .expect("unknown fields are ignored");
        assert_eq!(r.common.sampling.seed, Some(u64::MAX));
        assert_eq!(r.common.sampling.top_k, 0);
        assert!(!r.common.ignore_eos);
        assert!(
            completion(r#"{"prompt":"x","ignore_eos":true}"#)
                .unwrap()
                .common
                .ignore_eos
        );
        let e = completion(r#"{"prompt":"x","ignore_eos":"yes"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("ignore_eos"));
        let e = completion("{not json").unwrap_err();
        assert_eq!((e.status, e.code), (400, Some("invalid_json")));
    }

    #[test]
    fn chat_messages_and_token_fields() {
        let r = ChatRequest::parse(
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "max_completion_tokens":5,"max_tokens":9,"logprobs":true,"top_logprobs":2}"#,
            &Limits::default(),
        )
        .expect("valid");
        assert_eq!(r.messages[0].content, "a\nb");
        assert_eq!(r.common.max_tokens, Some(5), "max_completion_tokens wins");
        assert_eq!(r.top_logprobs, 2);
        let e = ChatRequest::parse(
            br#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        let e = ChatRequest::parse(br#"{"messages":[]}"#, &Limits::default()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
    }
}
