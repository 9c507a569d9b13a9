//! Batch invariance of the whole forward pass: a sequence's logits are bit-identical whether it
//! runs alone or batched with other sequences, whether its prompt is prefilled whole or in
//! chunks, and whatever the number of compute threads.

mod common;

use ryzanstein::model::{BatchToken, Model, ModelOptions};

const PROMPTS: [&[u32]; 3] = [
    &[2, 14946, 3324, 496, 990, 236764, 528, 496, 12010, 6426],
    &[2, 818, 5279, 529, 7001, 563],
    &[
        2, 2063, 138, 236751, 236769, 236749, 1473, 107, 140, 2063, 506, 12, 40, 1,
    ],
];

fn load() -> Model {
    let opts = ModelOptions {
        n_ctx: 128,
        n_seq: 3,
        max_batch_tokens: 64,
        max_logit_rows: 3,
    };
    Model::load(&common::default_model_path(), opts).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Sequence 0 alone: its prompt prefilled in chunks of `chunk`, then 4 decode steps with fixed
/// tokens. Returns the logits bits of every step that produced logits.
fn alone(model: &Model, threads: usize, chunk: usize) -> Vec<Vec<u32>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut state = model.new_state();
    let p = PROMPTS[0];
    let mut out = Vec::new();
    for start in (0..p.len()).step_by(chunk) {
        let end = (start + chunk).min(p.len());
        let batch: Vec<BatchToken> = (start..end)
            .map(|pos| BatchToken {
                token: p[pos],
                pos,
                seq: 0,
                logits: pos + 1 == p.len(),
            })
            .collect();
        let logits = pool.install(|| model.forward(&mut state, &batch)).unwrap();
        if end == p.len() {
            out.push(bits(logits));
        }
    }
    for (i, token) in [107u32, 496, 2268, 3953].into_iter().enumerate() {
        let b = [BatchToken {
            token,
            pos: p.len() + i,
            seq: 0,
            logits: true,
        }];
        out.push(bits(
            pool.install(|| model.forward(&mut state, &b)).unwrap(),
        ));
    }
    out
}

/// Sequence 0 with two others in every batch: the other prompts are prefilled in the same
/// batch as sequence 0's prompt, then all three decode together.
fn batched(model: &Model) -> Vec<Vec<u32>> {
    let mut state = model.new_state();
    let mut batch = Vec::new();
    for (seq, p) in PROMPTS.iter().enumerate().rev() {
        batch.extend(p.iter().enumerate().map(|(pos, &token)| BatchToken {
            token,
            pos,
            seq,
            logits: pos + 1 == p.len(),
        }));
    }
    let n_vocab = model.config().n_vocab;
    let logits = model.forward(&mut state, &batch).unwrap();
    // Sequence 0's row is the last of the three logit rows (prompts were added in reverse).
    let mut out = vec![bits(&logits[2 * n_vocab..3 * n_vocab])];
    for (i, token) in [107u32, 496, 2268, 3953].into_iter().enumerate() {
        let b: Vec<BatchToken> = (0..3)
            .map(|seq| BatchToken {
                token: token + seq as u32,
                pos: PROMPTS[seq].len() + i,
                seq,
                logits: true,
            })
            .collect();
        let logits = model.forward(&mut state, &b).unwrap();
        out.push(bits(&logits[..n_vocab]));
    }
    out
}

#[test]
fn logits_do_not_depend_on_the_batch_or_the_threads() {
    let model = load();
    let reference = alone(&model, 1, 64);
    assert_eq!(alone(&model, 2, 64), reference, "1 vs 2 threads");
    assert_eq!(
        alone(&model, 2, 3),
        reference,
        "prefill whole vs in chunks of 3"
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    assert_eq!(
        pool.install(|| batched(&model)),
        reference,
        "alone vs batched with two others"
    );
}

#[test]
fn bad_batches_are_errors() {
    let model = load();
    let mut state = model.new_state();
    let tok = |token, pos, seq| BatchToken {
        token,
        pos,
        seq,
        logits: false,
    };
    for bad in [
        vec![],
        vec![tok(300_000, 0, 0)],
        vec![tok(2, 128, 0)],
        vec![tok(2, 0, 3)],
        (0..65).map(|p| tok(2, p, 0)).collect(),
    ] {
        assert!(
            model.forward(&mut state, &bad).is_err(),
            "{} tokens",
            bad.len()
        );
    }
}
