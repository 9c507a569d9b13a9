//! Llama, Qwen2 and Qwen3 against llama.cpp: small random-weight models of each architecture
//! (`tests/data/fixtures/`, made by `scripts/make-fixtures.sh`) with the outputs llama.cpp gave
//! on them. F32 models: every logit of every prompt position within 1e-3 of llama.cpp's.
//! Q8_0 and Q4_K models: the same 32 greedy tokens. Also batch invariance for every
//! architecture: a sequence's logits are bit-identical alone or batched, prefilled whole or in
//! chunks. Reads committed files only: no Python, no network.

mod common;

use ryzanstein::model::{BatchToken, Model, ModelOptions, State};

/// Largest |our logit − llama.cpp's logit| allowed on the F32 fixtures.
const LOGIT_TOLERANCE: f32 = 1e-3;

/// (fixture, architecture it must load as)
const F32_FIXTURES: [(&str, &str); 4] = [
    ("llama-f32", "llama"),
    ("llama-linear-f32", "llama"),
    ("qwen2-f32", "qwen2"),
    ("qwen3-f32", "qwen3"),
];

const GREEDY_FIXTURES: [(&str, &str); 7] = [
    ("tiny-llama", "llama"),
    ("llama-linear-q8_0", "llama"),
    ("qwen2-q8_0", "qwen2"),
    ("qwen3-q8_0", "qwen3"),
    ("llama-q4_k", "llama"),
    ("qwen2-q4_k", "qwen2"),
    ("qwen3-q4_k", "qwen3"),
];

fn load(stem: &str, opts: ModelOptions) -> (Model, serde_json::Value) {
    let dir = common::fixtures_dir();
    let json = std::fs::read_to_string(dir.join(format!("{stem}.json"))).expect("fixture json");
    let doc: serde_json::Value = serde_json::from_str(&json).expect("fixture json parses");
    let model = Model::load(&dir.join(format!("{stem}.gguf")), opts).expect("fixture loads");
    (model, doc)
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn opts() -> ModelOptions {
    ModelOptions {
        n_ctx: 128,
        n_seq: 3,
        max_batch_tokens: 32,
        max_logit_rows: 16,
    }
}

#[test]
fn f32_logits_match_llama_cpp() {
    let mut failures = Vec::new();
    for (stem, arch) in F32_FIXTURES {
        let (model, doc) = load(stem, opts());
        assert_eq!(model.arch().name, arch, "{stem}");
        let prompt = ids(&doc["prompt"]);
        let want: Vec<Vec<f32>> = doc["logits"]
            .as_array()
            .expect("logits")
            .iter()
            .map(|row| {
                row.as_array()
                    .expect("row")
                    .iter()
                    .map(|x| x.as_f64().expect("logit") as f32)
                    .collect()
            })
            .collect();
        let n_vocab = model.config().n_vocab;
        assert_eq!(want.len(), prompt.len(), "{stem}: a logit row per position");
        let batch: Vec<BatchToken> = prompt
            .iter()
            .enumerate()
            .map(|(pos, &token)| BatchToken {
                token,
                pos,
                seq: 0,
                logits: true,
            })
            .collect();
        let mut state = model.new_state();
        let got = model.forward(&mut state, &batch).expect("forward");
        let mut max_err = 0.0f32;
        let mut at = (0, 0);
        for (pos, row) in want.iter().enumerate() {
            assert_eq!(row.len(), n_vocab, "{stem}");
            for (i, &w) in row.iter().enumerate() {
                let err = (got[pos * n_vocab + i] - w).abs();
                if err > max_err || err.is_nan() {
                    max_err = err;
                    at = (pos, i);
                }
            }
        }
        println!(
            "{stem} ({arch}, F32): max |Δlogit| {max_err:.2e} over {} positions × {n_vocab} (at position {}, token {})",
            prompt.len(),
            at.0,
            at.1
        );
        if max_err.is_nan() || max_err > LOGIT_TOLERANCE {
            failures.push(format!("{stem}: max |Δlogit| {max_err} at {at:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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
fn quantized_greedy_tokens_match_llama_cpp() {
    let mut failures = Vec::new();
    for (stem, arch) in GREEDY_FIXTURES {
        let (model, doc) = load(stem, opts());
        assert_eq!(model.arch().name, arch, "{stem}");
        let prompt = ids(&doc["prompt"]);
        let want = ids(&doc["greedy"]);
        assert_eq!(want.len(), 32, "{stem}");
        let mut state = model.new_state();
        let got = greedy(&model, &mut state, &prompt, want.len());
        let weights = doc["weights"].as_str().unwrap_or("?");
        let min_margin = doc["top2_margin"]
            .as_array()
            .expect("margins")
            .iter()
            .map(|m| m.as_f64().expect("margin"))
            .fold(f64::INFINITY, f64::min);
        match got.iter().zip(&want).position(|(a, b)| a != b) {
            None => println!(
                "{stem} ({arch}, {weights}): all {} greedy tokens match (llama.cpp's smallest top-2 margin {min_margin:.3})",
                want.len()
            ),
            Some(step) => failures.push(format!(
                "{stem} ({arch}, {weights}): differs at step {step}: got {got:?}, want {want:?}"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Sequence 0 alone, its prompt prefilled in chunks of `chunk`, then 3 decode steps; the logits
/// bits of each step with logits.
fn alone(model: &Model, prompts: &[Vec<u32>], chunk: usize) -> Vec<Vec<u32>> {
    let mut state = model.new_state();
    let p = &prompts[0];
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
        let logits = model.forward(&mut state, &batch).unwrap();
        if end == p.len() {
            out.push(bits(logits));
        }
    }
    for (i, token) in [5u32, 77, 300].into_iter().enumerate() {
        let b = [BatchToken {
            token,
            pos: p.len() + i,
            seq: 0,
            logits: true,
        }];
        out.push(bits(model.forward(&mut state, &b).unwrap()));
    }
    out
}

/// Sequence 0 with two others in every batch (prompts prefilled together, then decoded
/// together).
fn batched(model: &Model, prompts: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let mut state = model.new_state();
    let mut batch = Vec::new();
    for (seq, p) in prompts.iter().enumerate().rev() {
        batch.extend(p.iter().enumerate().map(|(pos, &token)| BatchToken {
            token,
            pos,
            seq,
            logits: pos + 1 == p.len(),
        }));
    }
    let n_vocab = model.config().n_vocab;
    let logits = model.forward(&mut state, &batch).unwrap();
    let mut out = vec![bits(&logits[2 * n_vocab..3 * n_vocab])];
    for (i, token) in [5u32, 77, 300].into_iter().enumerate() {
        let b: Vec<BatchToken> = (0..3)
            .map(|seq| BatchToken {
                token: token + seq as u32,
                pos: prompts[seq].len() + i,
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
fn every_architecture_is_batch_invariant() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for stem in [
        "llama-q4_k",
        "qwen2-q4_k",
        "qwen3-q4_k",
        "tiny-llama",
        "qwen3-f32",
    ] {
        let (model, doc) = load(stem, opts());
        let p0 = ids(&doc["prompt"]);
        let prompts = vec![p0.clone(), vec![p0[0], 17, 402, 9], p0[..5].to_vec()];
        let reference = pool.install(|| alone(&model, &prompts, 32));
        assert_eq!(
            pool.install(|| alone(&model, &prompts, 3)),
            reference,
            "{stem}: prefill whole vs in chunks of 3"
        );
        assert_eq!(
            pool.install(|| batched(&model, &prompts)),
            reference,
            "{stem}: alone vs batched with two others"
        );
        println!("{stem}: alone, chunked and batched logits are bit-identical");
    }
}
