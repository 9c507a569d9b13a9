//! `ryzanstein bench` against the real server (in-process on 127.0.0.1:0): the report's
//! counts and token usage must add up. Timings are never asserted (shared, noisy machines).

mod common;
mod server_support;

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use ryzanstein::bench::conversation::{document, DOCUMENT_SEED, DOCUMENT_WORDS_DEFAULT};
use ryzanstein::bench::{
    parse_prompts, run_level, run_level_timed, Arrivals, On503, Slo, Workload, WorkloadKind,
};
use ryzanstein::client::{Client, ClientConfig};
use ryzanstein::server::Server;
use serde_json::Value;

fn server() -> std::net::SocketAddr {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| server_support::start(server_support::test_config(), false))
        .local_addr()
}

fn workload(stream: bool) -> Workload {
    Workload {
        model: None,
        prompt_tokens: 7,
        max_tokens: 3,
        stream,
        token_range: (100, 1000),
        ignore_eos: true,
        timeout: Duration::from_secs(120),
        seed: 11,
        prompts: None,
        kind: WorkloadKind::Random,
        first_index: 0,
        on_503: On503::Fail,
    }
}

#[test]
fn closed_loop_counts_and_usage_add_up_streamed_and_not() {
    let url = format!("http://{}", server());
    for stream in [true, false] {
        let r = run_level(
            &url,
            &workload(stream),
            Arrivals::Closed { clients: 3 },
            9,
            &Slo {
                e2el_ms: Some(1e9),
                ..Slo::default()
            },
            &|_| {},
        )
        .expect("level");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.completed, 9);
        assert_eq!(
            r.prompt_tokens,
            9 * 7,
            "token-id prompts are billed as sent"
        );
        assert_eq!(
            r.completion_tokens,
            9 * 3,
            "ignore_eos: exactly max_tokens each"
        );
        assert!(
            r.connections_opened <= 3,
            "keep-alive: {}",
            r.connections_opened
        );
        assert!(r.goodput.is_some());
        assert!(r.ttft_ms.p50 > 0.0 && r.e2el_ms.max >= r.ttft_ms.max);
        if stream {
            // Three tokens per request: two gaps each.
            assert!(r.itl_ms.p50 > 0.0 && r.tpot_ms.p50 > 0.0);
        }
    }
}

#[test]
fn open_loop_completes_every_request() {
    let url = format!("http://{}", server());
    let r = run_level(
        &url,
        &workload(true),
        Arrivals::Open {
            rate: 50.0,
            clients: 8,
        },
        10,
        &Slo::default(),
        &|_| {},
    )
    .expect("level");
    assert_eq!((r.completed, r.errors.len()), (10, 0), "{:?}", r.errors);
    assert_eq!(r.rate, Some(50.0));
    assert_eq!(r.completion_tokens, 30);
    assert!(r.goodput.is_none());
}

#[test]
fn errors_are_counted_by_kind() {
    let url = format!("http://{}", server());
    let mut w = workload(false);
    w.model = Some("no-such-model".into());
    let r = run_level(
        &url,
        &w,
        Arrivals::Closed { clients: 2 },
        4,
        &Slo::default(),
        &|_| {},
    )
    .expect("level");
    assert_eq!(r.completed, 0);
    assert_eq!(r.errors.get("http_404"), Some(&4));
    let r = run_level(
        "http://127.0.0.1:1",
        &workload(false),
        Arrivals::Closed { clients: 1 },
        2,
        &Slo::default(),
        &|_| {},
    )
    .expect("level");
    assert_eq!(r.errors.get("connect_refused"), Some(&2));
}

/// The binary end to end: a JSONL prompt file (text, token ids, chat), the JSON report and the
/// SVG charts. Prompt tokens billed must equal what `/tokenize` says of each text.
#[test]
fn cli_with_a_prompt_file_writes_json_and_charts() {
    let addr = server();
    let dir = std::env::temp_dir().join(format!("ryzanstein-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(
        &prompts,
        concat!(
            "\"The capital of France is\"\n",
            "{\"prompt\": [2, 9259, 1902], \"max_tokens\": 2}\n",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"Say hello.\"}]}\n",
        ),
    )
    .unwrap();
    let json = dir.join("report.json");
    let svg = dir.join("charts");
    let out = Command::new(env!("CARGO_BIN_EXE_ryzanstein"))
        .args(["bench", "--url", &format!("http://{addr}")])
        .args([
            "--concurrency",
            "1,3",
            "--requests",
            "6",
            "--max-tokens",
            "4",
        ])
        .args(["--warmup", "0", "--prompts"])
        .arg(&prompts)
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stderr.contains('['),
        "no progress bar off a terminal: {stderr}"
    );

    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let levels = report["levels"][0].as_array().expect("levels of server A");
    assert_eq!(levels.len(), 2);
    // Requests take the prompts in turn: 6 requests = each prompt twice.
    let client = Client::new(ClientConfig::new(&format!("http://{addr}"))).unwrap();
    let text_tokens = client.tokenize("The capital of France is").unwrap().len() as u64;
    let specs = parse_prompts(&std::fs::read_to_string(&prompts).unwrap()).unwrap();
    assert_eq!(specs.len(), 3);
    for l in levels {
        assert_eq!(l["completed"], 6, "{l}");
        assert_eq!(l["errors"], serde_json::json!({}));
        assert_eq!(l["completion_tokens"], 2 * (4 + 2 + 4), "{l}");
        let prompt = l["prompt_tokens"].as_u64().unwrap();
        assert_eq!(prompt % 2, 0, "each prompt sent twice");
        let chat_tokens = prompt / 2 - (text_tokens + 3);
        assert!(chat_tokens > 3, "the chat template adds turn markers");
    }
    for f in ["throughput.svg", "latency.svg"] {
        let s = std::fs::read_to_string(svg.join(f)).expect(f);
        assert!(s.starts_with("<svg") && s.contains("<polyline"), "{f}");
        assert!(s.contains("concurrent clients"), "{f}: axis label");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The documented default: the shared document is 1,000–1,100 tokens on Gemma 3's tokenizer.
#[test]
fn the_default_document_is_about_a_thousand_tokens() {
    let client = Client::new(ClientConfig::new(&format!("http://{}", server()))).unwrap();
    let n = client
        .tokenize(&document(DOCUMENT_WORDS_DEFAULT, DOCUMENT_SEED))
        .unwrap()
        .len();
    assert!((1000..=1100).contains(&n), "{n} tokens");
}

/// Runs `ryzanstein bench` with `args` against the test server; returns stdout and the report.
fn bench_cli(name: &str, args: &[&str]) -> (String, Value) {
    bench_cli_at(server(), name, args)
}

/// Runs `ryzanstein bench` with `args` against the server at `addr`.
fn bench_cli_at(addr: std::net::SocketAddr, name: &str, args: &[&str]) -> (String, Value) {
    let dir = std::env::temp_dir().join(format!("ryzanstein-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ryzanstein"))
        .args(["bench", "--url", &format!("http://{addr}")])
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (stdout, report)
}

/// Every request carries the whole (short) document and a question of its own.
#[test]
fn cli_shared_prefix_counts_add_up() {
    let (_, report) = bench_cli(
        "shared-prefix",
        &[
            "--workload",
            "shared-prefix",
            "--prefix-words",
            "60",
            "--concurrency",
            "2",
            "--requests",
            "4",
            "--max-tokens",
            "2",
            "--warmup",
            "1",
        ],
    );
    assert_eq!(report["workload"]["kind"], "shared-prefix");
    assert_eq!(report["workload"]["prefix_words"], 60);
    let l = &report["levels"][0][0];
    assert_eq!(
        (&l["completed"], &l["errors"]),
        (&4.into(), &serde_json::json!({}))
    );
    assert_eq!(l["completion_tokens"], 4 * 2);
    let client = Client::new(ClientConfig::new(&format!("http://{}", server()))).unwrap();
    let doc_tokens = client.tokenize(&document(60, DOCUMENT_SEED)).unwrap().len() as u64;
    let per_request = l["prompt_tokens"].as_u64().unwrap() / 4;
    assert!(
        per_request > doc_tokens + 8,
        "{per_request} vs {doc_tokens}"
    );
    assert!(l["cached_prompt_tokens"].is_u64() && l["cached_prompt_share"].is_f64());
    assert_eq!(l["turns"], serde_json::json!([]));
}

/// Two conversations of three turns, against the server twice over (`--compare` with the
/// same URL): each turn's prompt holds the previous ones, and the per-turn report is there.
#[test]
fn cli_multi_turn_reports_every_turn() {
    let url = format!("http://{}", server());
    let (stdout, report) = bench_cli(
        "multi-turn",
        &[
            "--compare",
            &url,
            "--workload",
            "multi-turn",
            "--turns",
            "3",
            "--prefix-words",
            "40",
            "--concurrency",
            "2",
            "--max-tokens",
            "3",
            "--warmup",
            "0",
        ],
    );
    assert_eq!(report["workload"]["turns"], 3);
    assert!(
        stdout.contains("TTFT p50 by turn") && stdout.contains("turn-3"),
        "{stdout}"
    );
    for server in report["levels"].as_array().unwrap() {
        let l = &server[0];
        assert_eq!(l["completed"], 2 * 3, "one conversation per client: {l}");
        assert_eq!(l["errors"], serde_json::json!({}));
        assert_eq!(l["completion_tokens"], 2 * 3 * 3);
        let turns = l["turns"].as_array().unwrap();
        assert_eq!(turns.len(), 3);
        let prompt: Vec<u64> = turns
            .iter()
            .map(|t| t["prompt_tokens"].as_u64().unwrap())
            .collect();
        assert_eq!(
            prompt.iter().sum::<u64>(),
            l["prompt_tokens"].as_u64().unwrap()
        );
        // Each turn resends the last question and the 3-token answer, plus a new question.
        assert!(prompt.windows(2).all(|w| w[1] > w[0] + 2 * 3), "{prompt:?}");
        for (i, t) in turns.iter().enumerate() {
            assert_eq!((&t["turn"], &t["completed"]), (&(i + 1).into(), &2.into()));
            assert!(t["ttft_ms"]["p50"].as_f64().unwrap() > 0.0);
        }
    }
}

/// A conversation whose turn fails sends no more turns; they count as `abandoned`.
#[test]
fn a_failed_turn_abandons_the_rest_of_its_conversation() {
    let mut w = workload(true);
    w.model = Some("no-such-model".into());
    w.kind = WorkloadKind::MultiTurn {
        document: document(20, 1).into(),
        turns: 3,
    };
    let r = run_level(
        &format!("http://{}", server()),
        &w,
        Arrivals::Closed { clients: 2 },
        2,
        &Slo::default(),
        &|_| {},
    )
    .expect("level");
    assert_eq!(r.completed, 0);
    assert_eq!(r.errors.get("http_404"), Some(&2));
    assert_eq!(r.errors.get("abandoned"), Some(&(2 * 2)));
    assert_eq!(r.turns.len(), 3);
}

/// A timed level against the real server: clients send until the deadline, and the report
/// carries the overload fields (no 503 at two clients).
#[test]
fn timed_level_against_the_server() {
    let r = run_level_timed(
        &format!("http://{}", server()),
        &Workload {
            on_503: On503::Honor,
            ..workload(true)
        },
        2,
        Duration::from_millis(500),
        &Slo::default(),
        &|_| {},
    )
    .expect("level");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.completed >= 2 && r.started == r.completed, "{r:?}");
    assert_eq!(r.completion_tokens, 3 * r.completed as u64);
    assert_eq!((r.refusals_503, r.refusals_per_s), (0, 0.0));
    assert_eq!(r.answered_2xx_per_s, r.request_throughput);
    assert!(r.duration_s >= 0.5);
    assert!(r.first_send_to_answer_ms.p50 >= r.e2el_ms.p50 * 0.99);
}

/// A server on 127.0.0.1 that answers every request to any path at once (a thread per
/// connection, keep-alive): a 503 with `Retry-After: 0` for every third request, else a
/// non-streamed completion of one token. For the bench's own machinery at a thousand
/// connections, which the model server would take minutes to answer.
fn fake_server() -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(4096).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            let count = count.clone();
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let body = br#"{"choices":[{"text":"x"}],"usage":{"prompt_tokens":2,"completion_tokens":1}}"#;
                    let ok = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                        body.len(),
                        String::from_utf8_lossy(body)
                    );
                    let refused = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n";
                    let mut r = BufReader::new(s);
                    let mut line = String::new();
                    loop {
                        let mut len = 0;
                        loop {
                            line.clear();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            let l = line.to_ascii_lowercase();
                            if let Some(v) = l.strip_prefix("content-length:") {
                                len = v.trim().parse().unwrap();
                            }
                        }
                        let mut req = vec![0; len];
                        if r.read_exact(&mut req).is_err() {
                            return;
                        }
                        let out = if count.fetch_add(1, Ordering::Relaxed) % 3 == 2 {
                            refused.as_bytes()
                        } else {
                            ok.as_bytes()
                        };
                        if r.get_mut().write_all(out).is_err() {
                            return;
                        }
                    }
                })
                .unwrap();
        }
    });
    addr
}

/// `--connections 1000 --duration-s 1 --on-503 honor`: a thousand keep-alive clients, each
/// resending what is refused; the table adds 503s and answered requests per second.
#[test]
fn cli_a_thousand_connections_honoring_503() {
    let (stdout, report) = bench_cli_at(
        fake_server(),
        "connections",
        &[
            "--connections",
            "1000",
            "--duration-s",
            "1",
            "--on-503",
            "honor",
            "--no-stream",
            "--warmup",
            "0",
        ],
    );
    assert_eq!(report["workload"]["on_503"], "honor");
    assert_eq!(report["workload"]["level_duration_s"], 1.0);
    let l = &report["levels"][0][0];
    assert_eq!(l["clients"], 1000);
    assert_eq!(l["connections_opened"], 1000, "one keep-alive each: {l}");
    let completed = l["completed"].as_u64().unwrap();
    let refusals = l["refusals_503"].as_u64().unwrap();
    // Only a request still refused at the deadline is not resent, and ends as http_503.
    let abandoned = l["errors"]["http_503"].as_u64().unwrap_or(0);
    assert_eq!(
        l["errors"].as_object().unwrap().len(),
        usize::from(abandoned > 0),
        "{l}"
    );
    assert!(completed >= 1000, "{l}");
    assert_eq!(l["started"], completed + abandoned, "{l}");
    // Every third send is refused: sends = completed + refusals, a third of them refused.
    assert!((2 * refusals).abs_diff(completed) <= 2, "{l}");
    assert_eq!(l["completion_tokens"], completed);
    let per_s = |k: &str| l[k].as_f64().unwrap();
    assert!(per_s("duration_s") >= 1.0);
    assert!((per_s("refusals_per_s") - refusals as f64 / per_s("duration_s")).abs() < 1e-6);
    assert_eq!(per_s("answered_2xx_per_s"), per_s("request_throughput"));
    assert!(l["first_send_to_answer_ms"]["p99"].is_f64());
    let header = stdout.lines().next().unwrap_or("");
    assert!(
        header.contains("503/s") && header.contains("ans/s"),
        "{stdout}"
    );
}

/// Flags that do not go together are refused before any request.
#[test]
fn cli_refuses_duration_with_a_request_count_or_a_rate() {
    for extra in [["--requests", "4"], ["--rate", "5"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_ryzanstein"))
            .args(["bench", "--url", "http://127.0.0.1:1", "--duration-s", "1"])
            .args(extra)
            .output()
            .expect("run bench");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--duration-s"), "{stderr}");
    }
}
