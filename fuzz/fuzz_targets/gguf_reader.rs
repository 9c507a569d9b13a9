//! Fuzz target: the GGUF reader on arbitrary bytes.
//!
//! Any input must give `Ok` or `Err`, never a panic. On `Ok`, every accessor a caller would use
//! is exercised too (tensor data, typed metadata getters, value summaries), and the invariants the
//! reader documents are asserted: tensor data is in range and `n_bytes` long, offsets are aligned,
//! keys and tensor names look up to their own entries.

#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use ryzanstein::gguf::{Array, GgufError, GgufFile, Metadata, Value};

/// Keys the model layer reads (with `{arch}` replaced by `general.architecture`).
const KEYS: &[&str] = &[
    "general.architecture",
    "general.alignment",
    "general.name",
    "general.file_type",
    "general.quantization_version",
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
    "{arch}.context_length",
    "{arch}.embedding_length",
    "{arch}.block_count",
    "{arch}.attention.head_count",
    "{arch}.attention.head_count_kv",
    "{arch}.attention.layer_norm_rms_epsilon",
    "{arch}.attention.sliding_window",
    "{arch}.rope.freq_base",
];

fuzz_target!(|data: &[u8]| {
    match GgufFile::from_bytes("fuzz.gguf", data.to_vec()) {
        Ok(f) => exercise(&f),
        Err(e) => {
            black_box(e.to_string());
        }
    }
});

fn exercise(f: &GgufFile) {
    black_box((f.version(), f.path(), format!("{f:?}")));
    let alignment = f.alignment();
    assert!(alignment > 0 && alignment % 8 == 0, "alignment {alignment}");
    assert_eq!(f.data_offset() % alignment, 0);
    for t in f.tensors() {
        assert_eq!(t.offset % alignment, 0, "tensor {:?}", t.name);
        let bytes = f.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.n_bytes, "tensor {:?}", t.name);
        black_box(bytes.iter().fold(0u8, |a, &b| a ^ b));
        black_box((t.n_elements(), t.row_len(), t.n_rows(), t.ty.name()));
        let found = f.tensor(&t.name).expect("a tensor looks up by its name");
        assert_eq!(found.offset, t.offset);
    }
    let md = f.metadata();
    black_box((md.len(), md.is_empty()));
    for (key, value) in md.entries() {
        // By address: a NaN value is not equal to itself.
        let found = md.get(key).expect("a key looks up");
        assert!(
            std::ptr::eq(found, value),
            "key {key:?} looks up to another entry"
        );
        touch_value(value);
        touch_getters(md, key);
    }
    let arch = md
        .get_str("general.architecture")
        .ok()
        .flatten()
        .unwrap_or("llama")
        .to_string();
    for key in KEYS {
        let key = key.replace("{arch}", &arch);
        touch_getters(md, &key);
        let _ = black_box(s(md.require(&key, md.get_u32(&key))));
    }
}

fn touch_value(v: &Value) {
    black_box((v.summary(80), v.summary(0), v.value_type().name()));
    black_box((v.as_int(), v.as_f64(), v.as_str()));
    if let Value::Array(a) = v {
        touch_array(a);
    }
}

fn touch_array(a: &Array) {
    let n = a.len();
    black_box((n, a.is_empty(), a.elem_type().name()));
    black_box((a.int_at(0), a.int_at(n.saturating_sub(1)), a.int_at(n)));
    black_box((a.as_u8(), a.as_i8(), a.as_u32(), a.as_i32(), a.as_f32()));
    black_box(
        a.as_strings()
            .map(|s| s.iter().map(String::len).sum::<usize>()),
    );
    if let Some(inner) = a.as_arrays() {
        for x in inner {
            touch_array(x);
        }
    }
}

/// An error rendered (its `Display` is part of what callers use).
fn s<T>(r: Result<T, GgufError>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn touch_getters(md: &Metadata, key: &str) {
    let _ = black_box(s(md.get_u32(key)));
    let _ = black_box(s(md.get_u64(key)));
    let _ = black_box(s(md.get_i64(key)));
    let _ = black_box(s(md.get_f32(key)));
    let _ = black_box(s(md.get_bool(key)));
    let _ = black_box(s(md.get_str(key)));
    let _ = black_box(s(md.get_array(key)).map(|a| a.map(Array::len)));
}
