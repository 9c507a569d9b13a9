//! Fuzz target: request bodies through the server's own parsing and validation.
//!
//! The first byte picks the route (`/v1/completions`, `/v1/chat/completions`, `/tokenize`,
//! `/detokenize`), the rest is the body, given to `ryzanstein::api::parse_and_validate` — the
//! function the server calls on every body it reads — with the default limits. Any input must
//! give `Ok` or an `ApiError`, never a panic. An error must be a 4xx whose JSON body has the
//! OpenAI shape; a parsed request must be within every limit. A parsed request then goes
//! through what the server does next with the tiny Llama fixture's tokenizer and chat
//! template: text prompts are tokenized (special tokens parsed), chat messages rendered and
//! tokenized, token ids in the vocabulary detokenized.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ryzanstein::api::request::{Common, Prompt, BODY_ROUTES};
use ryzanstein::api::{parse_and_validate, ApiError, ParsedBody};
use ryzanstein::config::Limits;
use ryzanstein::gguf::GgufFile;
use ryzanstein::model::chat::{ChatMessage, ChatTemplate};
use ryzanstein::model::tokenizer::Tokenizer;

static TINY_LLAMA: &[u8] = include_bytes!("../../tests/data/fixtures/tiny-llama.gguf");

struct Model {
    tokenizer: Tokenizer,
    chat: ChatTemplate,
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let file = GgufFile::from_bytes("tiny-llama.gguf", TINY_LLAMA.to_vec()).expect("fixture");
        let tokenizer = Tokenizer::from_gguf(&file).expect("fixture tokenizer");
        let chat = ChatTemplate::from_gguf(&file, &tokenizer, None).expect("fixture template");
        Model { tokenizer, chat }
    })
}

fn check_error(e: &ApiError) {
    assert!(matches!(e.status, 400 | 404), "{e}");
    let v = e.to_json();
    let err = &v["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(err["type"].is_string() && err.get("param").is_some() && err.get("code").is_some());
    serde_json::to_vec(&v).expect("serializes");
}

fn check_common(c: &Common, l: &Limits) {
    assert!(c
        .max_tokens
        .is_none_or(|m| (1..=l.max_tokens_cap).contains(&m)));
    assert!((1..=l.n_max).contains(&c.n));
    assert!(c.stop.len() <= l.stop_max);
    assert!(c
        .stop
        .iter()
        .all(|s| !s.is_empty() && s.len() <= l.stop_bytes_max));
    let s = &c.sampling;
    assert!((0.0..=2.0).contains(&s.temperature));
    assert!(s.top_p > 0.0 && s.top_p <= 1.0);
    assert!((0.0..=1.0).contains(&s.min_p));
    assert!(s.repetition_penalty > 0.0 && s.repetition_penalty <= 10.0);
    assert!((-2.0..=2.0).contains(&s.presence_penalty));
    assert!((-2.0..=2.0).contains(&s.frequency_penalty));
    assert!(s.logit_bias.len() <= l.logit_bias_max);
    assert!(s
        .logit_bias
        .iter()
        .all(|(_, b)| (-100.0..=100.0).contains(b)));
}

/// What the server does with a parsed body before the engine, on the fixture's vocabulary.
fn model_side(parsed: &ParsedBody) {
    let m = model();
    let tok = &m.tokenizer;
    match parsed {
        ParsedBody::Completion(r) => {
            for p in &r.prompts {
                if let Prompt::Text(t) = p {
                    let ids = tok.encode(t, true, true);
                    assert!(ids.iter().all(|&id| (id as usize) < tok.n_vocab()));
                }
            }
        }
        ParsedBody::Chat(r) => {
            let msgs: Vec<ChatMessage> = r
                .messages
                .iter()
                .map(|x| ChatMessage::new(x.role.clone(), x.content.clone()))
                .collect();
            let _ = m.chat.render_tokens(tok, &msgs, true);
        }
        ParsedBody::Tokenize(r) => {
            let _ = tok.encode(&r.prompt, r.add_special_tokens, true);
        }
        ParsedBody::Detokenize(r) => {
            let ids: Vec<u32> = r
                .tokens
                .iter()
                .copied()
                .filter(|&t| (t as usize) < tok.n_vocab())
                .collect();
            let _ = tok.decode(&ids);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let route = BODY_ROUTES[selector as usize % BODY_ROUTES.len()];
    let limits = Limits::default();
    match parse_and_validate(route, body, &limits) {
        Err(e) => check_error(&e),
        Ok(parsed) => {
            match &parsed {
                ParsedBody::Completion(r) => {
                    check_common(&r.common, &limits);
                    assert!(!r.prompts.is_empty());
                    assert!(r.prompts.len() * r.common.n <= limits.choices_max);
                }
                ParsedBody::Chat(r) => {
                    check_common(&r.common, &limits);
                    assert!(!r.messages.is_empty());
                }
                ParsedBody::Tokenize(_) | ParsedBody::Detokenize(_) => {}
            }
            model_side(&parsed);
        }
    }
});
