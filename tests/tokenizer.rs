//! Tokenizer against llama.cpp on the real Gemma 3 270M vocabulary: prompt ids, decoding of the
//! generated ids, streaming decode. Reference rows come from llama-server (see
//! `tests/data/reference/gemma-3-270m-q4_k_m/`).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::OnceLock;

use ryzanstein::gguf::GgufFile;
use ryzanstein::model::detokenizer::IncrementalDecoder;
use ryzanstein::model::sampler::{Sampler, SamplingParams};
use ryzanstein::model::stop::StopStrings;
use ryzanstein::model::tokenizer::Tokenizer;
use serde_json::Value;

/// Counts heap allocations per thread, so the hot paths can be checked allocation-free while
/// other tests run on other threads.
struct CountingAlloc;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count_alloc() {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

fn allocs() -> u64 {
    ALLOCS.try_with(Cell::get).unwrap_or(0)
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_alloc();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

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
fn long_prompts_are_fast() {
    let t = tokenizer();
    let unit = "The quick brown fox — jumps over 13 lazy dogs; <start_of_turn> 東京\n\n";
    let mut distinct = String::new();
    for i in 0..6000 {
        distinct.push_str(&format!("x<unused{i}>"));
    }
    // Ordinary text, then worst cases for the special-token partition: long runs of
    // USER_DEFINED whitespace tokens (31 overlapping lengths), many '<', thousands of distinct
    // CONTROL tokens.
    for text in [
        unit.repeat(100_000 / unit.len() + 1),
        " ".repeat(100_000),
        "\n".repeat(100_000),
        "<".repeat(100_000),
        distinct,
    ] {
        let start = std::time::Instant::now();
        let ids = t.encode(&text, true, true);
        let secs = start.elapsed().as_secs_f64();
        assert!(secs < 1.0, "{} KB took {secs:.3} s", text.len() / 1000);
        eprintln!("{} KB: {secs:.3} s", text.len() / 1000);
        assert!(ids.len() > 1000);
        assert_eq!(t.decode_with(&ids[1..], true), text);
    }
}

#[test]
fn hot_paths_do_not_allocate() {
    let t = tokenizer();
    let n = t.n_vocab();
    let logits: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
    let history: Vec<u32> = (0..200).collect();
    for params in [
        SamplingParams::greedy(),
        SamplingParams::default(),
        SamplingParams {
            repetition_penalty: 1.1,
            frequency_penalty: 0.2,
            presence_penalty: 0.1,
            top_k: 0,
            n_logprobs: 5,
            logit_bias: vec![(5, -1.0)],
            ..SamplingParams::default()
        },
    ] {
        let mut s = Sampler::new(params.clone(), n).expect("valid params");
        s.sample(&logits, &history).expect("warm-up sample");
        let before = allocs();
        for _ in 0..5 {
            s.sample(&logits, &history).expect("sample");
        }
        assert_eq!(allocs() - before, 0, "sampler allocated with {params:?}");
    }

    let ids = t.encode(
        "Hello there, 東京 🚀 — stop here. And more text",
        false,
        false,
    );
    let mut d = IncrementalDecoder::new(false);
    let mut stops = StopStrings::new(&["never", "<end>"], 4, 64).expect("valid stops");
    // Warm-up grows the buffers to their working size.
    for &id in &ids {
        let _ = stops.push(d.push(t, id));
    }
    let before = allocs();
    for &id in &ids {
        let _ = stops.push(d.push(t, id));
    }
    assert_eq!(allocs() - before, 0, "decoder or stop matcher allocated");
}
