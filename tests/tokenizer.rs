//! Tokenizer against llama.cpp on the real Gemma 3 270M vocabulary: prompt ids, decoding of the
//! generated ids, streaming decode. Reference rows come from llama-server (see
//! `tests/data/reference/gemma-3-270m-q4_k_m/`).

mod common;

use std::sync::OnceLock;

use ryzanstein::gguf::GgufFile;
use ryzanstein::model::detokenizer::IncrementalDecoder;
use ryzanstein::model::tokenizer::Tokenizer;
use serde_json::Value;

const GREEDY: &str = include_str!("data/reference/gemma-3-270m-q4_k_m/greedy.jsonl");

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let file = GgufFile::open(common::default_model_path()).expect("open the default model");
        Tokenizer::from_gguf(&file).expect("tokenizer from GGUF metadata")
    })
}

fn rows() -> Vec<Value> {
    GREEDY
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("reference row is JSON"))
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn metadata_matches_gemma3() {
    let t = tokenizer();
    assert_eq!(t.n_vocab(), 262_144);
    assert_eq!(t.bos_id(), Some(2));
    assert_eq!(t.eos_id(), Some(1));
    assert!(t.add_bos() && !t.add_eos() && !t.add_space_prefix());
    assert!(t.is_eog(1) && t.is_eog(106) && !t.is_eog(2) && !t.is_eog(107));
    assert_eq!(t.token_id("<start_of_turn>"), Some(105));
    assert_eq!(t.token_id("\n"), Some(107));
    assert_eq!(t.token_to_piece(106, false), b"");
    assert_eq!(t.token_to_piece(106, true), b"<end_of_turn>");
}

#[test]
fn prompt_ids_match_llama_cpp() {
    let t = tokenizer();
    let rows = rows();
    assert!(rows.len() >= 6);
    for row in &rows {
        let expected = ids(&row["prompt_token_ids"]);
        // llama-server tokenizes with parse_special = true; chat rows use the rendered template
        // (which does not contain "<bos>": BOS comes from add_bos).
        let text = match row.get("templated_prompt").and_then(Value::as_str) {
            Some(t) => t,
            None => row["prompt"]
                .as_str()
                .expect("completion prompt is a string"),
        };
        assert_eq!(t.encode(text, true, true), expected, "prompt {text:?}");
        assert_eq!(
            t.encode(text, false, true),
            ids(&row["prompt_token_ids_no_bos"]),
            "prompt {text:?} without BOS"
        );
        // A template that renders "<bos>" itself, tokenized without add_special, is the same.
        assert_eq!(t.encode(&format!("<bos>{text}"), false, true), expected);
    }
}

#[test]
fn output_ids_decode_to_output_text() {
    let t = tokenizer();
    for row in rows() {
        let out = ids(&row["output_token_ids"]);
        let text = row["output_text"].as_str().expect("output_text");
        assert_eq!(t.decode(&out), text);
        let mut d = IncrementalDecoder::new(false);
        let mut streamed = String::new();
        for &id in &out {
            streamed.push_str(d.push(t, id));
        }
        streamed.push_str(d.finish());
        assert_eq!(streamed, text);
    }
}

#[test]
fn round_trips_and_special_text() {
    let t = tokenizer();
    for text in [
        "Hello, world!",
        "  leading spaces and trailing  ",
        "naïve café — 東京 🚀 \u{0}\t\r\n",
        "<start_of_turn>user\nhi<end_of_turn>",
        "a\n\n\n\nb    c",
    ] {
        let ids = t.encode(text, false, false);
        assert_eq!(t.decode(&ids), text, "round trip of {text:?}");
    }
    // Untrusted text: "<start_of_turn>" is not parsed as the control token.
    let ids = t.encode("<start_of_turn>", false, false);
    assert!(!ids.contains(&105));
    assert_eq!(t.encode("<start_of_turn>", false, true), vec![105]);
}

#[test]
fn long_prompt_is_fast() {
    let t = tokenizer();
    let unit = "The quick brown fox — jumps over 13 lazy dogs; <start_of_turn> 東京\n\n";
    let text = unit.repeat(100_000 / unit.len() + 1);
    let start = std::time::Instant::now();
    let ids = t.encode(&text, true, true);
    let secs = start.elapsed().as_secs_f64();
    assert!(secs < 1.0, "100 KB took {secs:.3} s");
    assert!(ids.len() > 10_000);
}
