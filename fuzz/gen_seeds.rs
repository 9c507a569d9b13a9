//! Writes the seed corpus of the `gguf_reader` fuzz target: small valid GGUF files (v2 and v3,
//! every value type, nested arrays, non-default alignments, tensors of every weight type, a file
//! shaped like the default Gemma 3 model) and a few truncated or corrupt ones.
//!
//! Deterministic: the same source writes the same bytes. Every seed is checked against the
//! reader (valid ones must parse, corrupt ones must be rejected) before it is written.
//!
//! Usage (from `fuzz/`): `cargo run --release --example gen_seeds [-- OUT_DIR [MODEL.gguf]]`.
//! `OUT_DIR` defaults to `seeds/gguf_reader`. With `MODEL.gguf`, the first 8 KiB of that file are
//! also written as `real_model_head.gguf` (a truncated real header; not regenerated otherwise).

use std::path::{Path, PathBuf};

use ryzanstein::gguf::writer::GgufWriter;
use ryzanstein::gguf::{Array, GgufFile, Value, ARRAY_DEPTH_MAX};
use ryzanstein::kernels::GgmlType;

/// Bytes of the real model's head kept as a seed.
const MODEL_HEAD_BYTES: usize = 8192;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/gguf_reader"));
    std::fs::create_dir_all(&out).expect("create the output directory");
    let mut total = 0;
    let mut write = |name: &str, bytes: Vec<u8>, valid: bool| {
        let parsed = GgufFile::from_bytes(name, bytes.clone());
        match (&parsed, valid) {
            (Ok(_), true) | (Err(_), false) => {}
            (Ok(_), false) => panic!("{name}: meant to be corrupt, but the reader accepts it"),
            (Err(e), true) => panic!("{name}: meant to be valid, but: {e}"),
        }
        let why = parsed.err().map(|e| e.to_string()).unwrap_or_default();
        println!("{name:32} {:6} bytes  {why}", bytes.len());
        total += bytes.len();
        std::fs::write(out.join(name), bytes).expect("write a seed");
    };

    // Valid files.
    let v3 = every_type(3).alignment(64).to_bytes();
    write("v3_every_type_align64.gguf", v3.clone(), true);
    write("v2_every_type.gguf", every_type(2).to_bytes(), true);
    write(
        "v3_align8.gguf",
        GgufWriter::new(3)
            .alignment(8)
            .kv("general.architecture", Value::String("llama".into()))
            .tensor("a", &[3], GgmlType::F32, data(12, 1))
            .tensor("b", &[5], GgmlType::F16, data(10, 2))
            .tensor("c", &[32], GgmlType::Q8_0, data(34, 3))
            .to_bytes(),
        true,
    );
    // `general.alignment` may be any integer type; 32 is also the writer's default layout.
    write(
        "v3_alignment_as_u64.gguf",
        GgufWriter::new(3)
            .kv("general.alignment", Value::U64(32))
            .tensor("x", &[2, 2], GgmlType::F32, data(16, 4))
            .tensor("y", &[256], GgmlType::Q4_K, data(144, 5))
            .to_bytes(),
        true,
    );
    write("v3_empty.gguf", GgufWriter::new(3).to_bytes(), true);
    write(
        "v3_tensors_only_4d.gguf",
        GgufWriter::new(3)
            .tensor("t1", &[4], GgmlType::F32, data(16, 6))
            .tensor("t2", &[2, 3], GgmlType::BF16, data(12, 7))
            .tensor("t3", &[32, 1, 2], GgmlType::Q4_0, data(36, 8))
            .tensor("t4", &[32, 1, 1, 2], GgmlType::Q5_1, data(48, 9))
            .to_bytes(),
        true,
    );
    write(
        "v3_nested_max_depth.gguf",
        GgufWriter::new(3)
            .kv("deep", Value::Array(nest(ARRAY_DEPTH_MAX)))
            .kv("empty", Value::Array(Array::Array(vec![])))
            .to_bytes(),
        true,
    );
    write("v3_gemma3_like.gguf", gemma3_like().to_bytes(), true);

    // Truncated and corrupt files.
    write("trunc_header.gguf", v3[..20].to_vec(), false);
    write("trunc_metadata.gguf", v3[..v3.len() / 4].to_vec(), false);
    write("trunc_tensor_data.gguf", v3[..v3.len() - 1].to_vec(), false);
    let mut big_endian = GgufWriter::new(3).to_bytes();
    big_endian[4..8].copy_from_slice(&3u32.to_be_bytes());
    write("bad_version_big_endian.gguf", big_endian, false);
    write(
        "nested_too_deep.gguf",
        GgufWriter::new(3)
            .kv("deep", Value::Array(nest(ARRAY_DEPTH_MAX + 1)))
            .to_bytes(),
        false,
    );
    let mut bad_bool = GgufWriter::new(3).kv("flag", Value::Bool(true)).to_bytes();
    let at = find(&bad_bool, b"flag") + 4 + 4; // key, then the u32 value type
    bad_bool[at] = 2;
    write("bad_bool_byte.gguf", bad_bool, false);
    let mut misaligned = GgufWriter::new(3)
        .tensor("first", &[8], GgmlType::F32, data(32, 10))
        .tensor("second", &[8], GgmlType::F32, data(32, 11))
        .to_bytes();
    // name, n_dims (u32), one dim (u64), type (u32), then the u64 offset.
    let at = find(&misaligned, b"second") + 6 + 4 + 8 + 4;
    misaligned[at..at + 8].copy_from_slice(&36u64.to_le_bytes());
    write("misaligned_offset.gguf", misaligned, false);
    write(
        "bad_shape_q4k.gguf",
        GgufWriter::new(3)
            .tensor("w", &[100], GgmlType::Q4_K, data(144, 12))
            .to_bytes(),
        false,
    );
    write(
        "activation_type_q8k.gguf",
        GgufWriter::new(3)
            .tensor("w", &[256], GgmlType::Q8_K, data(292, 13))
            .to_bytes(),
        false,
    );
    write(
        "duplicate_key.gguf",
        GgufWriter::new(2)
            .kv("general.name", Value::String("a".into()))
            .kv("general.name", Value::String("b".into()))
            .to_bytes(),
        false,
    );

    // Optional: the head of a real model (its metadata runs for megabytes, so this is truncated).
    if let Some(model) = args.get(1) {
        let mut head = vec![0u8; MODEL_HEAD_BYTES];
        use std::io::Read;
        std::fs::File::open(model)
            .and_then(|mut f| f.read_exact(&mut head))
            .expect("read the model's head");
        write("real_model_head.gguf", head, false);
    }
    println!("{total} bytes written to {}", out.display());
}

/// Deterministic pseudo-random bytes (an LCG), so quantized blocks hold varied scales.
fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect()
}

/// `depth` arrays nested in one another (depth 1 is a flat array).
fn nest(depth: u32) -> Array {
    if depth <= 1 {
        Array::U8(vec![1, 2, 3])
    } else {
        Array::Array(vec![nest(depth - 1), Array::I16(vec![-1])])
    }
}

/// Where `needle` (a key or tensor name, unique in the file) starts.
fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in the file")
}

/// Every value type as a scalar and as an array element, nested arrays, and one tensor of each
/// weight type (one block each).
fn every_type(version: u32) -> GgufWriter {
    let nested = Array::Array(vec![
        Array::U32(vec![1, 2]),
        Array::String(vec!["a".into(), "bc".into()]),
        Array::Array(vec![Array::F32(vec![0.5]), Array::Bool(vec![])]),
    ]);
    let mut w = GgufWriter::new(version)
        .kv("general.architecture", Value::String("test".into()))
        .kv("u8", Value::U8(200))
        .kv("i8", Value::I8(-5))
        .kv("u16", Value::U16(60_000))
        .kv("i16", Value::I16(-30_000))
        .kv("u32", Value::U32(4_000_000_000))
        .kv("i32", Value::I32(-2_000_000_000))
        .kv("f32", Value::F32(1.5))
        .kv("bool", Value::Bool(true))
        .kv("string", Value::String("ÿ€ unicode".into()))
        .kv("u64", Value::U64(1 << 40))
        .kv("i64", Value::I64(-(1 << 40)))
        .kv("f64", Value::F64(-2.25))
        .kv("a.u8", Value::Array(Array::U8(vec![0, 255])))
        .kv("a.i8", Value::Array(Array::I8(vec![-128, 127])))
        .kv("a.u16", Value::Array(Array::U16(vec![1, 65_535])))
        .kv("a.i16", Value::Array(Array::I16(vec![-2, 2])))
        .kv("a.u32", Value::Array(Array::U32(vec![7, 8, 9, 10, 11])))
        .kv("a.i32", Value::Array(Array::I32(vec![-7])))
        .kv(
            "a.f32",
            Value::Array(Array::F32(vec![f32::NAN, -0.0, 1e30])),
        )
        .kv("a.bool", Value::Array(Array::Bool(vec![true, false])))
        .kv(
            "a.string",
            Value::Array(Array::String(vec!["x".into(), "".into(), "ÿ€".into()])),
        )
        .kv("a.array", Value::Array(nested))
        .kv("a.u64", Value::Array(Array::U64(vec![u64::MAX])))
        .kv("a.i64", Value::Array(Array::I64(vec![i64::MIN])))
        .kv("a.f64", Value::Array(Array::F64(vec![f64::INFINITY])))
        .kv("a.empty", Value::Array(Array::U32(vec![])));
    for (i, ty) in GgmlType::WEIGHT_TYPES.into_iter().enumerate() {
        let n = ty.block_elems();
        let bytes = ty.row_bytes(n).unwrap();
        w = w.tensor(
            &format!("t.{}", ty.name()),
            &[n as u64],
            ty,
            data(bytes, i as u64),
        );
    }
    w
}

/// The default model's metadata keys with their types (from gemma-3-270m-q4_k_m.gguf), a
/// 16-token vocabulary and a few small tensors named and typed as in that file.
fn gemma3_like() -> GgufWriter {
    let tokens: Vec<String> = [
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
        "<mask>",
        "[multimodal]",
        "<start_of_turn>",
        "<end_of_turn>",
        "▁",
        "▁the",
        "a",
        "b",
        "\n",
        "<0x00>",
        "ĠHello",
        "世界",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let n = tokens.len();
    let s = |x: &str| Value::String(x.into());
    let tags = ["gemma3", "gemma", "google", "text-generation"];
    GgufWriter::new(3)
        .kv("general.architecture", s("gemma3"))
        .kv("general.type", s("model"))
        .kv("general.name", s("Gemma 3 270m"))
        .kv("general.basename", s("gemma-3"))
        .kv("general.size_label", s("270M"))
        .kv("general.license", s("gemma"))
        .kv(
            "general.tags",
            Value::Array(Array::String(tags.iter().map(|t| t.to_string()).collect())),
        )
        .kv("gemma3.context_length", Value::U32(32768))
        .kv("gemma3.embedding_length", Value::U32(256))
        .kv("gemma3.block_count", Value::U32(1))
        .kv("gemma3.feed_forward_length", Value::U32(512))
        .kv("gemma3.attention.head_count", Value::U32(4))
        .kv("gemma3.attention.layer_norm_rms_epsilon", Value::F32(1e-6))
        .kv("gemma3.attention.key_length", Value::U32(256))
        .kv("gemma3.attention.value_length", Value::U32(256))
        .kv("gemma3.rope.freq_base", Value::F32(1_000_000.0))
        .kv("gemma3.attention.sliding_window", Value::U32(512))
        .kv("gemma3.attention.head_count_kv", Value::U32(1))
        .kv("tokenizer.ggml.model", s("llama"))
        .kv("tokenizer.ggml.pre", s("default"))
        .kv("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))
        .kv(
            "tokenizer.ggml.scores",
            Value::Array(Array::F32((0..n).map(|i| -(i as f32)).collect())),
        )
        .kv(
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32((0..n).map(|i| [3, 3, 3, 2, 4][i % 5]).collect())),
        )
        .kv("tokenizer.ggml.bos_token_id", Value::U32(2))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(1))
        .kv("tokenizer.ggml.unknown_token_id", Value::U32(3))
        .kv("tokenizer.ggml.padding_token_id", Value::U32(0))
        .kv("tokenizer.ggml.add_bos_token", Value::Bool(true))
        .kv("tokenizer.ggml.add_sep_token", Value::Bool(false))
        .kv("tokenizer.ggml.add_eos_token", Value::Bool(false))
        .kv("tokenizer.ggml.add_space_prefix", Value::Bool(false))
        .kv("general.quantization_version", Value::U32(2))
        .kv("general.file_type", Value::U32(15))
        .tensor("output_norm.weight", &[256], GgmlType::F32, data(1024, 20))
        .tensor(
            "token_embd.weight",
            &[256, n as u64],
            GgmlType::Q8_0,
            data(272 * n, 21),
        )
        .tensor(
            "blk.0.attn_k.weight",
            &[256, 2],
            GgmlType::Q5_0,
            data(352, 22),
        )
        .tensor(
            "blk.0.attn_q.weight",
            &[256, 4],
            GgmlType::Q4_K,
            data(576, 23),
        )
        .tensor(
            "blk.0.ffn_down.weight",
            &[256, 2],
            GgmlType::Q6_K,
            data(420, 24),
        )
        .tensor(
            "blk.0.attn_norm.weight",
            &[256],
            GgmlType::F32,
            data(1024, 25),
        )
}
