//! The batching policy's cost per step: it runs once per forward pass on the dispatcher thread,
//! so it must stay far below a decode step (milliseconds).
//!
//! Budget: ≤ 20 µs for a step with 256 running sequences (mixed, or all decoding) — 0.1% of a
//! 20 ms decode step; it grows linearly with the number of sequences.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ryzanstein::engine::policy::{next_batch, Budgets, SeqView};

fn policy(c: &mut Criterion) {
    let mut g = c.benchmark_group("next_batch");
    for n in [1usize, 16, 64, 256] {
        // Mostly decoding sequences, every fourth one prefilling a long prompt.
        let seqs: Vec<SeqView> = (0..n)
            .map(|i| SeqView {
                pending: if i % 4 == 3 { 2000 } else { 1 },
                decoding: i % 4 != 3,
                overdue: i % 4 == 3,
            })
            .collect();
        let b = Budgets {
            max_batch_tokens: 512,
            prefill_tokens_while_decoding: 16,
            whole_prompt_tokens: 64,
        };
        let mut out = Vec::with_capacity(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &seqs, |bch, seqs| {
            bch.iter(|| next_batch(std::hint::black_box(seqs), &b, &mut out))
        });
    }
    // 256 running sequences, every one decoding: the steady state of a full batch.
    let seqs: Vec<SeqView> = (0..256)
        .map(|_| SeqView {
            pending: 1,
            decoding: true,
            overdue: false,
        })
        .collect();
    let b = Budgets {
        max_batch_tokens: 512,
        prefill_tokens_while_decoding: 16,
        whole_prompt_tokens: 64,
    };
    let mut out = Vec::with_capacity(256);
    g.bench_function("256_decoding", |bch| {
        bch.iter(|| next_batch(std::hint::black_box(&seqs), &b, &mut out))
    });
    g.finish();
}

criterion_group!(benches, policy);
criterion_main!(benches);
