//! The GGUF reader on the real default model and on crafted, truncated and corrupted files.

mod common;

use ryzanstein::gguf::writer::GgufWriter;
use ryzanstein::gguf::{Array, GgufErrorKind, GgufFile, Value};
use ryzanstein::kernels::GgmlType;
use std::collections::BTreeMap;

#[test]
fn reads_the_default_model() {
    let f = GgufFile::open(common::default_model_path()).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.tensors().len(), 236);
    assert_eq!(f.metadata().len(), 33);
    let md = f.metadata();
    assert_eq!(md.get_str("general.architecture").unwrap(), Some("gemma3"));
    assert_eq!(md.get_u32("gemma3.embedding_length").unwrap(), Some(640));
    assert_eq!(
        md.get_u32("gemma3.attention.sliding_window").unwrap(),
        Some(512)
    );
    let tokens = md.get_array("tokenizer.ggml.tokens").unwrap().unwrap();
    assert_eq!(tokens.as_strings().unwrap().len(), 262_144);
    let mut by_type = BTreeMap::new();
    for t in f.tensors() {
        *by_type.entry(t.ty.name()).or_insert(0) += 1;
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
    }
    let expected: BTreeMap<_, _> = [
        ("F32", 109),
        ("Q5_0", 81),
        ("Q4_K", 27),
        ("Q8_0", 10),
        ("Q6_K", 9),
    ]
    .into();
    assert_eq!(by_type, expected);
    let embd = f.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (embd.ty, embd.dims.as_slice()),
        (GgmlType::Q8_0, &[640u64, 262_144][..])
    );
    assert!(f.tensor("output.weight").is_none());
}

fn sample_writer(version: u32) -> GgufWriter {
    let nested = Array::Array(vec![
        Array::U32(vec![1, 2]),
        Array::String(vec!["a".into(), "bc".into()]),
    ]);
    GgufWriter::new(version)
        .alignment(64)
        .kv("general.architecture", Value::String("test".into()))
        .kv("u8", Value::U8(200))
        .kv("i8", Value::I8(-5))
        .kv("u16", Value::U16(60_000))
        .kv("i16", Value::I16(-30_000))
        .kv("u32", Value::U32(4_000_000_000))
        .kv("i32", Value::I32(-2_000_000_000))
        .kv("f32", Value::F32(1.5))
        .kv("bool", Value::Bool(true))
        .kv("u64", Value::U64(1 << 40))
        .kv("i64", Value::I64(-(1 << 40)))
        .kv("f64", Value::F64(-2.25))
        .kv(
            "strings",
            Value::Array(Array::String(vec!["x".into(), "ÿ€".into()])),
        )
        .kv("nested", Value::Array(nested))
        .tensor("tensor_a", &[8], GgmlType::F32, (0..32).collect())
        .tensor("tensor_b", &[32, 2], GgmlType::Q8_0, vec![7; 68])
}

#[test]
fn round_trips_every_value_type_in_v2_and_v3() {
    for version in [2, 3] {
        let f = GgufFile::from_bytes("sample.gguf", sample_writer(version).to_bytes()).unwrap();
        let md = f.metadata();
        assert_eq!(f.version(), version);
        assert_eq!(f.alignment(), 64);
        assert_eq!(f.data_offset() % 64, 0);
        assert_eq!(md.get("u8"), Some(&Value::U8(200)));
        assert_eq!(md.get("i16"), Some(&Value::I16(-30_000)));
        assert_eq!(md.get_u32("u32").unwrap(), Some(4_000_000_000));
        assert_eq!(md.get_i64("i64").unwrap(), Some(-(1 << 40)));
        assert_eq!(md.get_f32("f64").unwrap(), Some(-2.25));
        assert_eq!(md.get_bool("bool").unwrap(), Some(true));
        let nested = md
            .get_array("nested")
            .unwrap()
            .unwrap()
            .as_arrays()
            .unwrap();
        assert_eq!(nested[1].as_strings().unwrap(), ["a", "bc"]);
        assert_eq!(
            md.get_array("strings")
                .unwrap()
                .unwrap()
                .as_strings()
                .unwrap()[1],
            "ÿ€"
        );
        let b = f.tensor("tensor_b").unwrap();
        assert_eq!(f.tensor_data(b), &[7u8; 68][..]);
        assert_eq!(f.tensor_data(f.tensor("tensor_a").unwrap())[31], 31);
        // Typed accessors reject the wrong type with the key in the message.
        let err = md.get_str("u32").unwrap_err().to_string();
        assert!(
            err.contains("sample.gguf") && err.contains("'u32'"),
            "{err}"
        );
        assert!(md.get_u32("i8").is_err(), "a negative value is not a u32");
    }
}

#[test]
fn every_truncation_is_an_error_naming_the_file() {
    let bytes = sample_writer(3).to_bytes();
    for len in 0..bytes.len() {
        // The padding after the last tensor's data is not needed; everything before it is.
        let result = GgufFile::from_bytes("cut.gguf", bytes[..len].to_vec());
        let err = result.expect_err(&format!("a file cut at {len} bytes must not parse"));
        assert!(err.to_string().starts_with("cut.gguf: "), "{err}");
    }
}

/// Writes `value` over `bytes` at the position of `marker`'s first occurrence.
fn patch(bytes: &[u8], marker: &[u8], skip: usize, value: &[u8]) -> Vec<u8> {
    let pos = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("marker")
        + skip;
    let mut out = bytes.to_vec();
    out[pos..pos + value.len()].copy_from_slice(value);
    out
}

fn expect_error(bytes: Vec<u8>, field_part: &str) {
    let err = GgufFile::from_bytes("bad.gguf", bytes).expect_err("must be rejected");
    let msg = err.to_string();
    assert!(
        msg.contains(field_part),
        "error {msg:?} should name {field_part:?}"
    );
}

#[test]
fn corrupt_fields_are_named() {
    let good = sample_writer(3).to_bytes();
    expect_error(patch(&good, b"GGUF", 0, b"GGML"), "header.magic");
    expect_error(
        patch(&good, b"GGUF", 4, &1u32.to_le_bytes()),
        "header.version",
    );
    expect_error(patch(&good, b"GGUF", 4, &3u32.to_be_bytes()), "big-endian");
    expect_error(
        patch(&good, b"GGUF", 8, &u64::MAX.to_le_bytes()),
        "header.tensor_count",
    );
    expect_error(
        patch(&good, b"GGUF", 16, &(1u64 << 40).to_le_bytes()),
        "header.metadata_kv_count",
    );
    // The string length of the first key.
    expect_error(
        patch(&good, b"GGUF", 24, &(u64::MAX / 2).to_le_bytes()),
        "metadata[0].key",
    );
    // An array count far larger than the file.
    expect_error(
        patch(&good, b"strings", 15, &(1u64 << 23).to_le_bytes()),
        "'strings'.value.count",
    );
    expect_error(patch(&good, b"bool", 8, &[9u8]), "'bool'");
    expect_error(patch(&good, b"u8", 4, &77u32.to_le_bytes()), "'u8'.type");
    expect_error(
        patch(&good, b"general.alignment", 21, &12u32.to_le_bytes()),
        "general.alignment",
    );
    // Tensor 'a': name, then n_dims, dims, type, offset.
    expect_error(
        patch(&good, b"tensor_a", 8, &5u32.to_le_bytes()),
        "tensor 'tensor_a'.n_dims",
    );
    expect_error(
        patch(&good, b"tensor_a", 12, &0u64.to_le_bytes()),
        "tensor 'tensor_a'.dims[0]",
    );
    expect_error(
        patch(&good, b"tensor_a", 20, &99u32.to_le_bytes()),
        "tensor 'tensor_a'.type",
    );
    expect_error(
        patch(&good, b"tensor_a", 24, &8u64.to_le_bytes()),
        "tensor 'tensor_a'.offset",
    );
    expect_error(
        patch(&good, b"tensor_a", 24, &(1u64 << 20).to_le_bytes()),
        "tensor 'tensor_a'.offset",
    );
    // Q8_0 rows must be whole blocks of 32.
    expect_error(
        patch(&good, b"tensor_b", 12, &31u64.to_le_bytes()),
        "tensor 'tensor_b'.dims",
    );
}

#[test]
fn duplicates_are_rejected() {
    let w = GgufWriter::new(3)
        .kv("k", Value::U8(1))
        .kv("k", Value::U8(2));
    expect_error(w.to_bytes(), "duplicate key");
    let w = GgufWriter::new(3)
        .tensor("t", &[4], GgmlType::F32, vec![0; 16])
        .tensor("t", &[4], GgmlType::F32, vec![0; 16]);
    expect_error(w.to_bytes(), "duplicate tensor");
}

#[test]
fn deep_nesting_is_capped() {
    let mut a = Array::U8(vec![1]);
    for _ in 0..20 {
        a = Array::Array(vec![a]);
    }
    let err = GgufFile::from_bytes(
        "deep.gguf",
        GgufWriter::new(3).kv("deep", Value::Array(a)).to_bytes(),
    )
    .unwrap_err();
    assert!(matches!(err.kind, GgufErrorKind::TooLarge { .. }), "{err}");
}

#[test]
fn random_corruption_never_panics() {
    let good = sample_writer(3).to_bytes();
    let mut rng = common::Rng(42);
    for _ in 0..5000 {
        let mut bytes = good.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(bytes.len());
            bytes[i] = rng.next_u64() as u8;
        }
        if let Ok(f) = GgufFile::from_bytes("fuzz.gguf", bytes) {
            for t in f.tensors() {
                assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
            }
        }
    }
}

#[test]
fn a_missing_file_names_the_path() {
    let err = GgufFile::open("/nonexistent/model.gguf")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
}
