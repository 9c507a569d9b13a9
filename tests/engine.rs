//! The engine on the real default model: one dispatcher, many concurrent sequences.
//! Checks batch invariance (alone vs among others, with and without preemption), cancellation
//! freeing KV memory, and admission errors.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ryzanstein::engine::{EngineOptions, Event, GenerationRequest, ModelHandle, SubmitError};
use ryzanstein::model::generate::FinishReason;
use ryzanstein::model::sampler::SamplingParams;
use ryzanstein::model::tokenizer::Tokenizer;
use ryzanstein::model::Model;

fn start(opts: EngineOptions) -> ModelHandle {
    let path = common::default_model_path();
    let model = Model::load(&path, opts.model_options()).expect("model loads");
    let tok = Tokenizer::from_gguf(model.file()).expect("tokenizer");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    ModelHandle::start(
        "gemma",
        Arc::new(model),
        Arc::new(tok),
        opts,
        Arc::new(pool),
    )
    .unwrap()
}

fn request(h: &ModelHandle, text: &str, max_tokens: usize, seed: Option<u64>) -> GenerationRequest {
    let prompt = h.tokenizer().encode(text, true, false);
    let sampling = match seed {
        None => SamplingParams {
            n_logprobs: 2,
            ..SamplingParams::greedy()
        },
        Some(seed) => SamplingParams {
            temperature: 0.9,
            top_k: 40,
            seed,
            n_logprobs: 2,
            ..SamplingParams::default()
        },
    };
    GenerationRequest {
        prompt,
        max_tokens,
        sampling,
        ignore_eos: true,
        token_group: 1,
    }
}

/// Everything a request produced: (token, logprob bits, top) per token, and the finish.
type Output = (
    Vec<(u32, u32, Vec<(u32, u32)>)>,
    Option<(FinishReason, usize, usize)>,
);

fn collect(stream: ryzanstein::engine::Stream) -> Output {
    let mut toks = Vec::new();
    let mut fin = None;
    while let Some(ev) = stream.recv() {
        match ev {
            Event::Token(t) => toks.push((
                t.id,
                t.logprob.to_bits(),
                t.top
                    .iter()
                    .map(|x| (x.token, x.logprob.to_bits()))
                    .collect(),
            )),
            Event::Finished {
                reason,
                prompt_tokens,
                completion_tokens,
                ..
            } => fin = Some((reason, prompt_tokens, completion_tokens)),
            Event::Failed(m) => panic!("request failed: {m}"),
            Event::Admitted { .. } | Event::Prefill { .. } => {}
        }
    }
    (toks, fin)
}

const PROMPTS: [&str; 6] = [
    "The capital of France is",
    "Once upon a time, in a quiet forest, a little fox",
    "def fibonacci(n):",
    "List three colours:",
    "In 1969, the first humans",
    "The quick brown fox jumps over",
];

fn small_opts() -> EngineOptions {
    EngineOptions {
        n_ctx: 512,
        max_batch_size: 8,
        max_batch_tokens: 64,
        ..EngineOptions::default()
    }
}

/// Submits every prompt at once (odd ones sampled with a seed), its tokens sent in groups of
/// `token_group`, and collects the outputs in order.
fn run_all_at_once(h: &ModelHandle, n_new: usize, token_group: usize) -> Vec<Output> {
    let streams: Vec<_> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let seed = (i % 2 == 1).then_some(i as u64);
            h.submit(GenerationRequest {
                token_group,
                ..request(h, p, n_new, seed)
            })
            .unwrap()
        })
        .collect();
    streams.into_iter().map(collect).collect()
}

#[test]
fn outputs_are_identical_alone_and_batched_even_with_preemption() {
    let n_new = 12;
    let h = start(small_opts());
    let mut alone = Vec::new();
    for (i, p) in PROMPTS.iter().enumerate() {
        let seed = (i % 2 == 1).then_some(i as u64);
        alone.push(collect(h.submit(request(&h, p, n_new, seed)).unwrap()));
    }
    for (toks, fin) in &alone {
        assert_eq!(toks.len(), n_new);
        assert_eq!(fin.unwrap().0, FinishReason::Length);
        assert_eq!(fin.unwrap().2, n_new);
    }
    let together = run_all_at_once(&h, n_new, 1);
    assert_eq!(alone, together, "batched outputs differ from solo ones");
    assert!(h.stats().batch_seqs.sum() > h.stats().steps.load(Ordering::Relaxed) as f64);
    drop(h);

    // A pool of 6 blocks (96 positions) cannot hold six sequences of ~20 positions: the newest
    // are preempted and recomputed, and still produce the same tokens.
    let tight = EngineOptions {
        kv_pool_bytes: 6 * 16 * 3 * 2 * 256 * 2,
        ..small_opts()
    };
    let h = start(tight.clone());
    let squeezed = run_all_at_once(&h, n_new, 1);
    assert_eq!(alone, squeezed, "preemption changed outputs");
    assert!(
        h.stats().preemptions.load(Ordering::Relaxed) > 0,
        "the tight pool should have forced a preemption"
    );
    // Tokens sent in groups come the same, in order, before `Finished`: groups of 5 (5 + 5,
    // and the last 2 sent with `Finished`), and groups as large as asked for, capped at half
    // a buffer of 16 events (8 + 4).
    assert_eq!(
        alone,
        run_all_at_once(&h, n_new, 5),
        "grouped tokens differ"
    );
    drop(h);
    let h = start(EngineOptions {
        event_buffer: 16,
        ..tight
    });
    let whole = run_all_at_once(&h, n_new, usize::MAX);
    assert_eq!(alone, whole, "grouped tokens differ");
}

#[test]
fn a_dropped_stream_is_cancelled_and_its_kv_freed() {
    let h = start(small_opts());
    let s = h.submit(request(&h, PROMPTS[1], 400, None)).unwrap();
    let mut n = 0;
    while n < 3 {
        if let Some(Event::Token(_)) = s.recv() {
            n += 1;
        }
    }
    assert!(h.stats().kv_bytes_used.load(Ordering::Relaxed) > 0);
    drop(s);
    let t0 = Instant::now();
    while h.stats().kv_bytes_used.load(Ordering::Relaxed) > 0
        || h.stats().running.load(Ordering::Relaxed) > 0
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "KV memory not freed after cancel"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(h.stats().cancelled.load(Ordering::Relaxed), 1);
}

#[test]
fn admission_errors_come_at_once() {
    let opts = EngineOptions {
        queue_depth: 2,
        max_batch_size: 1,
        ..small_opts()
    };
    let h = start(opts);
    assert_eq!(
        h.submit(GenerationRequest {
            prompt: vec![],
            ..request(&h, "x", 1, None)
        })
        .unwrap_err(),
        SubmitError::EmptyPrompt
    );
    let long = GenerationRequest {
        prompt: vec![2; 512],
        ..request(&h, "x", 1, None)
    };
    assert!(matches!(
        h.submit(long),
        Err(SubmitError::PromptTooLong { .. })
    ));
    let bad = GenerationRequest {
        prompt: vec![2, 999_999_999],
        ..request(&h, "x", 1, None)
    };
    assert!(matches!(h.submit(bad), Err(SubmitError::BadToken { .. })));
    // One running, then the queue of 2 fills; the next is refused without waiting.
    let mut held = Vec::new();
    let t0 = Instant::now();
    let mut refused = None;
    for _ in 0..8 {
        match h.submit(request(&h, PROMPTS[0], 200, None)) {
            Ok(s) => held.push(s),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert!(
        matches!(refused, Some(SubmitError::QueueFull(_))),
        "{refused:?}"
    );
    assert!(t0.elapsed() < Duration::from_millis(500));
    assert!(held.len() <= 3);
}
