//! Encoding one streamed token as a Server-Sent Event, as the server's HTTP worker does it for
//! every generated token: build the OpenAI chunk (`api::response::Header::chunk`), serialize
//! it and frame it as one HTTP chunk (`server::http::SseWriter::data`, here into a sink).
//!
//! Budget: ≤ 10 µs per event (completions or chat), i.e. under 0.05% of a 20 ms decode step
//! per stream; 32 streams then cost the worker threads well under a millisecond per step.

use criterion::{criterion_group, criterion_main, Criterion};
use ryzanstein::api::response::{Endpoint, Header};
use ryzanstein::server::http::SseWriter;

fn sse(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse_event");
    for (name, endpoint) in [
        ("completions", Endpoint::Completions),
        ("chat", Endpoint::Chat),
    ] {
        let header = Header {
            endpoint,
            id: "cmpl-5886b6130252944e".into(),
            created: 1_795_436_802,
            model: "gemma-3-270m-q4_k_m".into(),
        };
        let mut w = SseWriter::new(Box::new(std::io::sink()), true);
        g.bench_function(name, |b| {
            b.iter(|| {
                let chunk = header.chunk(0, std::hint::black_box(" the"), None, None, false, 17);
                w.data(&chunk).expect("a sink takes everything")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, sse);
criterion_main!(benches);
