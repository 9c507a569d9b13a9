//! The `ryzanstein` binary end to end: exit codes, one-line errors, `inspect`, `generate`
//! (greedy text as llama.cpp produced it, seeded determinism, stop strings, `--chat` with the
//! built-in Gemma template and bad templates) and `bench-model`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::TempFile;
use ryzanstein::gguf::writer::GgufWriter;
use ryzanstein::gguf::Value;
use ryzanstein::kernels::GgmlType;

const FRANCE: &str = "The capital of France is";

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ryzanstein"))
        .args(args)
        .env_remove("RYZANSTEIN_NO_SIMD")
        .output()
        .expect("run the ryzanstein binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("utf-8 output")
}

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Exit code 1, nothing on stdout, and exactly one non-empty line on stderr naming `path`.
fn assert_one_line_error(o: &Output, path: &Path) -> String {
    assert_eq!(o.status.code(), Some(1), "{}", describe(o));
    assert!(o.stdout.is_empty(), "{}", describe(o));
    let err = text(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "stderr is not one line: {}", describe(o));
    assert!(!lines[0].trim().is_empty(), "{}", describe(o));
    assert!(
        lines[0].contains(&path.display().to_string()),
        "error does not name {}: {}",
        path.display(),
        describe(o)
    );
    lines[0].to_string()
}

fn model() -> String {
    common::default_model_path().display().to_string()
}

/// The greedy completion of `prompt` (`-n` tokens, 2 threads), checked to succeed.
fn greedy(prompt: &str, n: usize, extra: &[&str]) -> Output {
    let m = model();
    let n = n.to_string();
    let mut args = vec![
        "generate", "-m", &m, "-p", prompt, "-n", &n, "--temp", "0", "-t", "2",
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    o
}

/// llama.cpp's greedy `output_text` for `prompt` from the reference file.
fn reference_output_text(prompt: &str) -> String {
    let row = common::reference_rows()
        .into_iter()
        .find(|r| r.json.get("prompt").and_then(|p| p.as_str()) == Some(prompt))
        .unwrap_or_else(|| panic!("no reference row for {prompt:?}"));
    row.json["output_text"]
        .as_str()
        .expect("output_text")
        .to_string()
}

#[test]
fn a_bad_flag_fails_with_usage_on_stderr() {
    for args in [
        &["generate", "--no-such-flag", "-p", "hi"][..],
        &["generate"][..],
        &["no-such-command"][..],
        &["bench-model", "-n", "many"][..],
    ] {
        let o = run(args);
        assert!(!o.status.success(), "{args:?}: {}", describe(&o));
        assert_ne!(o.status.code(), Some(0), "{args:?}");
        assert!(!o.stderr.is_empty(), "{args:?}: {}", describe(&o));
        assert!(o.stdout.is_empty(), "{args:?}: {}", describe(&o));
    }
}

#[test]
fn a_missing_model_file_is_one_line_naming_the_path() {
    let path = Path::new("/nonexistent.gguf");
    for args in [
        &["generate", "-m", "/nonexistent.gguf", "-p", "hi"][..],
        &["inspect", "/nonexistent.gguf"][..],
        &[
            "bench-model",
            "-m",
            "/nonexistent.gguf",
            "-p",
            "4",
            "-n",
            "1",
            "-r",
            "1",
        ][..],
    ] {
        assert_one_line_error(&run(args), path);
    }
}

#[test]
fn a_corrupt_model_file_is_one_line_naming_the_file() {
    let good = common::tiny_gemma3(None);
    let mut rng = common::Rng(99);
    let random: Vec<u8> = (0..4096).map(|_| rng.next_u64() as u8).collect();
    let files = [
        TempFile::new("truncated", &good[..good.len() / 3]),
        TempFile::new("truncated-data", &good[..good.len() - 100]),
        TempFile::new("random", &random),
        TempFile::new("empty", &[]),
    ];
    for f in &files {
        let p = f.0.display().to_string();
        assert_one_line_error(&run(&["generate", "-m", &p, "-p", "hi", "-n", "2"]), &f.0);
        assert_one_line_error(&run(&["inspect", &p]), &f.0);
    }
}

#[test]
fn an_unsupported_architecture_is_a_clear_one_line_error() {
    let bytes = GgufWriter::new(3)
        .kv("general.architecture", Value::String("mamba".into()))
        .kv("mamba.context_length", Value::U32(2048))
        .kv("mamba.embedding_length", Value::U32(64))
        .kv("mamba.block_count", Value::U32(1))
        .kv("mamba.attention.head_count", Value::U32(2))
        .tensor(
            "token_embd.weight",
            &[64, 4],
            GgmlType::F32,
            vec![0; 64 * 4 * 4],
        )
        .to_bytes();
    let f = TempFile::new("mamba", &bytes);
    let p = f.0.display().to_string();
    let line = assert_one_line_error(&run(&["generate", "-m", &p, "-p", "hi", "-n", "2"]), &f.0);
    assert!(line.contains("'mamba'"), "{line}");
    assert!(line.contains("architecture"), "{line}");
    // `inspect` is architecture-agnostic: it lists the file.
    let o = run(&["inspect", &p]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert!(text(&o.stdout).contains("mamba"), "{}", describe(&o));
}

#[test]
fn inspect_lists_the_default_model() {
    let o = run(&["inspect", &model()]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let out = text(&o.stdout);
    for want in [
        "gemma3",
        "token_embd.weight",
        "Q8_0",
        "[640, 262144]",
        "tensors: 236",
    ] {
        assert!(out.contains(want), "inspect output lacks {want:?}:\n{out}");
    }
    let embd = out
        .lines()
        .find(|l| l.contains("token_embd.weight"))
        .expect("token_embd line");
    assert!(
        embd.contains("Q8_0") && embd.contains("[640, 262144]"),
        "{embd}"
    );
}

#[test]
fn greedy_generation_matches_llama_cpp() {
    let reference = reference_output_text(FRANCE);
    // The text of the reference's first five tokens: up to its sixth space (each of the first
    // tokens of this reply is one space-prefixed word).
    let cut = reference
        .match_indices(' ')
        .nth(5)
        .map(|(i, _)| i)
        .expect("reference has six words");
    let prefix = &reference[..cut];
    assert!(prefix.split(' ').count() >= 5, "{prefix:?}");
    let o = greedy(FRANCE, 8, &[]);
    let out = text(&o.stdout);
    assert!(
        out.starts_with(prefix),
        "stdout {out:?} does not start with llama.cpp's {prefix:?}"
    );
    // Everything printed is llama.cpp's text (8 tokens of it) plus the final newline.
    let body = out.strip_suffix('\n').expect("stdout ends with a newline");
    assert!(
        reference.starts_with(body),
        "stdout {body:?} is not a prefix of {reference:?}"
    );
    let err = text(&o.stderr);
    assert!(
        err.lines().any(|l| l.contains("tokens/s")),
        "no speeds on stderr:\n{err}"
    );
}

#[test]
fn seeded_sampling_is_deterministic() {
    let m = model();
    let args = |seed: &'static str| {
        vec![
            "generate",
            "-m",
            m.as_str(),
            "-p",
            "Once upon a time",
            "-n",
            "12",
            "--temp",
            "0.9",
            "--seed",
            seed,
            "-t",
            "2",
        ]
    };
    let a = run(&args("7"));
    let b = run(&args("7"));
    assert_eq!(a.status.code(), Some(0), "{}", describe(&a));
    assert_eq!(b.status.code(), Some(0), "{}", describe(&b));
    assert!(a.stdout.len() > 1, "nothing generated: {}", describe(&a));
    assert_eq!(
        text(&a.stdout),
        text(&b.stdout),
        "same seed, different text"
    );
    // Another seed may or may not give other text; it must just run.
    let c = run(&args("8"));
    assert_eq!(c.status.code(), Some(0), "{}", describe(&c));
}

#[test]
fn a_stop_string_ends_the_output_before_it() {
    let full = greedy(FRANCE, 12, &[]);
    let full = text(&full.stdout);
    let full = full.strip_suffix('\n').expect("newline");
    // Stop at the fifth word of the greedy output (" the capital of the country …" → "country").
    let word = full
        .split_whitespace()
        .nth(4)
        .expect("five words")
        .to_string();
    let stop = format!(" {word}");
    let at = full.find(&stop).expect("stop string in the output");
    assert!(at > 0);
    let o = greedy(FRANCE, 12, &["--stop", &stop]);
    let out = text(&o.stdout);
    let body = out.strip_suffix('\n').unwrap_or(&out);
    assert_eq!(
        body,
        &full[..at],
        "stop {stop:?}: stdout should end right before it"
    );
    assert!(!out.contains(&stop), "{out:?}");
    // A stop string spanning several tokens, and one that never occurs.
    let stop2 = full[at..]
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let stop2 = format!(" {stop2}");
    if let Some(at2) = full.find(&stop2) {
        let o = greedy(FRANCE, 12, &["--stop", &stop2]);
        assert_eq!(
            text(&o.stdout).strip_suffix('\n'),
            Some(&full[..at2]),
            "stop {stop2:?}"
        );
    }
    let o = greedy(FRANCE, 12, &["--stop", "zzqx-never"]);
    assert_eq!(text(&o.stdout).strip_suffix('\n'), Some(full));
    // A stop string whose start matches the output but whose end does not: the text held
    // back while it might have matched is released in full.
    let near = format!("{stop} zzqx");
    let o = greedy(FRANCE, 12, &["--stop", &near]);
    assert_eq!(
        text(&o.stdout).strip_suffix('\n'),
        Some(full),
        "stop {near:?}"
    );
}

#[test]
fn bench_model_prints_json_speeds() {
    let o = run(&[
        "bench-model",
        "-m",
        &model(),
        "-p",
        "16",
        "-n",
        "4",
        "-r",
        "1",
        "-t",
        "2",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let out = text(&o.stdout);
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    for key in ["prefill_tokens_per_s", "decode_tokens_per_s"] {
        let x = v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {v}"));
        assert!(x.is_finite() && x > 0.0, "{key} = {x}");
    }
    assert_eq!(v["n_prompt"].as_u64(), Some(16), "{v}");
    assert_eq!(v["n_gen"].as_u64(), Some(4), "{v}");
    assert_eq!(v["batch"].as_u64(), Some(1), "{v}");
}

#[test]
fn bench_model_decodes_a_batch_of_sequences() {
    let m = model();
    let args = ["bench-model", "-m", &m, "-p", "0", "-n", "3", "-r", "1"];
    let o = run(&[&args[..], &["-b", "5"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let out = text(&o.stdout);
    assert!(out.contains("tg3x5 "), "{out}");
    for bad in ["0", "100000"] {
        let o = run(&[&args[..], &["-b", bad]].concat());
        assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
        assert!(text(&o.stderr).contains("--batch"), "{}", describe(&o));
    }
}

#[test]
fn bad_generation_settings_are_one_line_errors() {
    let m = model();
    for extra in [
        &["-c", "4"][..],
        &["-c", "0"][..],
        &["-c", "100000"][..],
        &["--top-p", "0"][..],
        &["--temp=-1"][..],
        &["--min-p", "2"][..],
        &["--stop", ""][..],
        &["--logit-bias", "999999999=1"][..],
        &["--logit-bias", "5=inf"][..],
        &["-n", "100000"][..],
    ] {
        let mut args = vec!["generate", "-m", m.as_str(), "-p", FRANCE, "-t", "2"];
        if !extra.contains(&"-n") {
            args.extend_from_slice(&["-n", "4"]);
        }
        args.extend_from_slice(extra);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {}", describe(&o));
        assert!(o.stdout.is_empty(), "{extra:?}: {}", describe(&o));
        let err = text(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{extra:?}: {}", describe(&o));
    }
    let o = run(&["generate", "-m", &m, "-p", "", "-n", "4"]);
    assert_eq!(o.status.code(), Some(1), "empty prompt: {}", describe(&o));
    assert_eq!(
        text(&o.stderr).lines().count(),
        1,
        "empty prompt: {}",
        describe(&o)
    );
}

#[test]
fn a_gemma3_file_without_a_usable_tokenizer_is_a_one_line_error() {
    // The tiny model has token strings only: no tokenizer.ggml.model, scores or types.
    let f = TempFile::new("tiny", &common::tiny_gemma3(None));
    let p = f.0.display().to_string();
    let line = assert_one_line_error(
        &run(&["generate", "-m", &p, "-p", "hi", "-n", "2", "-c", "16"]),
        &f.0,
    );
    assert!(line.contains("tokenizer.ggml.model"), "{line}");
    // A tokenizer model we do not support is named.
    let bytes = common::TinyGemma3::new()
        .with_key("tokenizer.ggml.model", Value::String("gpt2".into()))
        .to_bytes();
    let g = TempFile::new("tiny-gpt2", &bytes);
    let q = g.0.display().to_string();
    let line = assert_one_line_error(
        &run(&["generate", "-m", &q, "-p", "hi", "-n", "2", "-c", "16"]),
        &g.0,
    );
    assert!(line.contains("gpt2"), "{line}");
    // bench-model needs no tokenizer: it runs the tiny model.
    let o = run(&[
        "bench-model",
        "-m",
        &p,
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "1",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let v: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).expect("json");
    assert!(v["decode_tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
}

/// llama.cpp's greedy `output_text` for the reference chat whose last message is `user`.
fn reference_chat_output_text(user: &str) -> String {
    let row = common::reference_rows()
        .into_iter()
        .find(|r| {
            r.endpoint == "/v1/chat/completions"
                && r.json["request"]["messages"]
                    .as_array()
                    .and_then(|m| m.last())
                    .and_then(|m| m["content"].as_str())
                    == Some(user)
        })
        .unwrap_or_else(|| panic!("no reference chat for {user:?}"));
    row.json["output_text"]
        .as_str()
        .expect("output_text")
        .to_string()
}

#[test]
fn chat_generation_uses_the_builtin_gemma_template() {
    let cases = [
        ("What is the capital of Japan?", None),
        (
            "Explain in one sentence what a CPU does.",
            Some("You are a concise assistant."),
        ),
    ];
    for (user, system) in cases {
        let mut extra = vec!["--chat"];
        if let Some(s) = system {
            extra.extend_from_slice(&["--system", s]);
        }
        let o = greedy(user, 8, &extra);
        let out = text(&o.stdout);
        let body = out.strip_suffix('\n').expect("stdout ends with a newline");
        assert!(!body.trim().is_empty(), "{}", describe(&o));
        // The same prompt ids as llama.cpp's chat endpoint give the start of its reply.
        let reference = reference_chat_output_text(user);
        assert!(
            reference.starts_with(body),
            "stdout {body:?} is not a prefix of llama.cpp's {reference:?}"
        );
        let err = text(&o.stderr);
        assert!(
            err.contains("using the built-in gemma format"),
            "the fallback is not reported:\n{err}"
        );
    }
}

#[test]
fn chat_generation_stops_at_end_of_turn() {
    // Forcing <end_of_turn> (id 106) first: generation ends there with nothing printed.
    let o = greedy(
        "What is the capital of Japan?",
        8,
        &["--chat", "--logit-bias", "106=100"],
    );
    assert_eq!(text(&o.stdout), "\n", "{}", describe(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("decode: 1 tokens") && err.contains("finish: Stop"),
        "{err}"
    );
}

/// A file under the temp directory holding `text`, removed on drop.
fn template_file(stem: &str, text: &str) -> TempFile {
    let path = std::env::temp_dir().join(format!(
        "ryzanstein-test-{}-{stem}.jinja",
        std::process::id()
    ));
    std::fs::write(&path, text).expect("write template");
    TempFile(path)
}

#[test]
fn bad_chat_templates_are_one_line_errors() {
    let m = model();
    let chat = |tmpl: &Path| {
        let t = tmpl.display().to_string();
        run(&[
            "generate",
            "-m",
            &m,
            "--chat",
            "--chat-template",
            &t,
            "-p",
            "Hi",
            "-n",
            "2",
        ])
    };
    let bad = template_file("bad-syntax", "{% for m in messages %}\n{{ m.content }\n");
    let line = assert_one_line_error(&chat(&bad.0), &bad.0);
    assert!(line.contains("does not compile"), "{line}");

    let missing = std::env::temp_dir().join("ryzanstein-test-no-such-template.jinja");
    assert_one_line_error(&chat(&missing), &missing);

    let raising = template_file("raises", "{{ raise_exception('no chats today') }}");
    let o = chat(&raising.0);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(o.stdout.is_empty(), "{}", describe(&o));
    assert!(
        text(&o.stderr).contains("no chats today"),
        "{}",
        describe(&o)
    );

    // --chat-template without --chat is a usage error.
    let o = run(&[
        "generate",
        "-m",
        &m,
        "--chat-template",
        "x.jinja",
        "-p",
        "Hi",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
}
