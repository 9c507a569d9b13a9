use super::*;

/// A tiny vocabulary: specials, a few merges, and byte tokens for 0x00..=0xFF.
pub(crate) fn tiny_vocab() -> Vocab {
    let mut tokens: Vec<String> = [
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
        "<start>",
        "<end_of_turn>",
        "\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut types = vec![3, 3, 3, 2, 3, 3, 4];
    let mut scores = vec![0.0; tokens.len()];
    for b in 0..=255u32 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (t, s) in [
        ("▁", -1.0),
        ("a", -2.0),
        ("b", -3.0),
        ("c", -4.0),
        ("ab", -5.0),
        ("bc", -5.0),
        ("▁a", -6.0),
        ("abc", -7.0),
        ("é", -8.0),
        ("xy", -5.0),
        ("yz", -5.0),
    ] {
        tokens.push(t.to_string());
        types.push(1);
        scores.push(s);
    }
    // Overlapping specials: the partition must prefer the longest text over the leftmost.
    for (t, ty) in [("<a><b>", 4), ("x<a>", 4), ("<a>", 3)] {
        tokens.push(t.to_string());
        types.push(ty);
        scores.push(0.0);
    }
    Vocab {
        tokens,
        scores,
        token_types: types,
        bos_id: Some(2),
        eos_id: Some(1),
        unk_id: Some(3),
        pad_id: Some(0),
        add_bos: true,
        add_eos: false,
        add_space_prefix: false,
        eot_ids: vec![],
        ..Vocab::default()
    }
}

fn tiny() -> Tokenizer {
    Tokenizer::from_vocab(tiny_vocab()).expect("valid vocab")
}

fn id(t: &Tokenizer, s: &str) -> u32 {
    t.token_id(s).expect("token in vocab")
}

#[test]
fn byte_fallback_for_unknown_char() {
    let t = tiny();
    // "ж" (U+0436) is not in the vocabulary: two byte tokens D0 B6.
    let ids = t.encode("aж", false, false);
    assert_eq!(ids, vec![id(&t, "a"), id(&t, "<0xD0>"), id(&t, "<0xB6>")]);
    assert_eq!(t.decode(&ids), "aж");
    // A character in the vocabulary is not split.
    assert_eq!(t.encode("é", false, false), vec![id(&t, "é")]);
}

#[test]
fn merges_follow_scores_and_ties_go_left() {
    let t = tiny();
    // "xy" and "yz" have equal scores: the leftmost pair merges first; "z" alone is not a
    // token and falls back to its byte.
    assert_eq!(
        t.encode("xyz", false, false),
        vec![id(&t, "xy"), id(&t, "<0x7A>")]
    );
    assert_eq!(t.encode("abc", false, false), vec![id(&t, "abc")]);
    assert_eq!(
        t.encode("bcb", false, false),
        vec![id(&t, "bc"), id(&t, "b")]
    );
    // Spaces become "▁"; "▁a" merges.
    assert_eq!(
        t.encode(" ab", false, false),
        vec![id(&t, "▁"), id(&t, "ab")],
        "'ab' (-5) outranks '▁a' (-6)"
    );
    assert_eq!(t.encode(" a", false, false), vec![id(&t, "▁a")]);
}

#[test]
fn special_partition_and_bos() {
    let t = tiny();
    let ids = t.encode("a<start>b\nc", true, true);
    assert_eq!(
        ids,
        vec![2, id(&t, "a"), 4, id(&t, "b"), id(&t, "\n"), id(&t, "c")]
    );
    // Without parse_special the CONTROL token is plain text (byte fallback for '<', '>'),
    // but the USER_DEFINED "\n" is still split out.
    let ids = t.encode("<start>\n", false, false);
    assert!(!ids.contains(&4));
    assert_eq!(ids.last(), Some(&id(&t, "\n")));
    assert_eq!(t.decode(&ids), "<start>\n");
    // Control tokens do not render unless asked.
    assert_eq!(t.decode(&[4, id(&t, "a")]), "a");
    assert_eq!(t.decode_with(&[4, id(&t, "a")], true), "<start>a");
    assert!(t.encode("", false, true).is_empty());
    assert_eq!(t.encode("", true, true), vec![2]);
}

#[test]
fn partition_is_longest_first_not_leftmost() {
    let t = tiny();
    let (ab, xa, a) = (id(&t, "<a><b>"), id(&t, "x<a>"), id(&t, "<a>"));
    let x = id(&t, "<0x78>");
    // Leftmost-first would take "x<a>" and strand "<b>".
    assert_eq!(t.encode("x<a><b>", false, true), vec![x, ab]);
    assert_eq!(t.encode("x<a><a><b>", false, true), vec![xa, ab]);
    assert_eq!(t.encode("<a>x<a><a>", false, true), vec![a, xa, a]);
    // Without parse_special the CONTROL "<a>" stays text, USER_DEFINED ones still split.
    let ids = t.encode("<a>x<a>", false, false);
    assert_eq!(ids.last(), Some(&xa));
    assert!(!ids.contains(&a));
    // Repeated, adjacent and overlapping occurrences of one special.
    assert_eq!(t.encode("<a><a><a>", false, true), vec![a, a, a]);
}

#[test]
fn eog_and_bounds() {
    let t = tiny();
    assert!(t.is_eog(1));
    assert!(t.is_eog(5), "<end_of_turn> detected by text");
    assert!(!t.is_eog(2));
    assert_eq!(t.token_to_piece(u32::MAX, true), b"");
    assert_eq!(t.decode(&[u32::MAX, 99_999]), "");
    assert_eq!(t.token_text(u32::MAX), None);
}

#[test]
fn invalid_vocabs_are_errors() {
    let mut v = tiny_vocab();
    v.scores.pop();
    assert!(Tokenizer::from_vocab(v).is_err());
    let mut v = tiny_vocab();
    v.bos_id = Some(100_000);
    assert!(Tokenizer::from_vocab(v).is_err());
    let mut v = tiny_vocab();
    v.tokens[10] = "<0xZZ>".into();
    assert!(Tokenizer::from_vocab(v).is_err());
    assert!(Tokenizer::from_vocab(Vocab::default()).is_err());
}

#[test]
fn long_input_is_fast() {
    let t = tiny();
    let text = "abc ab<start>é ж\n".repeat(6000); // ~100 KB
    let start = std::time::Instant::now();
    let ids = t.encode(&text, true, true);
    assert!(start.elapsed().as_secs_f64() < 1.0, "{:?}", start.elapsed());
    assert_eq!(t.decode(&ids), text.replace("<start>", ""));
}

fn gguf(model: Option<&str>, extra: Vec<(&str, crate::gguf::Value)>) -> GgufFile {
    use crate::gguf::{writer::GgufWriter, Array, Value};
    let v = tiny_vocab();
    let mut w = GgufWriter::new(3)
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(v.tokens)),
        )
        .kv("tokenizer.ggml.scores", Value::Array(Array::F32(v.scores)))
        .kv(
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(v.token_types)),
        );
    if let Some(m) = model {
        w = w.kv("tokenizer.ggml.model", Value::String(m.to_string()));
    }
    for (k, val) in extra {
        w = w.kv(k, val);
    }
    GgufFile::from_bytes("test.gguf", w.to_bytes()).expect("valid GGUF image")
}

#[test]
fn from_gguf_models_and_defaults() {
    use crate::gguf::Value;
    for other in ["bert", "t5", "rwkv", "plamo2"] {
        let err = Tokenizer::from_gguf(&gguf(Some(other), vec![])).expect_err("unsupported");
        assert!(matches!(err, TokenizerError::UnsupportedModel(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("tokenizer.ggml.model") && msg.contains(&format!("'{other}'")),
            "{msg}"
        );
    }
    let err = Tokenizer::from_gguf(&gguf(None, vec![])).expect_err("missing model");
    assert!(err.to_string().contains("tokenizer.ggml.model"));

    // llama.cpp's SPM defaults: bos 1, eos 2, unk 0, add_bos, add_space_prefix.
    let t = Tokenizer::from_gguf(&gguf(Some("llama"), vec![])).expect("llama vocab");
    assert_eq!(
        (t.bos_id(), t.eos_id(), t.unk_id()),
        (Some(1), Some(2), Some(0))
    );
    assert!(t.add_bos() && !t.add_eos() && t.add_space_prefix());
    // The space prefix goes at the start and after each special token.
    let ids = t.encode("a<start>a", false, true);
    assert_eq!(ids, vec![id(&t, "▁a"), 4, id(&t, "▁a")]);
    // Decoding drops the first piece's leading space only.
    assert_eq!(t.decode(&ids), "a a");

    let t = Tokenizer::from_gguf(&gguf(
        Some("llama"),
        vec![
            ("tokenizer.ggml.bos_token_id", Value::U32(2)),
            ("tokenizer.ggml.eos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eot_token_id", Value::U32(4)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
            ("tokenizer.ggml.add_eos_token", Value::Bool(true)),
            ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
        ],
    ))
    .expect("llama vocab");
    assert_eq!(t.encode("a", true, false), vec![id(&t, "a"), 1]);
    assert_eq!(t.eog_ids(), &[1, 4, 5]);
    // Wrong types and out-of-range ids are errors, not panics.
    assert!(Tokenizer::from_gguf(&gguf(
        Some("llama"),
        vec![("tokenizer.ggml.bos_token_id", Value::U32(1 << 20))]
    ))
    .is_err());
    assert!(Tokenizer::from_gguf(&gguf(
        Some("llama"),
        vec![("tokenizer.ggml.add_bos_token", Value::U32(1))]
    ))
    .is_err());
}

/// A tiny byte-level BPE vocabulary: the 256 byte characters (id = byte), then merged tokens
/// and specials. "xy" is a merge result that is not a token; "ac" is a token no merge makes.
fn bpe_vocab(pre: PreTokenizer, ignore_merges: bool) -> Vocab {
    let mut tokens: Vec<String> = bpe::BYTE_CHARS.iter().map(|c| c.to_string()).collect();
    let mut types = vec![1; 256];
    for (t, ty) in [
        ("ab", 1),
        ("abc", 1),
        ("Ġa", 1),
        ("aa", 1),
        ("xyz", 1),
        ("ac", 1),
        ("<|endoftext|>", 3),
        ("<|im_end|>", 4),
        ("<tool>", 4),
    ] {
        tokens.push(t.to_string());
        types.push(ty);
    }
    let merges = ["a b", "b c", "ab c", "Ġ a", "a a", "x y", "xy z"];
    let n = tokens.len();
    Vocab {
        tokens,
        scores: vec![0.0; n],
        token_types: types,
        eos_id: Some(262),
        kind: TokenizerKind::Bpe,
        pre,
        ignore_merges,
        merges: merges.iter().map(|m| m.to_string()).collect(),
        ..Vocab::default()
    }
}

fn bpe_tiny(pre: PreTokenizer, ignore_merges: bool) -> Tokenizer {
    Tokenizer::from_vocab(bpe_vocab(pre, ignore_merges)).expect("valid BPE vocab")
}

#[test]
fn bpe_merges_by_rank_left_first() {
    let t = bpe_tiny(PreTokenizer::Gpt2, false);
    let b = |c: char| c as u32; // byte tokens have the byte's id
    assert_eq!(t.encode("abc", false, false), vec![id(&t, "abc")]);
    // " abc": "a b" (rank 0) beats "Ġ a" (rank 3), then "ab c" (rank 2).
    assert_eq!(
        t.encode("abc abc", false, false),
        vec![id(&t, "abc"), id(&t, "Ġ"), id(&t, "abc")]
    );
    assert_eq!(t.encode(" a", false, false), vec![id(&t, "Ġa")]);
    // Equal ranks: the leftmost pair merges first.
    assert_eq!(t.encode("aaa", false, false), vec![id(&t, "aa"), b('a')]);
    // A merge result that is not a token still merges on ("xy z"); alone it falls back to the
    // tokens of its bytes.
    assert_eq!(t.encode("xyz", false, false), vec![id(&t, "xyz")]);
    assert_eq!(t.encode("xy", false, false), vec![b('x'), b('y')]);
    // Every byte has a token: any text round-trips, including invalid-looking UTF-8 splits.
    for text in ["abc abc", "naïve 東京 🚀\n\t ", "xy xyz aaaa", ""] {
        assert_eq!(t.decode(&t.encode(text, false, false)), text);
    }
    assert_eq!(t.token_to_piece(id(&t, "Ġa"), false), b" a");
    assert_eq!(t.token_to_piece(2, false), b"\x02", "byte 0x02 is U+0102");
}

#[test]
fn bpe_ignore_merges_takes_whole_words() {
    // "ac" is a token no merge produces: Llama 3 (ignore_merges) takes it whole.
    let t = bpe_tiny(PreTokenizer::Llama3, true);
    assert_eq!(t.encode("ac", false, false), vec![id(&t, "ac")]);
    let t = bpe_tiny(PreTokenizer::Llama3, false);
    assert_eq!(t.encode("ac", false, false), vec!['a' as u32, 'c' as u32]);
}

#[test]
fn bpe_specials_and_end_of_generation() {
    let t = bpe_tiny(PreTokenizer::Gpt2, false);
    let (eot, im_end, tool) = (
        id(&t, "<|endoftext|>"),
        id(&t, "<|im_end|>"),
        id(&t, "<tool>"),
    );
    // <|im_end|> is found by text: end of generation and forced to CONTROL.
    assert_eq!(t.eog_ids(), &[eot, im_end]);
    assert_eq!(t.token_type(im_end), Some(TokenType::Control));
    // USER_DEFINED texts split even without parse_special; CONTROL ones only with it.
    assert_eq!(t.encode("ab<tool>", false, false), vec![id(&t, "ab"), tool]);
    assert!(!t.encode("<|im_end|>", false, false).contains(&im_end));
    assert_eq!(
        t.encode("ab<|im_end|>", false, true),
        vec![id(&t, "ab"), im_end]
    );
    assert_eq!(t.decode(&[tool, im_end]), "<tool>");
    assert_eq!(t.decode_with(&[tool, im_end], true), "<tool><|im_end|>");
}

fn bpe_gguf(pre: Option<&str>, merges: bool, extra: Vec<(&str, crate::gguf::Value)>) -> GgufFile {
    use crate::gguf::{writer::GgufWriter, Array, Value};
    let v = bpe_vocab(PreTokenizer::Gpt2, false);
    let mut w = GgufWriter::new(3)
        .kv("tokenizer.ggml.model", Value::String("gpt2".into()))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(v.tokens)),
        )
        .kv(
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(v.token_types)),
        );
    if merges {
        w = w.kv(
            "tokenizer.ggml.merges",
            Value::Array(Array::String(v.merges)),
        );
    }
    if let Some(p) = pre {
        w = w.kv("tokenizer.ggml.pre", Value::String(p.to_string()));
    }
    for (k, val) in extra {
        w = w.kv(k, val);
    }
    GgufFile::from_bytes("bpe.gguf", w.to_bytes()).expect("valid GGUF image")
}

#[test]
fn bpe_from_gguf_pre_tokenizers_and_defaults() {
    use crate::gguf::Value;
    // No pre-tokenizer name: llama.cpp's "default"; BPE defaults bos = eos = 11, no BOS added.
    let t = Tokenizer::from_gguf(&bpe_gguf(None, true, vec![])).expect("gpt2 vocab");
    assert_eq!(t.kind(), TokenizerKind::Bpe);
    assert_eq!(t.pre_tokenizer(), Some(PreTokenizer::Default));
    assert_eq!(
        (t.bos_id(), t.eos_id(), t.unk_id()),
        (Some(11), Some(11), None)
    );
    assert!(!t.add_bos() && !t.add_eos() && !t.add_space_prefix());
    assert_eq!(t.encode("abc", true, false), vec![id(&t, "abc")]);

    // Llama 3 names add BOS by default; the metadata wins.
    let t = Tokenizer::from_gguf(&bpe_gguf(
        Some("llama-bpe"),
        true,
        vec![("tokenizer.ggml.bos_token_id", Value::U32(262))],
    ))
    .expect("llama-bpe vocab");
    assert_eq!(t.pre_tokenizer(), Some(PreTokenizer::Llama3));
    assert_eq!(t.encode("ac", true, false), vec![262, id(&t, "ac")]);
    let t = Tokenizer::from_gguf(&bpe_gguf(
        Some("llama-bpe"),
        true,
        vec![("tokenizer.ggml.add_bos_token", Value::Bool(false))],
    ))
    .expect("llama-bpe vocab");
    assert!(!t.add_bos());
    for (name, pre) in [
        ("qwen2", PreTokenizer::Qwen2),
        ("command-r", PreTokenizer::Starcoder),
    ] {
        let t = Tokenizer::from_gguf(&bpe_gguf(Some(name), true, vec![])).expect(name);
        assert_eq!(t.pre_tokenizer(), Some(pre));
    }

    // Unknown pre-tokenizers and missing merges are errors naming what is wrong.
    for name in ["tekken", "gpt-4o", "gemma4", "bloom"] {
        let err = Tokenizer::from_gguf(&bpe_gguf(Some(name), true, vec![])).expect_err(name);
        assert!(
            matches!(err, TokenizerError::UnsupportedPre { .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("'{name}'")) && msg.contains("tokenizer.ggml.pre"),
            "{msg}"
        );
        assert!(msg.contains("llama-bpe") && msg.contains("qwen2"), "{msg}");
    }
    let err = Tokenizer::from_gguf(&bpe_gguf(Some("gpt-2"), false, vec![])).expect_err("no merges");
    assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");
}
