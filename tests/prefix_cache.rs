//! The prefix cache over HTTP: a full hit, a partial hit and a miss give tokens and
//! log-probabilities bit-identical to a server with the cache off, alone and among 16
//! concurrent requests, greedy and seeded, on the default model (Gemma 3, sliding-window
//! layers) and a fixture of each other architecture; chat history hits the previous turn's
//! prompt and answer with the Gemma and ChatML templates; 32 streams sharing prefixes in a
//! pool small enough to force eviction and preemption, with cancellations, and a model
//! unloaded while it holds cached blocks, never corrupt a block (the dispatcher also audits
//! the pools' bookkeeping after every step in these debug-assertion builds).

mod common;
mod models_support;
mod server_support;

use std::net::SocketAddr;
use std::time::Duration;

use common::Rng;
use models_support::{eventually, serve_dir, TempDir};
use ryzanstein::config::ServeConfig;
use serde_json::{json, Value};
use server_support::*;

const BLOCK: u64 = 16;
const WAIT: Duration = Duration::from_secs(120);

/// A models directory with the default model (twice: its own Gemma template, and ChatML from
/// the manifest) and the Llama, Qwen2, Qwen3 and tiny fixtures.
fn models_dir() -> TempDir {
    let d = TempDir::new("prefix");
    d.link_default_model("gemma.gguf");
    d.link_default_model("gemma-chatml.gguf");
    for (id, file) in [
        ("llama", "llama-q4_k.gguf"),
        ("qwen2", "qwen2-q4_k.gguf"),
        ("qwen3", "qwen3-q4_k.gguf"),
        ("tiny", "tiny-llama.gguf"),
    ] {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/fixtures")
            .join(file);
        std::os::unix::fs::symlink(src, d.path().join(format!("{id}.gguf"))).expect("link");
    }
    d.manifest(
        r#"default = "gemma"
[[model]]
id = "gemma"
path = "gemma.gguf"
[[model]]
id = "llama"
path = "llama.gguf"
[[model]]
id = "qwen2"
path = "qwen2.gguf"
[[model]]
id = "qwen3"
path = "qwen3.gguf"
[[model]]
id = "tiny"
path = "tiny.gguf"
[[model]]
id = "gemma-chatml"
path = "gemma-chatml.gguf"
chat_template = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
"#,
    );
    d
}

fn config(prefix_cache: bool) -> ServeConfig {
    let mut c = test_config();
    c.engine.n_ctx = 2048;
    c.engine.prefix_cache = prefix_cache;
    // These tests are about the cache's contents under load, not admission: bursts of 16
    // and 32 long prompts may be predicted to wait past the default limit on a busy machine.
    c.engine.max_queue_wait_ms = 0;
    c.models.load_wait_ms = 120_000;
    c
}

/// What must be identical between two runs of a request: the text, the finish reason and
/// every log-probability (tokens and top alternatives).
fn outcome(v: &Value) -> Value {
    let c = &v["choices"][0];
    json!([c["text"], c["finish_reason"], c["logprobs"]])
}

fn cached(v: &Value) -> u64 {
    v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("usage.prompt_tokens_details.cached_tokens")
}

fn prompt_tokens(v: &Value) -> u64 {
    v["usage"]["prompt_tokens"].as_u64().expect("prompt_tokens")
}

/// A completion request: greedy, or sampled with a fixed seed.
fn body(model: &str, prompt: &Value, seeded: bool, max_tokens: u64) -> Value {
    let mut b = json!({
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "logprobs": 2,
        "ignore_eos": true, "temperature": 0,
    });
    if seeded {
        b["temperature"] = json!(0.9);
        b["seed"] = json!(4242);
    }
    b
}

fn complete(addr: SocketAddr, b: &Value) -> Value {
    let r = post(addr, "/v1/completions", b);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Two prompts sharing a long prefix, a third sharing nothing, and a fourth that goes on
/// from the first (it hits the first's whole blocks and copies its partial last block). Gemma gets text past its
/// 512-position window (so a hit must restore the sliding layers' window); the fixtures
/// token ids (their vocabularies hold about 1,000).
fn prompts(model: &str) -> [Value; 4] {
    if model.starts_with("gemma") {
        let doc: String = (0..70)
            .map(|i| {
                format!(
                    "Note {i}: the lighthouse keeper counted {} gulls at dawn. ",
                    i * 7
                )
            })
            .collect();
        let a = format!("{doc}\nQuestion: how many gulls in note 3?\nAnswer:");
        return [
            json!(a),
            json!(format!("{doc}\nQuestion: who counted them?\nAnswer:")),
            json!("A completely different prompt about baking bread at home."),
            json!(format!("{a} 21 gulls.\nQuestion: and in note 4?\nAnswer:")),
        ];
    }
    let mut rng = Rng(7);
    let mut ids = |n: usize| -> Vec<u64> { (0..n).map(|_| 260 + rng.below(700) as u64).collect() };
    let shared = ids(300);
    let (ta, tb, other, more) = (ids(9), ids(23), ids(150), ids(30));
    let with = |tail: &[u64]| json!(shared.iter().chain(tail).copied().collect::<Vec<_>>());
    let ta_more: Vec<u64> = ta.iter().chain(&more).copied().collect();
    [with(&ta), with(&tb), json!(other), with(&ta_more)]
}

#[test]
fn hits_are_exact_on_every_architecture_alone_and_among_16_streams() {
    let dir = models_dir();
    let on = serve_dir(dir.path(), config(true));
    let off = serve_dir(dir.path(), config(false));
    for model in ["gemma", "llama", "qwen2", "qwen3"] {
        let ps = prompts(model);
        let max_tokens = if model == "gemma" { 12 } else { 24 };
        // References: each request alone on the server without the cache.
        let reference = |p: usize, seeded: bool| {
            let v = complete(off.local_addr(), &body(model, &ps[p], seeded, max_tokens));
            assert_eq!(cached(&v), 0, "{model}: the cache is off");
            outcome(&v)
        };
        let refs: Vec<[Value; 2]> = (0..4)
            .map(|p| [reference(p, false), reference(p, true)])
            .collect();
        let run = |p: usize, seeded: bool| {
            let v = complete(on.local_addr(), &body(model, &ps[p], seeded, max_tokens));
            assert_eq!(
                outcome(&v),
                refs[p][seeded as usize],
                "{model} prompt {p} seeded {seeded}"
            );
            v
        };
        // A miss, then a full hit: every whole block but the one holding the last token.
        let miss = run(0, false);
        assert_eq!(cached(&miss), 0, "{model}: a new prompt is a miss");
        let full = run(0, false);
        let len_a = prompt_tokens(&full);
        assert_eq!(
            cached(&full),
            (len_a - 1) / BLOCK * BLOCK,
            "{model}: full hit"
        );
        // A partial hit: the shared prefix's whole blocks (the prompt and the answer of the
        // first request are cached too, but B leaves them at its question).
        let part = run(1, false);
        let shared_min = if model == "gemma" { 600 } else { 288 };
        assert!(
            cached(&part) >= shared_min && cached(&part) < prompt_tokens(&part),
            "{model}: partial hit of {} tokens",
            cached(&part)
        );
        assert!(cached(&run(0, true)) > 0 && cached(&run(1, true)) > 0);
        // A request that ends right after the first prompt (one token, never run) leaves the
        // prompt's partial last block behind; the fourth prompt goes on from it, and hits the
        // whole first prompt: whole blocks attached, the partial one copied.
        let one = complete(on.local_addr(), &body(model, &ps[0], false, 1));
        assert_eq!(cached(&one), (len_a - 1) / BLOCK * BLOCK);
        let on_from = run(3, false);
        // (More if an earlier answer began the way the fourth prompt goes on: Gemma's does.)
        assert!(
            cached(&on_from) >= len_a && cached(&on_from) < prompt_tokens(&on_from),
            "{model}: partial block copied: {} of {len_a}",
            cached(&on_from)
        );
        // 16 at once: hits, partial hits and a new prompt, greedy and seeded, streams that
        // share blocks while they run.
        let outs: Vec<(usize, bool, Value)> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..16)
                .map(|i| {
                    let (p, seeded) = (i % 4, i / 4 % 2 == 1);
                    let b = body(model, &ps[p], seeded, max_tokens);
                    let addr = on.local_addr();
                    sc.spawn(move || (p, seeded, complete(addr, &b)))
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("client")).collect()
        });
        for (p, seeded, v) in outs {
            assert_eq!(
                outcome(&v),
                refs[p][seeded as usize],
                "{model} concurrent {p} {seeded}"
            );
        }
    }
    let page = get(on.local_addr(), "/metrics").text();
    assert!(
        metric(
            &page,
            "ryzanstein_prefix_cache_hit_tokens_total{model=\"gemma\"}"
        )
        .unwrap()
            > 0.0
    );
    assert!(
        metric(
            &page,
            "ryzanstein_prefix_cache_miss_tokens_total{model=\"gemma\"}"
        )
        .unwrap()
            > 0.0
    );
    assert!(metric(&page, "ryzanstein_prefix_cache_blocks{model=\"gemma\"}").unwrap() > 0.0);
    assert!(metric(&page, "ryzanstein_prefix_cache_bytes{model=\"gemma\"}").unwrap() > 0.0);
    let page = get(off.local_addr(), "/metrics").text();
    assert_eq!(
        metric(&page, "ryzanstein_prefix_cache_blocks{model=\"gemma\"}"),
        Some(0.0)
    );
    on.shutdown();
    off.shutdown();
}

/// Turn N's prompt (the whole history) hits turn N-1's prompt and answer, up to the last
/// whole block, with the model's Gemma template and with a ChatML template.
#[test]
fn chat_history_hits_the_previous_prompt_and_answer() {
    let dir = models_dir();
    let on = serve_dir(dir.path(), config(true));
    for model in ["gemma", "gemma-chatml"] {
        let mut messages =
            vec![json!({"role": "system", "content": "You answer in one sentence about the sea."})];
        let mut prev: Option<(u64, u64)> = None;
        for turn in 0..4 {
            messages.push(
                json!({"role": "user", "content": format!("Tell me fact {turn} about the sea.")}),
            );
            let r = post(
                on.local_addr(),
                "/v1/chat/completions",
                &json!({"model": model, "messages": messages, "max_tokens": 24, "temperature": 0}),
            );
            assert_eq!(r.status, 200, "{}", r.text());
            let v = r.json();
            let (p, c) = (
                prompt_tokens(&v),
                v["usage"]["completion_tokens"].as_u64().unwrap(),
            );
            match prev {
                None => assert_eq!(cached(&v), 0, "{model}: the first turn is new"),
                Some((pp, pc)) => {
                    // The previous prompt and answer, but for the answer's final token (its
                    // keys and values were never computed): whole blocks attached, the
                    // partial last one copied.
                    let reachable = (pp + pc - 1).min(p - 1);
                    assert!(
                        cached(&v) >= reachable,
                        "{model} turn {turn}: {} cached of {p}; previous {pp} + {pc}",
                        cached(&v)
                    );
                }
            }
            let answer = v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string();
            messages.push(json!({"role": "assistant", "content": answer}));
            prev = Some((p, c));
        }
    }
    on.shutdown();
}

/// Bytes of K/V per position of `model`, from a server's pool size.
fn kv_bytes_per_position(addr: SocketAddr, model: &str, n_seq: u64, n_ctx: u64) -> u64 {
    let page = get(addr, "/metrics").text();
    let total = metric(
        &page,
        &format!("ryzanstein_kv_cache_bytes_total{{model=\"{model}\"}}"),
    )
    .expect("pool size") as u64;
    total / (n_seq * n_ctx)
}

/// 32 streams, in 4 families sharing a long prefix, in a pool that holds a fraction of
/// them: cached blocks are evicted, sequences preempted and resumed (hitting their own
/// blocks), some clients go away mid-answer. Every finished answer equals its reference.
#[test]
fn eviction_preemption_and_cancellation_under_32_streams_never_corrupt_a_block() {
    let dir = models_dir();
    let off = serve_dir(dir.path(), config(false));
    let mut rng = Rng(99);
    let families: Vec<Vec<u64>> = (0..4)
        .map(|_| (0..160).map(|_| 260 + rng.below(700) as u64).collect())
        .collect();
    let requests: Vec<Value> = (0..32)
        .map(|i| {
            let mut p = families[i % 4].clone();
            p.extend((0..3 + i % 5).map(|k| 300 + (i * 7 + k) as u64));
            body("tiny", &json!(p), i % 3 == 0, 48)
        })
        .collect();
    let refs: Vec<Value> = requests
        .iter()
        .map(|b| outcome(&complete(off.local_addr(), b)))
        .collect();
    let per_pos = kv_bytes_per_position(off.local_addr(), "tiny", 32, 2048);
    off.shutdown();

    let mut c = config(true);
    // 64 blocks: about a fifth of what 32 unshared streams would need.
    c.engine.kv_pool_bytes = (64 * BLOCK * per_pos) as usize;
    let on = serve_dir(dir.path(), c);
    for round in 0..3 {
        std::thread::scope(|sc| {
            for (i, b) in requests.iter().enumerate() {
                let (addr, want) = (on.local_addr(), &refs[i]);
                sc.spawn(move || {
                    if i % 8 == 5 {
                        // Streams away after a few events: its blocks are released mid-way.
                        let mut b = b.clone();
                        b["stream"] = json!(true);
                        let mut conn = Conn::open(addr);
                        conn.send("POST", "/v1/completions", &[], b.to_string().as_bytes());
                        let (status, _) = conn.read_head();
                        assert_eq!(status, 200);
                        for _ in 0..3 {
                            let _ = conn.read_chunk();
                        }
                        return; // the connection drops here
                    }
                    let v = complete(addr, b);
                    assert_eq!(&outcome(&v), want, "round {round} request {i}");
                });
            }
        });
    }
    let page = get(on.local_addr(), "/metrics").text();
    let m = |name: &str| metric(&page, &format!("{name}{{model=\"tiny\"}}")).unwrap_or(-1.0);
    assert!(
        m("ryzanstein_prefix_cache_evictions_total") > 0.0,
        "the pool was small enough to evict"
    );
    assert!(m("ryzanstein_prefix_cache_hit_tokens_total") > 0.0);
    assert!(
        m("ryzanstein_preemptions_total") > 0.0,
        "the pool was small enough to preempt"
    );
    assert!(
        eventually(WAIT, || {
            let page = get(on.local_addr(), "/metrics").text();
            metric(&page, "ryzanstein_kv_cache_bytes_used{model=\"tiny\"}") == Some(0.0)
        }),
        "every block in use is returned once the streams end"
    );
    on.shutdown();
}

/// A model unloaded while a stream uses its cached blocks: the stream finishes intact, the
/// cache goes with the engine, and the reloaded model recomputes (a miss) the same answer.
#[test]
fn unloading_a_model_with_cached_blocks() {
    let dir = models_dir();
    let on = serve_dir(dir.path(), config(true));
    let [a, _, _, _] = prompts("tiny");
    let long = body("tiny", &a, false, 400);
    let first = complete(on.local_addr(), &long);
    assert_eq!(cached(&first), 0);
    let reference = outcome(&first);
    std::thread::scope(|sc| {
        let addr = on.local_addr();
        let stream = sc.spawn(move || complete(addr, &long));
        // Unload while that request (a full hit) runs: the unload waits for it.
        std::thread::sleep(Duration::from_millis(20));
        let r = post(on.local_addr(), "/v1/models/tiny/unload", &json!({}));
        assert!(r.status == 202 || r.status == 409, "{}", r.text());
        let v = stream.join().expect("client");
        assert_eq!(outcome(&v), reference);
        assert!(cached(&v) > 0);
    });
    let _ = post(on.local_addr(), "/v1/models/tiny/unload", &json!({}));
    assert!(eventually(WAIT, || {
        let r = get(on.local_addr(), "/v1/models");
        r.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "tiny" && m["state"] == "available")
    }));
    let again = complete(on.local_addr(), &body("tiny", &a, false, 400));
    assert_eq!(cached(&again), 0, "the cache went with the engine");
    assert_eq!(outcome(&again), reference);
    on.shutdown();
}
