//! Loading a model from a GGUF file: every unusable file is a clear error naming what is wrong
//! (architecture, key, tensor, shape), never a panic; a complete tiny model loads and runs.

mod common;

use std::sync::Arc;

use common::TinyGemma3;
use ryzanstein::gguf::writer::GgufWriter;
use ryzanstein::gguf::{GgufFile, Value};
use ryzanstein::model::{BatchToken, Model, ModelOptions};

fn opts() -> ModelOptions {
    ModelOptions {
        n_ctx: TinyGemma3::N_CTX,
        n_seq: 1,
        max_batch_tokens: 8,
        max_logit_rows: 8,
    }
}

/// Loads `bytes` as a Gemma 3 model labelled `label`; the error message if it fails.
fn load(label: &str, bytes: Vec<u8>) -> Result<Model, String> {
    let file = GgufFile::from_bytes(label, bytes).map_err(|e| format!("GGUF reader: {e}"))?;
    Model::from_file(Arc::new(file), opts()).map_err(|e| e.to_string())
}

fn load_err(label: &str, bytes: Vec<u8>) -> String {
    match load(label, bytes) {
        Ok(_) => panic!("{label}: loaded, expected an error"),
        Err(e) => {
            assert!(
                !e.starts_with("GGUF reader:"),
                "{label}: the file itself was rejected: {e}"
            );
            assert!(
                e.contains(label),
                "{label}: error does not name the file: {e}"
            );
            assert!(!e.contains('\n'), "{label}: error is not one line: {e:?}");
            e
        }
    }
}

#[test]
fn an_unsupported_architecture_is_named() {
    let bytes = GgufWriter::new(3)
        .kv("general.architecture", Value::String("mamba".into()))
        .kv("mamba.context_length", Value::U32(64))
        .kv("mamba.embedding_length", Value::U32(64))
        .kv("mamba.block_count", Value::U32(1))
        .tensor(
            "token_embd.weight",
            &[8, 4],
            ryzanstein::kernels::GgmlType::F32,
            vec![0; 128],
        )
        .to_bytes();
    let e = load_err("mamba.gguf", bytes);
    assert!(e.contains("'mamba'"), "{e}");
    assert!(e.contains("architecture"), "{e}");
    // The message lists what is supported.
    for name in ["gemma3", "llama", "qwen2", "qwen3"] {
        assert!(e.contains(name), "{e}");
    }
}

#[test]
fn no_architecture_key_is_an_error() {
    let bytes = TinyGemma3::new()
        .without_key("general.architecture")
        .to_bytes();
    let e = load_err("noarch.gguf", bytes);
    assert!(e.contains("architecture"), "{e}");
}

#[test]
fn a_missing_tensor_is_named() {
    let e = load_err(
        "tiny-noq.gguf",
        common::tiny_gemma3(Some("blk.0.attn_q.weight")),
    );
    assert!(e.contains("'blk.0.attn_q.weight'"), "{e}");
    assert!(e.contains("missing"), "{e}");
}

#[test]
fn every_missing_tensor_is_named() {
    let names = TinyGemma3::new().tensor_names();
    assert_eq!(names.len(), 2 + 13 * TinyGemma3::N_LAYERS);
    for name in names {
        let e = load_err("tiny-omit.gguf", common::tiny_gemma3(Some(&name)));
        assert!(e.contains(&format!("'{name}'")), "omitting {name}: {e}");
    }
}

#[test]
fn a_wrong_shape_is_named() {
    // ffn_down is [n_ff, n_embd]; stored transposed it has the right size but the wrong shape.
    let (d, ff) = (TinyGemma3::N_EMBD as u64, TinyGemma3::N_FF as u64);
    let bytes = TinyGemma3::new()
        .with_dims("blk.1.ffn_down.weight", &[d, ff])
        .to_bytes();
    let e = load_err("tiny-shape.gguf", bytes);
    assert!(e.contains("'blk.1.ffn_down.weight'"), "{e}");
    assert!(e.contains("shape"), "{e}");
    // A norm vector stored as a matrix of the same size.
    let hd = TinyGemma3::HEAD_DIM as u64;
    let bytes = TinyGemma3::new()
        .with_dims("blk.0.attn_k_norm.weight", &[hd / 2, 2])
        .to_bytes();
    let e = load_err("tiny-shape2.gguf", bytes);
    assert!(
        e.contains("'blk.0.attn_k_norm.weight'") && e.contains("shape"),
        "{e}"
    );
    // A 3-D tensor whose first two dims multiply out right is still the wrong shape.
    let bytes = TinyGemma3::new()
        .with_dims("blk.0.ffn_up.weight", &[d, ff / 2, 2])
        .to_bytes();
    let e = load_err("tiny-shape3.gguf", bytes);
    assert!(
        e.contains("'blk.0.ffn_up.weight'") && e.contains("shape"),
        "{e}"
    );
}

#[test]
fn a_missing_required_key_is_named() {
    for key in [
        "gemma3.embedding_length",
        "gemma3.context_length",
        "gemma3.block_count",
        "gemma3.feed_forward_length",
        "gemma3.attention.head_count",
        "gemma3.attention.layer_norm_rms_epsilon",
    ] {
        let bytes = TinyGemma3::new().without_key(key).to_bytes();
        let e = load_err("tiny-nokey.gguf", bytes);
        assert!(e.contains(&format!("'{key}'")), "without {key}: {e}");
        assert!(e.contains("missing"), "without {key}: {e}");
    }
}

#[test]
fn bad_hparams_are_errors_not_panics() {
    let cases: Vec<(&str, Value)> = vec![
        ("gemma3.embedding_length", Value::U32(0)),
        ("gemma3.attention.head_count", Value::U32(0)),
        ("gemma3.attention.head_count_kv", Value::U32(0)),
        ("gemma3.attention.head_count_kv", Value::U32(3)),
        ("gemma3.block_count", Value::U32(0)),
        ("gemma3.attention.key_length", Value::U32(1 << 20)),
        (
            "gemma3.attention.layer_norm_rms_epsilon",
            Value::F32(f32::NAN),
        ),
        (
            "gemma3.embedding_length",
            Value::String("sixty-four".into()),
        ),
        ("gemma3.embedding_length", Value::I32(-64)),
        ("gemma3.feed_forward_length", Value::U32(100)),
        ("gemma3.context_length", Value::U32(16)),
    ];
    for (key, value) in cases {
        let label = format!("tiny-bad-{key}.gguf");
        let bytes = TinyGemma3::new().with_key(key, value.clone()).to_bytes();
        let result = std::panic::catch_unwind(|| load(&label, bytes));
        match result {
            Err(_) => panic!("{key} = {value:?}: load panicked"),
            Ok(Ok(_)) => panic!("{key} = {value:?}: loaded, expected an error"),
            Ok(Err(e)) => assert!(
                e.contains(&label) && !e.contains('\n'),
                "{key} = {value:?}: {e}"
            ),
        }
    }
}

#[test]
fn the_tiny_model_loads_and_runs() {
    let model = load("tiny.gguf", common::tiny_gemma3(None)).expect("tiny model loads");
    let cfg = model.config();
    assert_eq!(
        (
            cfg.n_embd,
            cfg.n_ff,
            cfg.n_head,
            cfg.n_head_kv,
            cfg.head_dim,
            cfg.n_layers,
            cfg.n_vocab
        ),
        (64, 128, 2, 1, 32, 2, 32)
    );
    assert_eq!(cfg.sliding_window, Some(8));
    let n_vocab = cfg.n_vocab;
    let tokens = [1u32, 7, 30, 4, 4, 19];

    // The whole prompt in one batch, logits for every token.
    let mut state = model.new_state();
    let batch: Vec<BatchToken> = tokens
        .iter()
        .enumerate()
        .map(|(pos, &token)| BatchToken {
            token,
            pos,
            seq: 0,
            logits: true,
        })
        .collect();
    let all = model.forward(&mut state, &batch).expect("forward").to_vec();
    assert_eq!(all.len(), tokens.len() * n_vocab);
    assert!(
        all.iter().all(|x| x.is_finite()),
        "non-finite logits: {all:?}"
    );
    let last = &all[(tokens.len() - 1) * n_vocab..];
    let spread = last.iter().cloned().fold(f32::MIN, f32::max)
        - last.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread > 1e-3, "logits are flat: {last:?}");
    // Different positions see different contexts: their logits differ.
    assert_ne!(&all[..n_vocab], last);

    // The same tokens one at a time give bit-identical logits (the forward pass is
    // batch-invariant).
    let mut state = model.new_state();
    for (pos, &token) in tokens.iter().enumerate() {
        let b = [BatchToken {
            token,
            pos,
            seq: 0,
            logits: true,
        }];
        let one = model.forward(&mut state, &b).expect("decode step");
        assert_eq!(one.len(), n_vocab);
        let want = &all[pos * n_vocab..(pos + 1) * n_vocab];
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(one),
            bits(want),
            "position {pos}: batched and step-by-step logits differ"
        );
    }
}

#[test]
fn bad_batches_are_errors() {
    let model = load("tiny.gguf", common::tiny_gemma3(None)).expect("tiny model loads");
    let mut state = model.new_state();
    let bad: Vec<Vec<BatchToken>> = vec![
        vec![],
        vec![BatchToken {
            token: TinyGemma3::N_VOCAB as u32,
            pos: 0,
            seq: 0,
            logits: true,
        }],
        vec![BatchToken {
            token: 1,
            pos: TinyGemma3::N_CTX,
            seq: 0,
            logits: true,
        }],
        vec![BatchToken {
            token: 1,
            pos: 0,
            seq: 1,
            logits: true,
        }],
        (0..9)
            .map(|pos| BatchToken {
                token: 1,
                pos,
                seq: 0,
                logits: false,
            })
            .collect(),
    ];
    for b in bad {
        assert!(model.forward(&mut state, &b).is_err(), "accepted {b:?}");
    }
}
