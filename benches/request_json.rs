//! Parsing and validating request bodies (`api::request`), which every generation request
//! pays on an HTTP worker before it is queued.
//!
//! Budget: ≤ 20 µs for a typical completions or chat body (a sentence of prompt, a handful of
//! sampling fields) and ≤ 250 µs for a 2,000-token-id prompt — against milliseconds of
//! prefill for the same prompt.

use criterion::{criterion_group, criterion_main, Criterion};
use ryzanstein::api::request::{ChatRequest, CompletionRequest};
use ryzanstein::config::Limits;

fn parse(c: &mut Criterion) {
    let limits = Limits::default();
    let text = br#"{"model":"gemma-3-270m-q4_k_m","prompt":"The capital of France is a city that","max_tokens":64,
        "temperature":0.7,"top_p":0.9,"seed":42,"stop":["\n\n"],"stream":true,
        "stream_options":{"include_usage":true},"user":"bench"}"#
        .to_vec();
    let ids: Vec<u32> = (0..2000).map(|i| 100 + (i * 7919) % 30000).collect();
    let tokens = serde_json::to_vec(&serde_json::json!({"prompt": ids, "max_tokens": 16})).unwrap();
    let chat = br#"{"model":"gemma-3-270m-q4_k_m","messages":[
        {"role":"system","content":"You are a helpful assistant."},
        {"role":"user","content":"What is the capital of France?"},
        {"role":"assistant","content":"Paris."},
        {"role":"user","content":[{"type":"text","text":"And of Italy?"}]}],
        "max_completion_tokens":32,"temperature":0,"logprobs":true,"top_logprobs":2}"#
        .to_vec();
    let mut g = c.benchmark_group("request_parse");
    g.bench_function("completion_text", |b| {
        b.iter(|| CompletionRequest::parse(std::hint::black_box(&text), &limits).unwrap())
    });
    g.bench_function("completion_2000_ids", |b| {
        b.iter(|| CompletionRequest::parse(std::hint::black_box(&tokens), &limits).unwrap())
    });
    g.bench_function("chat_4_messages", |b| {
        b.iter(|| ChatRequest::parse(std::hint::black_box(&chat), &limits).unwrap())
    });
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
