//! Chat templates: the official Gemma 3 template and the built-in Gemma format reproduce
//! llama.cpp's prompt ids for the reference chats; the other built-ins render their documented
//! formats; template errors, Python methods and the render bounds.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ryzanstein::gguf::writer::GgufWriter;
use ryzanstein::gguf::{Array, GgufFile, Value};
use ryzanstein::model::chat::{
    BuiltinFormat, ChatError, ChatMessage, ChatTemplate, SpecialTokens, TemplateSource,
    RENDER_BYTES_MAX,
};
use ryzanstein::model::tokenizer::Tokenizer;

const GEMMA_TEMPLATE: &str = include_str!("data/reference/gemma-3-270m-q4_k_m/chat_template.jinja");

fn default_model() -> (GgufFile, Tokenizer) {
    let file = GgufFile::open(common::default_model_path()).expect("open the default model");
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    (file, tok)
}

/// The chat rows of the reference file: (messages, templated_prompt, prompt_token_ids).
fn reference_chats() -> Vec<(Vec<ChatMessage>, String, Vec<u32>)> {
    let rows: Vec<_> = common::reference_rows()
        .into_iter()
        .filter(|r| r.endpoint == "/v1/chat/completions")
        .map(|r| {
            let messages = r.json["request"]["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|m| {
                    ChatMessage::new(
                        m["role"].as_str().expect("role"),
                        m["content"].as_str().expect("text content"),
                    )
                })
                .collect();
            let templated = r.json["templated_prompt"]
                .as_str()
                .expect("templated_prompt")
                .to_string();
            (messages, templated, r.prompt_token_ids)
        })
        .collect();
    assert!(rows.len() >= 2, "the reference file has chat rows");
    rows
}

fn no_special() -> SpecialTokens {
    SpecialTokens::default()
}

fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
    pairs
        .iter()
        .map(|(r, c)| ChatMessage::new(*r, *c))
        .collect()
}

#[test]
fn official_gemma_template_reproduces_reference_prompts() {
    let (file, tok) = default_model();
    let t = ChatTemplate::from_gguf(&file, &tok, Some(GEMMA_TEMPLATE)).expect("compile");
    assert_eq!(t.source(), TemplateSource::Override);
    for (messages, templated, ids) in reference_chats() {
        // llama.cpp reports the text after cutting the template's leading BOS (the tokenizer
        // adds it), which is what `render` returns.
        assert_eq!(t.render(&messages, true).expect("render"), templated);
        let got = t.render_tokens(&tok, &messages, true).expect("tokens");
        assert_eq!(got, ids, "{messages:?}");
        assert_eq!(got.iter().filter(|&&id| id == 2).count(), 1, "one BOS");
    }
}

#[test]
fn builtin_gemma_fallback_reproduces_reference_prompts() {
    let (file, tok) = default_model();
    // The default model file carries no template.
    assert!(file
        .metadata()
        .get_str("tokenizer.chat_template")
        .unwrap()
        .is_none());
    let t = ChatTemplate::from_gguf(&file, &tok, None).expect("built-in");
    assert_eq!(t.source(), TemplateSource::Builtin(BuiltinFormat::Gemma));
    for (messages, templated, ids) in reference_chats() {
        assert_eq!(t.render(&messages, true).expect("render"), templated);
        assert_eq!(t.render_tokens(&tok, &messages, true).expect("tokens"), ids);
    }
}

#[test]
fn gemma_builtin_and_official_agree_on_longer_chats() {
    let (file, tok) = default_model();
    let official = ChatTemplate::from_gguf(&file, &tok, Some(GEMMA_TEMPLATE)).unwrap();
    let builtin = ChatTemplate::from_gguf(&file, &tok, None).unwrap();
    let chats = [
        msgs(&[("user", "Hi")]),
        msgs(&[
            ("system", "Be brief."),
            ("user", "  Hello there \n"),
            ("assistant", "Hello!"),
            ("user", "Tell me a joke."),
        ]),
        msgs(&[("user", "a"), ("assistant", " b "), ("user", "c")]),
    ];
    for chat in &chats {
        for agp in [false, true] {
            assert_eq!(
                builtin.render(chat, agp).unwrap(),
                official.render(chat, agp).unwrap(),
                "{chat:?} add_generation_prompt={agp}"
            );
        }
    }
    let text = builtin.render(&chats[1], false).unwrap();
    assert_eq!(
        text,
        "<start_of_turn>user\nBe brief.\n\nHello there<end_of_turn>\n\
         <start_of_turn>model\nHello!<end_of_turn>\n\
         <start_of_turn>user\nTell me a joke.<end_of_turn>\n"
    );
}

#[test]
fn gemma_end_of_turn_ends_generation() {
    let (_, tok) = default_model();
    assert_eq!(tok.token_id("<end_of_turn>"), Some(106));
    assert!(tok.is_eog(106), "eog set {:?}", tok.eog_ids());
    assert!(tok.is_eog(1));
}

#[test]
fn chatml_builtin_renders_its_format() {
    let t = ChatTemplate::builtin(BuiltinFormat::ChatMl, no_special()).unwrap();
    let chat = msgs(&[
        ("system", "You are helpful."),
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("user", "Bye"),
    ]);
    assert_eq!(
        t.render(&chat, true).unwrap(),
        "<|im_start|>system\nYou are helpful.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n\
         <|im_start|>user\nBye<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert_eq!(
        t.render(&chat[1..2], false).unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn llama3_builtin_renders_its_format() {
    let special = SpecialTokens {
        bos_token: "<|begin_of_text|>".into(),
        eos_token: "<|eot_id|>".into(),
        add_bos: true,
        add_eos: false,
    };
    let t = ChatTemplate::builtin(BuiltinFormat::Llama3, special.clone()).unwrap();
    let chat = msgs(&[("system", "Be terse."), ("user", " What is 2+2? ")]);
    // The tokenizer adds BOS, so the template's is cut from the text.
    assert_eq!(
        t.render(&chat, true).unwrap(),
        "<|start_header_id|>system<|end_header_id|>\n\nBe terse.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    // A vocabulary that does not add BOS keeps it in the text.
    let t = ChatTemplate::builtin(
        BuiltinFormat::Llama3,
        SpecialTokens {
            add_bos: false,
            ..special
        },
    )
    .unwrap();
    assert_eq!(
        t.render(&chat[1..], false).unwrap(),
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
    );
}

/// A metadata-only GGUF with a small SentencePiece vocabulary.
fn vocab_file(arch: &str, pre: Option<&str>, template: Option<&str>) -> GgufFile {
    let s = |v: &str| Value::String(v.to_string());
    let tokens = ["<unk>", "<s>", "</s>", "a", "b"];
    let mut w = GgufWriter::new(3)
        .kv("general.architecture", s(arch))
        .kv("tokenizer.ggml.model", s("llama"))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(
                tokens.iter().map(|t| t.to_string()).collect(),
            )),
        )
        .kv(
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(vec![2, 3, 3, 1, 1])),
        );
    if let Some(pre) = pre {
        w = w.kv("tokenizer.ggml.pre", s(pre));
    }
    if let Some(t) = template {
        w = w.kv("tokenizer.chat_template", s(t));
    }
    GgufFile::from_bytes(format!("{arch}.gguf"), w.to_bytes()).expect("gguf")
}

/// Records the messages of `tracing` events.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

struct MessageVisitor<'a>(&'a mut String);

impl tracing::field::Visit for MessageVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!("{value:?}"));
        }
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut message = String::new();
        event.record(&mut MessageVisitor(&mut message));
        self.0.lock().unwrap().push(message);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn template_source_order_and_fallback_log() {
    let chat = msgs(&[("user", "a")]);
    let cases = [
        ("gemma3", Some("default"), BuiltinFormat::Gemma),
        ("qwen2", Some("qwen2"), BuiltinFormat::ChatMl),
        ("llama", Some("llama-bpe"), BuiltinFormat::Llama3),
        ("llama", None, BuiltinFormat::ChatMl),
    ];
    for (arch, pre, format) in cases {
        let file = vocab_file(arch, pre, None);
        let tok = Tokenizer::from_gguf(&file).unwrap();
        let log = Recorder::default();
        let t = tracing::subscriber::with_default(log.clone(), || {
            ChatTemplate::from_gguf(&file, &tok, None).unwrap()
        });
        assert_eq!(t.source(), TemplateSource::Builtin(format), "{arch}");
        let lines = log.0.lock().unwrap().clone();
        let want = format!(
            "model has no chat template; using the built-in {} format",
            format.name()
        );
        assert_eq!(lines, vec![want], "{arch}");

        // The file's template wins over the built-in; an override wins over both.
        let file = vocab_file(
            arch,
            pre,
            Some("{{ bos_token }}[{{ messages[0].content }}]"),
        );
        let t = ChatTemplate::from_gguf(&file, &tok, None).unwrap();
        assert_eq!(t.source(), TemplateSource::Gguf);
        assert_eq!(t.render(&chat, true).unwrap(), "[a]", "BOS <s> cut");
        let t = ChatTemplate::from_gguf(&file, &tok, Some("({{ messages[0].content }})")).unwrap();
        assert_eq!(t.source(), TemplateSource::Override);
        assert_eq!(t.render(&chat, true).unwrap(), "(a)");
    }
}

#[test]
fn a_doubled_bos_becomes_one() {
    let (file, tok) = default_model();
    let t = ChatTemplate::from_gguf(
        &file,
        &tok,
        Some("{{ bos_token }}{{ bos_token }}{{ messages[0].content }}"),
    )
    .unwrap();
    let ids = t
        .render_tokens(&tok, &msgs(&[("user", "Hi")]), true)
        .unwrap();
    assert_eq!(ids[0], 2);
    assert_ne!(ids[1], 2, "{ids:?}");
}

#[test]
fn raise_exception_becomes_a_chat_error() {
    let (file, tok) = default_model();
    let t = ChatTemplate::from_gguf(&file, &tok, Some(GEMMA_TEMPLATE)).unwrap();
    let err = t
        .render(&msgs(&[("assistant", "Hi"), ("user", "Hello")]), true)
        .unwrap_err();
    match &err {
        ChatError::Raised(m) => assert_eq!(
            m,
            "Conversation roles must alternate user/assistant/user/assistant/..."
        ),
        other => panic!("expected Raised, got {other:?}"),
    }
    assert!(err.to_string().contains("roles must alternate"));
}

#[test]
fn python_methods_work() {
    let source = "{% for m in messages %}[{{ m.content.strip() }}|{{ m.content.upper().strip() }}|\
                  {{ m.content.split(',') | length }}|{{ m.role.startswith('us') }}|\
                  {{ m.get('role') }}|{{ m.content.replace(' ', '') }}]{% endfor %}\
                  {% for k, v in {'x': 1}.items() %}{{ k }}={{ v }}{% endfor %}";
    let t = ChatTemplate::new(source, TemplateSource::Override, no_special()).unwrap();
    assert_eq!(
        t.render(&msgs(&[("user", "  a, b ,c \n")]), false).unwrap(),
        "[a, b ,c|A, B ,C|3|True|user|a,b,c\n]x=1"
    );
}

#[test]
fn strftime_now_and_missing_tools_work() {
    let source = "{{ strftime_now('%Y') | length }}|{{ tools is defined }}|\
                  {% if tools %}tools{% else %}none{% endif %}";
    let t = ChatTemplate::new(source, TemplateSource::Override, no_special()).unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "4|False|none");
}

#[test]
fn a_template_that_does_not_compile_is_named() {
    let err = ChatTemplate::new(
        "{% for m in messages %}\n{{ m.content }",
        TemplateSource::Override,
        no_special(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ChatError::Compile { .. }), "{err:?}");
    assert!(
        msg.starts_with("the override template does not compile"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[test]
fn runaway_templates_are_stopped() {
    let t0 = Instant::now();
    let forever =
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
    let t = ChatTemplate::new(forever, TemplateSource::Override, no_special()).unwrap();
    let err = t.render(&[], false).unwrap_err();
    assert!(matches!(err, ChatError::OutOfFuel { .. }), "{err:?}");

    let huge = "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}";
    let t = ChatTemplate::new(huge, TemplateSource::Override, no_special()).unwrap();
    let err = t.render(&[], false).unwrap_err();
    assert!(matches!(err, ChatError::OutputTooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains(&RENDER_BYTES_MAX.to_string()));
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[test]
fn invalid_messages_are_errors() {
    let t = ChatTemplate::builtin(BuiltinFormat::ChatMl, no_special()).unwrap();
    let err = t
        .render(&msgs(&[("user", "a"), ("", "b")]), true)
        .unwrap_err();
    assert!(
        matches!(err, ChatError::InvalidMessage { index: 1, .. }),
        "{err:?}"
    );
    let long_role = "r".repeat(1000);
    assert!(t.render(&msgs(&[(&long_role, "a")]), true).is_err());
}

#[test]
fn chat_template_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
}
