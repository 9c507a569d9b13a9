//! llama.cpp's tokenizer test vectors: every `ggml-vocab-*.gguf` in llama.cpp's `models/`
//! directory (from the llama-cpp-python source package, fetched by
//! `scripts/fetch-llama-cpp-sdist.sh`; `scripts/test.sh` sets `RYZANSTEIN_VOCAB_DIR`).
//!
//! The format, as llama.cpp's `tests/test-tokenizer-0.cpp` reads it: `NAME.gguf.inp` holds the
//! inputs separated by the line `__ggml_vocab_test__`, `NAME.gguf.out` one line of
//! space-separated ids per input. llama.cpp tokenizes with `add_special = false` and
//! `parse_special = false` and compares ids only; here every supported vocabulary must also
//! decode its ids back to the input (byte-level BPE and byte-fallback SPM are lossless).
//!
//! A vocabulary the tokenizer does not support must fail to load with the error naming it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ryzanstein::gguf::GgufFile;
use ryzanstein::model::tokenizer::{Tokenizer, TokenizerError, TokenizerKind};

/// Vocabularies that must load and pass every vector (the acceptance list and every other one
/// this tokenizer claims).
const SUPPORTED: &[&str] = &[
    "llama-spm",
    "llama-bpe",
    "qwen2",
    "gpt-2",
    "qwen35",
    "phi-3",
    "starcoder",
    "refact",
    "command-r",
    "mpt",
    "falcon",
    "deepseek-llm",
    "deepseek-coder",
    "gemma-4",
    // No vectors shipped: these must load and round-trip text.
    "aquila",
    "baichuan",
    "gpt-neox",
];

/// Vocabularies that must be refused, with the unsupported `tokenizer.ggml.model` value the
/// error must name.
const UNSUPPORTED: &[(&str, &str)] = &[("bert-bge", "bert"), ("nomic-bert-moe", "t5")];

const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

/// Sample text for the vocabularies without vectors.
const SAMPLE: &str = "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～ \n\n\t  \
                      нещо на Български  3333 'RE  ------======= ";

fn vocab_dir() -> PathBuf {
    let dir = std::env::var_os("RYZANSTEIN_VOCAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/ryzanstein/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp/models")
        });
    assert!(
        dir.is_dir(),
        "llama.cpp vocab files not found at {}: run scripts/fetch-llama-cpp-sdist.sh and set \
         RYZANSTEIN_VOCAB_DIR to <its output>/vendor/llama.cpp/models (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// The `ggml-vocab-NAME.gguf` files, as (NAME, path), sorted.
fn vocab_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .expect("read the vocab directory")
        .map(|e| e.expect("directory entry").path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let stem = name.strip_prefix("ggml-vocab-")?.strip_suffix(".gguf")?;
            Some((stem.to_string(), p.clone()))
        })
        .collect();
    files.sort();
    files
}

/// The (input, expected ids) pairs of a vocabulary, or `None` when it ships no vectors.
fn read_vectors(gguf: &Path) -> Option<Vec<(String, Vec<u32>)>> {
    let inp = PathBuf::from(format!("{}.inp", gguf.display()));
    let out = PathBuf::from(format!("{}.out", gguf.display()));
    if !inp.is_file() || !out.is_file() {
        return None;
    }
    let raw = std::fs::read_to_string(&inp).expect("read .inp");
    let mut inputs: Vec<String> = Vec::new();
    let mut rest = raw.as_str();
    while !rest.is_empty() {
        match rest.find(SEPARATOR) {
            Some(at) => {
                inputs.push(rest[..at].to_string());
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => {
                inputs.push(rest.to_string());
                rest = "";
            }
        }
    }
    let outputs: Vec<Vec<u32>> = std::fs::read_to_string(&out)
        .expect("read .out")
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|id| id.parse().expect("token id"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{}: inputs and outputs differ in number",
        inp.display()
    );
    Some(inputs.into_iter().zip(outputs).collect())
}

/// Run one supported vocabulary; returns the failures (empty = pass) and a summary line.
fn run_vocab(
    name: &str,
    tok: &Tokenizer,
    vectors: Option<&[(String, Vec<u32>)]>,
) -> (Vec<String>, String) {
    let mut failures = Vec::new();
    let cases: Vec<(&str, Option<&[u32]>)> = match vectors {
        Some(v) => v
            .iter()
            .map(|(i, o)| (i.as_str(), Some(o.as_slice())))
            .collect(),
        None => vec![(SAMPLE, None)],
    };
    let start = Instant::now();
    let mut n_ids = 0;
    for (input, expected) in &cases {
        let ids = tok.encode(input, false, false);
        n_ids += ids.len();
        if let Some(expected) = expected {
            if ids != *expected {
                failures.push(format!(
                    "{name}: {input:?}\n    expected {expected:?}\n    got      {ids:?}"
                ));
                continue;
            }
        }
        let decoded = tok.decode(&ids);
        if decoded != *input {
            failures.push(format!("{name}: {input:?} decodes back to {decoded:?}"));
        }
    }
    let summary = format!(
        "{name:>16}: {:?}/{:<14} {:>3} vectors, {:>3} failed, {n_ids} ids in {:.2} ms",
        tok.kind(),
        tok.pre_tokenizer()
            .map_or("-".to_string(), |p| format!("{p:?}")),
        vectors.map_or(0, <[_]>::len),
        failures.len(),
        start.elapsed().as_secs_f64() * 1e3,
    );
    (failures, summary)
}

#[test]
fn llama_cpp_vocab_vectors() {
    let dir = vocab_dir();
    let files = vocab_files(&dir);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for required in SUPPORTED.iter().chain(UNSUPPORTED.iter().map(|(n, _)| n)) {
        assert!(
            names.contains(required),
            "ggml-vocab-{required}.gguf is missing from {}",
            dir.display()
        );
    }
    let mut failures = Vec::new();
    for (name, path) in &files {
        let file = GgufFile::open(path).expect("open vocab GGUF");
        let start = Instant::now();
        let loaded = Tokenizer::from_gguf(&file);
        let load_ms = start.elapsed().as_secs_f64() * 1e3;
        match (loaded, UNSUPPORTED.iter().find(|(n, _)| n == name)) {
            (Ok(tok), None) => {
                let vectors = read_vectors(path);
                let (f, summary) = run_vocab(name, &tok, vectors.as_deref());
                eprintln!("{summary} (load {load_ms:.0} ms)");
                failures.extend(f);
                assert!(
                    SUPPORTED.contains(&name.as_str()),
                    "{name} loads but is not listed in SUPPORTED: add it (with vectors) or refuse it"
                );
            }
            (Err(e), Some((_, model))) => {
                assert!(
                    matches!(e, TokenizerError::UnsupportedModel(_)),
                    "{name}: {e}"
                );
                let msg = e.to_string();
                assert!(msg.contains(&format!("'{model}'")), "{name}: {msg}");
                eprintln!("{name:>16}: unsupported: {msg}");
            }
            (Ok(_), Some(_)) => panic!("{name} is listed as unsupported but loads"),
            (Err(e), None) => panic!("{name} fails to load: {e}"),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Load a vocabulary by name from the vocab directory.
fn load(name: &str) -> Tokenizer {
    let path = vocab_dir().join(format!("ggml-vocab-{name}.gguf"));
    let file = GgufFile::open(&path).expect("open vocab GGUF");
    Tokenizer::from_gguf(&file).expect("supported vocab")
}

#[test]
fn special_tokens_and_end_of_generation() {
    // Llama 3: BOS from the pre-tokenizer default, <|eot_id|> ends generation and is CONTROL.
    let t = load("llama-bpe");
    assert_eq!(t.kind(), TokenizerKind::Bpe);
    assert!(t.add_bos() && !t.add_eos());
    assert_eq!(t.bos_id(), Some(128_000));
    let eot = t.token_id("<|eot_id|>").expect("eot token");
    assert!(t.is_eog(eot) && t.is_eog(128_001) && !t.is_eog(128_000));
    let ids = t.encode("<|begin_of_text|>hi<|eot_id|>", true, true);
    assert_eq!(ids.first(), Some(&128_000));
    assert_eq!(ids.last(), Some(&eot));
    assert_eq!(
        ids.iter().filter(|&&id| id == 128_000).count(),
        2,
        "{ids:?}"
    );
    // Without parse_special the control texts are plain text.
    let plain = t.encode("<|eot_id|>", false, false);
    assert!(!plain.contains(&eot));
    assert_eq!(t.decode(&plain), "<|eot_id|>");
    assert_eq!(t.decode(&ids), "hi", "control tokens are not rendered");
    assert_eq!(
        t.decode_with(&ids[1..], true),
        "<|begin_of_text|>hi<|eot_id|>"
    );

    // Qwen 2: no BOS by default; <|im_end|> and <|endoftext|> end generation.
    let t = load("qwen2");
    assert!(!t.add_bos());
    let im_end = t.token_id("<|im_end|>").expect("im_end");
    let im_start = t.token_id("<|im_start|>").expect("im_start");
    assert!(t.is_eog(im_end) && t.is_eog(151_643) && !t.is_eog(im_start));
    let ids = t.encode("<|im_start|>user\nhi<|im_end|>\n", true, true);
    assert_eq!(ids[0], im_start);
    assert!(ids.contains(&im_end));
    assert_eq!(
        t.decode_with(&ids, true),
        "<|im_start|>user\nhi<|im_end|>\n"
    );

    // Phi-3 (SPM): llama.cpp makes its special tokens swallow the white space after them.
    let t = load("phi-3");
    let user = t.token_id("<|user|>").expect("<|user|>");
    let end = t.token_id("<|end|>").expect("<|end|>");
    assert!(t.is_eog(end));
    assert_eq!(
        t.encode("<|user|>\n  hi<|end|>\n", false, true),
        [vec![user], t.encode("hi", false, false), vec![end]].concat()
    );
    // Not when the text is not parsed for specials.
    assert!(!t.encode("<|user|>\n", false, false).contains(&user));

    // GPT-2: bos = eos = <|endoftext|>, not added.
    let t = load("gpt-2");
    assert!(!t.add_bos() && t.is_eog(50_256));
    assert_eq!(t.encode("hi", true, false), t.encode("hi", false, false));
}

#[test]
fn long_texts_are_fast() {
    let unit = "The quick brown fox — jumps over 13 lazy dogs; naïve café 東京 🚀\n\n    \
                fn main() { let x = 1_000_000; }\t'll 'RE\r\n";
    let ordinary = unit.repeat(100_000 / unit.len() + 1);
    let one_word = "a".repeat(100_000);
    let spaces = " ".repeat(100_000);
    let digits = "1234567890".repeat(10_000);
    for name in ["llama-bpe", "qwen2", "gpt-2", "gemma-4", "deepseek-llm"] {
        let t = load(name);
        for (what, text) in [
            ("ordinary", &ordinary),
            ("one word", &one_word),
            ("spaces", &spaces),
            ("digits", &digits),
        ] {
            let start = Instant::now();
            let ids = t.encode(text, false, false);
            let ms = start.elapsed().as_secs_f64() * 1e3;
            eprintln!(
                "{name:>12} {what:>8}: {} KB -> {} ids in {ms:.1} ms",
                text.len() / 1000,
                ids.len()
            );
            assert_eq!(&t.decode(&ids), text, "{name} {what}");
        }
    }
}
