//! Chat templates: turning a list of messages into the prompt text (and token ids) a model was
//! trained on.
//!
//! [`ChatTemplate`] holds one compiled Jinja template in a MiniJinja environment set up the way
//! Hugging Face renders chat templates (`trim_blocks`, `lstrip_blocks`, Python string and dict
//! methods through minijinja-contrib's `pycompat`, `raise_exception`, `strftime_now`). The
//! template comes from, in order: an override given by the caller, the model's
//! `tokenizer.chat_template`, or a built-in format chosen from the architecture
//! ([`BuiltinFormat`]); the fallback is logged.
//!
//! BOS is handled as llama.cpp's server does: when the vocabulary adds BOS itself, a leading
//! `bos_token` written by the template is cut from the rendered text, so the prompt holds exactly
//! one BOS (and a trailing `eos_token` is cut likewise when the vocabulary adds EOS).
//!
//! Rendering is bounded: the template source, the output text and the number of template
//! instructions (MiniJinja's fuel) all have limits, so a hostile override cannot loop forever or
//! print without end. Not bounded: strings built *inside* a template (MiniJinja caps `s * n` at
//! 100 MB but not repeated `~` concatenation), so a template is trusted as much as the model file
//! or the operator's flag it comes from — never take one from a request.
//!
//! **Boundary:** this module knows messages as plain text; flattening OpenAI content-part arrays
//! is the server's job, and it never sees model weights.

use std::fmt::Write as _;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};

use super::tokenizer::Tokenizer;
use crate::gguf::{GgufError, GgufFile};

/// Longest template source accepted, in bytes (real templates are at most a few tens of KiB).
pub const TEMPLATE_BYTES_MAX: usize = 1 << 20;
/// Longest rendered prompt, in bytes: far above any context we serve, low enough that a runaway
/// template stops long before it hurts.
pub const RENDER_BYTES_MAX: usize = 1 << 20;
/// Template instructions one render may execute (MiniJinja fuel). Real templates use a few
/// hundred per message; this allows thousands of messages and stops a runaway loop in about
/// half a second.
pub const RENDER_FUEL: u64 = 5_000_000;
/// Most messages in one conversation.
pub const MESSAGES_MAX: usize = 4096;
/// Longest role name, in bytes ("assistant", "developer", "ipython", ...).
pub const ROLE_BYTES_MAX: usize = 64;
/// Longest `strftime_now` format string, in bytes.
const STRFTIME_FORMAT_BYTES_MAX: usize = 256;

/// The metadata key holding a model's Jinja chat template.
pub const GGUF_TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// One chat message: a role ("system", "user", "assistant", ...) and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat format built into the server, used when a model carries no template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltinFormat {
    /// Gemma turns: `<start_of_turn>user\n…<end_of_turn>\n`, "assistant" written "model", a
    /// system message prefixed to the first user turn.
    Gemma,
    /// ChatML: `<|im_start|>role\n…<|im_end|>\n` (Qwen; llama.cpp's default).
    ChatMl,
    /// Llama 3 headers: `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>`.
    Llama3,
}

impl BuiltinFormat {
    pub fn name(self) -> &'static str {
        match self {
            BuiltinFormat::Gemma => "gemma",
            BuiltinFormat::ChatMl => "chatml",
            BuiltinFormat::Llama3 => "llama3",
        }
    }

    /// The format for a model without a template: Gemma turns for Gemma architectures, Llama 3
    /// headers for `llama` models with the Llama 3 vocabulary (`tokenizer.ggml.pre` =
    /// "llama-bpe"), and ChatML for everything else (Qwen, and the default llama.cpp falls back
    /// to).
    pub fn for_model(architecture: &str, tokenizer_pre: Option<&str>) -> BuiltinFormat {
        if architecture.starts_with("gemma") {
            BuiltinFormat::Gemma
        } else if architecture == "llama" && tokenizer_pre == Some("llama-bpe") {
            BuiltinFormat::Llama3
        } else {
            BuiltinFormat::ChatMl
        }
    }

    /// The Jinja source of the format. Each writes `bos_token` first where the model's own
    /// template does, so BOS handling is the same as for a real template.
    pub fn source(self) -> &'static str {
        match self {
            // The official Gemma 3 template's format, without its role-alternation check (as
            // llama.cpp's built-in, a fallback should not refuse a conversation).
            BuiltinFormat::Gemma => concat!(
                "{{ bos_token }}",
                "{%- if messages and messages[0].role == 'system' -%}",
                "{%- set first_user_prefix = messages[0].content + '\\n\\n' -%}",
                "{%- set loop_messages = messages[1:] -%}",
                "{%- else -%}",
                "{%- set first_user_prefix = '' -%}",
                "{%- set loop_messages = messages -%}",
                "{%- endif -%}",
                "{%- for message in loop_messages -%}",
                "{%- set role = 'model' if message.role == 'assistant' else message.role -%}",
                "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}",
                "{{- message.content | trim }}{{ '<end_of_turn>\\n' }}",
                "{%- endfor -%}",
                "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}",
            ),
            BuiltinFormat::ChatMl => concat!(
                "{%- for message in messages -%}",
                "{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}",
                "{%- endfor -%}",
                "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}",
            ),
            // Meta's Llama 3 template.
            BuiltinFormat::Llama3 => concat!(
                "{{ bos_token }}",
                "{%- for message in messages -%}",
                "{{ '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' }}",
                "{{- message.content | trim }}{{ '<|eot_id|>' }}",
                "{%- endfor -%}",
                "{%- if add_generation_prompt -%}",
                "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}",
                "{%- endif -%}",
            ),
        }
    }
}

/// Where a [`ChatTemplate`]'s source came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    /// The model file's `tokenizer.chat_template`.
    Gguf,
    /// A template the caller supplied (a `--chat-template` file).
    Override,
    /// A built-in format: the model has no template.
    Builtin(BuiltinFormat),
}

impl TemplateSource {
    /// The name the template has in error messages.
    fn template_name(self) -> &'static str {
        match self {
            TemplateSource::Gguf => GGUF_TEMPLATE_KEY,
            TemplateSource::Override => "override",
            TemplateSource::Builtin(BuiltinFormat::Gemma) => "builtin-gemma",
            TemplateSource::Builtin(BuiltinFormat::ChatMl) => "builtin-chatml",
            TemplateSource::Builtin(BuiltinFormat::Llama3) => "builtin-llama3",
        }
    }
}

impl std::fmt::Display for TemplateSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateSource::Gguf => write!(f, "the model's {GGUF_TEMPLATE_KEY}"),
            TemplateSource::Override => write!(f, "the override template"),
            TemplateSource::Builtin(b) => write!(f, "the built-in {} format", b.name()),
        }
    }
}

/// Errors building or rendering a chat template. Messages are one line.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("chat template: {0}")]
    Gguf(#[from] GgufError),
    #[error("{origin} is {bytes} bytes, over the limit of {bytes_max}")]
    TemplateTooLarge {
        origin: TemplateSource,
        bytes: usize,
        bytes_max: usize,
    },
    #[error("{origin} does not compile: {detail}")]
    Compile {
        origin: TemplateSource,
        detail: String,
    },
    /// The template called `raise_exception(message)`.
    #[error("chat template error: {0}")]
    Raised(String),
    #[error("chat template failed to render: {0}")]
    Render(String),
    #[error("chat template ran over {fuel_max} instructions")]
    OutOfFuel { fuel_max: u64 },
    #[error("rendered chat prompt is over the limit of {bytes_max} bytes")]
    OutputTooLarge { bytes_max: usize },
    #[error("{count} messages, over the limit of {count_max}")]
    TooManyMessages { count: usize, count_max: usize },
    #[error("message {index}: {why}")]
    InvalidMessage { index: usize, why: String },
}

/// A compiled chat template, rendered many times. Cheap to share across threads.
pub struct ChatTemplate {
    /// Holds exactly one template, named after its source.
    env: Environment<'static>,
    source: TemplateSource,
    bos_token: String,
    eos_token: String,
    /// The vocabulary adds BOS / EOS itself: cut them from the rendered text.
    add_bos: bool,
    add_eos: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// The special-token texts and BOS/EOS policy a template is rendered with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos_token: String,
    pub eos_token: String,
    /// The tokenizer adds BOS when encoding (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// The tokenizer adds EOS when encoding.
    pub add_eos: bool,
}

impl SpecialTokens {
    pub fn from_tokenizer(tok: &Tokenizer) -> SpecialTokens {
        let text = |id: Option<u32>| {
            id.and_then(|id| tok.token_text(id))
                .unwrap_or_default()
                .to_string()
        };
        SpecialTokens {
            bos_token: text(tok.bos_id()),
            eos_token: text(tok.eos_id()),
            add_bos: tok.add_bos(),
            add_eos: tok.add_eos(),
        }
    }
}

impl ChatTemplate {
    /// The template for a model: `override_source` if given, else the file's
    /// `tokenizer.chat_template`, else the built-in format for its architecture (logged).
    pub fn from_gguf(
        file: &GgufFile,
        tokenizer: &Tokenizer,
        override_source: Option<&str>,
    ) -> Result<ChatTemplate, ChatError> {
        let special = SpecialTokens::from_tokenizer(tokenizer);
        if let Some(text) = override_source {
            return ChatTemplate::new(text, TemplateSource::Override, special);
        }
        let md = file.metadata();
        if let Some(text) = md.get_str(GGUF_TEMPLATE_KEY)? {
            return ChatTemplate::new(text, TemplateSource::Gguf, special);
        }
        let arch = md.get_str("general.architecture")?.unwrap_or_default();
        let pre = md.get_str("tokenizer.ggml.pre")?;
        let format = BuiltinFormat::for_model(arch, pre);
        tracing::info!(
            model = %file.path().display(),
            architecture = arch,
            "model has no chat template; using the built-in {} format",
            format.name()
        );
        ChatTemplate::builtin(format, special)
    }

    /// A built-in format.
    pub fn builtin(
        format: BuiltinFormat,
        special: SpecialTokens,
    ) -> Result<ChatTemplate, ChatError> {
        ChatTemplate::new(format.source(), TemplateSource::Builtin(format), special)
    }

    /// Compiles `text` (a Jinja chat template) once.
    pub fn new(
        text: &str,
        source: TemplateSource,
        special: SpecialTokens,
    ) -> Result<ChatTemplate, ChatError> {
        if text.len() > TEMPLATE_BYTES_MAX {
            return Err(ChatError::TemplateTooLarge {
                origin: source,
                bytes: text.len(),
                bytes_max: TEMPLATE_BYTES_MAX,
            });
        }
        let mut env = Environment::new();
        // As Hugging Face's `apply_chat_template` sets up Jinja.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(RENDER_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(source.template_name(), text.to_string())
            .map_err(|e| ChatError::Compile {
                origin: source,
                detail: one_line(&e),
            })?;
        Ok(ChatTemplate {
            env,
            source,
            bos_token: special.bos_token,
            eos_token: special.eos_token,
            add_bos: special.add_bos,
            add_eos: special.add_eos,
        })
    }

    /// Where the template came from.
    pub fn source(&self) -> TemplateSource {
        self.source
    }

    /// The prompt text for `messages`; with `add_generation_prompt` it ends where the assistant's
    /// reply begins. A leading BOS (trailing EOS) text is cut when the tokenizer adds it itself.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        validate(messages)?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_iter([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let ctx = minijinja::context! {
            messages => messages,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            add_generation_prompt => add_generation_prompt,
        };
        let tmpl = self
            .env
            .get_template(self.source.template_name())
            .map_err(|e| ChatError::Render(one_line(&e)))?;
        let mut out = CappedWriter {
            buf: Vec::new(),
            bytes_max: RENDER_BYTES_MAX,
            overflowed: false,
        };
        let result = tmpl.render_captured_to(ctx, &mut out).map(drop);
        if out.overflowed {
            return Err(ChatError::OutputTooLarge {
                bytes_max: RENDER_BYTES_MAX,
            });
        }
        result.map_err(render_error)?;
        // Only whole `&str` pieces were written, so this cannot fail; still, no panic on it.
        let mut text = String::from_utf8(out.buf)
            .map_err(|_| ChatError::Render("output is not UTF-8".to_string()))?;
        if self.add_bos && !self.bos_token.is_empty() && text.starts_with(&self.bos_token) {
            text.drain(..self.bos_token.len());
        }
        if self.add_eos && !self.eos_token.is_empty() && text.ends_with(&self.eos_token) {
            text.truncate(text.len() - self.eos_token.len());
        }
        Ok(text)
    }

    /// The prompt token ids for `messages`: [`ChatTemplate::render`], then tokenized with special
    /// tokens parsed and BOS added as the vocabulary asks — exactly one BOS at the start.
    pub fn render_tokens(
        &self,
        tok: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, ChatError> {
        let text = self.render(messages, add_generation_prompt)?;
        let mut ids = tok.encode(&text, true, true);
        // A template that writes BOS where `render` does not cut it (e.g. twice) must not give
        // the model two: llama.cpp only warns, but a doubled BOS degrades output.
        if let (Some(bos), true) = (tok.bos_id(), tok.add_bos()) {
            while ids.len() >= 2 && ids[0] == bos && ids[1] == bos {
                ids.remove(0);
            }
        }
        Ok(ids)
    }
}

fn validate(messages: &[ChatMessage]) -> Result<(), ChatError> {
    if messages.len() > MESSAGES_MAX {
        return Err(ChatError::TooManyMessages {
            count: messages.len(),
            count_max: MESSAGES_MAX,
        });
    }
    for (index, m) in messages.iter().enumerate() {
        let why = if m.role.is_empty() {
            "the role is empty".to_string()
        } else if m.role.len() > ROLE_BYTES_MAX {
            format!(
                "the role is {} bytes, over the limit of {ROLE_BYTES_MAX}",
                m.role.len()
            )
        } else {
            continue;
        };
        return Err(ChatError::InvalidMessage { index, why });
    }
    Ok(())
}

/// Collects the rendered text, refusing to grow past `bytes_max`.
struct CappedWriter {
    buf: Vec<u8>,
    bytes_max: usize,
    overflowed: bool,
}

impl io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.bytes_max {
            self.overflowed = true;
            return Err(io::Error::other("rendered prompt too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The message a template passed to `raise_exception`, carried as the error's source.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

fn raise_exception(message: String) -> Result<Value, JinjaError> {
    Err(
        JinjaError::new(ErrorKind::InvalidOperation, "raise_exception called")
            .with_source(RaisedException(message)),
    )
}

fn render_error(e: JinjaError) -> ChatError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<RaisedException>() {
            return ChatError::Raised(r.0.clone());
        }
        cause = c.source();
    }
    match e.kind() {
        ErrorKind::OutOfFuel => ChatError::OutOfFuel {
            fuel_max: RENDER_FUEL,
        },
        _ => ChatError::Render(one_line(&e)),
    }
}

/// A MiniJinja error as one line: its description and location, never the source excerpt that
/// its alternate form prints.
fn one_line(e: &JinjaError) -> String {
    let mut s = e.to_string();
    if s.contains('\n') {
        s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    s
}

/// `strftime_now(format)`: the current UTC time, formatted with the common C `strftime`
/// conversions (Llama 3.x templates print today's date with `"%d %b %Y"`).
fn strftime_now(format: String) -> Result<String, JinjaError> {
    if format.len() > STRFTIME_FORMAT_BYTES_MAX {
        return Err(JinjaError::new(
            ErrorKind::InvalidOperation,
            "strftime_now: format string too long",
        ));
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(strftime_utc(&format, secs))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Formats `unix_secs` (UTC). Unknown conversions are written as they are.
pub fn strftime_utc(format: &str, unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = ((days + 3) % 7) as usize;
    let month_name = MONTHS[(month - 1) as usize];
    let day_name = WEEKDAYS[weekday];
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // `write!` into a String cannot fail.
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year % 100),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('e') => write!(out, "{day:2}"),
            Some('H') => write!(out, "{hour:02}"),
            Some('I') => write!(out, "{:02}", (hour + 11) % 12 + 1),
            Some('p') => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            Some('M') => write!(out, "{minute:02}"),
            Some('S') => write!(out, "{second:02}"),
            Some('B') => write!(out, "{month_name}"),
            Some('b') | Some('h') => write!(out, "{}", &month_name[..3]),
            Some('A') => write!(out, "{day_name}"),
            Some('a') => write!(out, "{}", &day_name[..3]),
            Some('j') => write!(out, "{:03}", day_of_year(year, month, day)),
            Some('F') => write!(out, "{year}-{month:02}-{day:02}"),
            Some('T') => write!(out, "{hour:02}:{minute:02}:{second:02}"),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn day_of_year(year: u64, month: u64, day: u64) -> u64 {
    const CUMULATIVE: [u64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    CUMULATIVE[(month - 1) as usize] + day + u64::from(leap && month > 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime_utc("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(strftime_utc("%A %B %e, %y", t), "Thursday February 29, 24");
        assert_eq!(
            strftime_utc("%F %T %j %I%p %%", t),
            "2024-02-29 13:05:09 060 01PM %"
        );
        assert_eq!(strftime_utc("%Q", t), "%Q");
        assert_eq!(strftime_utc("%d %b %Y", 0), "01 Jan 1970");
        // 2000-12-31 (leap year, day 366), a Sunday.
        assert_eq!(strftime_utc("%j %a", 978_220_800), "366 Sun");
    }

    #[test]
    fn builtin_choice_follows_architecture() {
        assert_eq!(
            BuiltinFormat::for_model("gemma3", Some("default")),
            BuiltinFormat::Gemma
        );
        assert_eq!(
            BuiltinFormat::for_model("qwen2", Some("qwen2")),
            BuiltinFormat::ChatMl
        );
        assert_eq!(
            BuiltinFormat::for_model("qwen3", None),
            BuiltinFormat::ChatMl
        );
        assert_eq!(
            BuiltinFormat::for_model("llama", Some("llama-bpe")),
            BuiltinFormat::Llama3
        );
        assert_eq!(
            BuiltinFormat::for_model("llama", Some("default")),
            BuiltinFormat::ChatMl
        );
        assert_eq!(
            BuiltinFormat::for_model("phi3", None),
            BuiltinFormat::ChatMl
        );
    }
}
