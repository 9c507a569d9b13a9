//! `ryzanstein::client` against the real server (in-process, 127.0.0.1:0) and against tiny
//! scripted servers that close connections the way real servers and proxies do.

mod common;
mod server_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use ryzanstein::client::{
    ChatRequest, Client, ClientConfig, CompletionRequest, Error, Message, Prompt,
};
use ryzanstein::server::Server;
use serde_json::Value;

/// One server for the tests of this file (each test makes its own client and asserts only
/// on that client's figures).
fn server() -> SocketAddr {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| server_support::start(server_support::test_config(), false))
        .local_addr()
}

fn client(cfg: impl FnOnce(&mut ClientConfig)) -> Client {
    let mut c = ClientConfig::new(&format!("http://{}", server()));
    cfg(&mut c);
    Client::new(c).expect("client")
}

fn greedy(prompt: &str, max_tokens: usize) -> CompletionRequest {
    let mut r = CompletionRequest::new(prompt);
    r.max_tokens = Some(max_tokens);
    r.temperature = Some(0.0);
    r.extra.insert("ignore_eos".into(), Value::Bool(true));
    r
}

#[test]
fn every_endpoint_whole_and_streamed_over_one_connection() {
    let c = client(|_| {});
    let models = c.models().expect("models");
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].id, "gemma-3-270m-q4_k_m");
    assert_eq!(c.tokenize("Hello world").unwrap(), [2, 9259, 1902]);

    let req = greedy("The capital of France is", 6);
    let whole = c.completion(&req).expect("completion");
    let usage = whole.usage.expect("usage");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (6, 6));
    assert!(!whole.choices[0].text.is_empty());
    let mut events = 0;
    let mut text = String::new();
    let mut streamed_usage = None;
    for chunk in c.completion_stream(&req).expect("stream") {
        let chunk = chunk.expect("event");
        events += 1;
        text.extend(chunk.choices.iter().map(|c| c.text()));
        streamed_usage = chunk.usage.or(streamed_usage);
    }
    assert!(events >= 7, "one event per token, then usage: {events}");
    assert_eq!(text, whole.choices[0].text, "greedy: same text streamed");
    assert_eq!(streamed_usage, Some(usage));

    let mut chat = ChatRequest::new(vec![Message::new("user", "Say hello.")]);
    chat.max_tokens = Some(5);
    chat.temperature = Some(0.0);
    chat.extra.insert("ignore_eos".into(), Value::Bool(true));
    let whole = c.chat(&chat).expect("chat");
    assert_eq!(whole.choices[0].message.role, "assistant");
    assert_eq!(whole.usage.unwrap().completion_tokens, 5);
    let (text, usage) = c.chat_stream(&chat).unwrap().collect_text().unwrap();
    assert_eq!(text, whole.choices[0].message.content);
    assert_eq!(usage.unwrap().completion_tokens, 5);

    let token_prompt = CompletionRequest {
        prompt: Prompt::Tokens(vec![2, 9259, 1902]),
        max_tokens: Some(1),
        ..CompletionRequest::default()
    };
    assert_eq!(c.completion(&token_prompt).unwrap().choices.len(), 1);

    let st = c.stats();
    assert_eq!(
        st.opened, 1,
        "every call reused one keep-alive connection: {st:?}"
    );
    assert_eq!(st.requests, 7);
    assert_eq!(st.reused, 6);
    assert_eq!(st.open(), 1);
}

#[test]
fn error_statuses_carry_the_message_and_keep_the_connection() {
    let c = client(|_| {});
    let mut req = greedy("x", 1);
    req.model = Some("no-such-model".into());
    match c.completion(&req) {
        Err(Error::Status {
            status: 404,
            message,
            ..
        }) => assert!(message.contains("no-such-model"), "{message}"),
        other => panic!("expected a 404: {other:?}"),
    }
    req.model = None;
    req.temperature = Some(9.0);
    let e = c.completion_stream(&req).err().expect("400");
    assert_eq!(e.kind(), "http_400");
    assert!(c.get_json("/nope").is_err());
    c.models().expect("still fine");
    assert_eq!(
        c.stats().opened,
        1,
        "error bodies are read, the connection reused"
    );
}

#[test]
fn checkout_waits_for_a_connection_then_times_out() {
    let c = client(|c| {
        c.max_connections = 1;
        c.max_idle = 1;
        c.checkout_timeout = Duration::from_millis(150);
    });
    // A stream that is not read holds the only connection.
    let held = c.completion_stream(&greedy("Hello", 2)).expect("stream");
    match c.models() {
        Err(Error::CheckoutTimeout { waited }) => {
            assert!(waited >= Duration::from_millis(150), "{waited:?}")
        }
        other => panic!("expected a checkout timeout: {other:?}"),
    }
    let (text, _) = held.collect_text().unwrap();
    assert!(!text.is_empty());
    c.models().expect("the connection is back");
    let st = c.stats();
    assert_eq!((st.opened, st.checkout_timeouts), (1, 1), "{st:?}");
}

#[test]
fn dropping_a_stream_early_closes_its_connection() {
    let c = client(|_| {});
    let mut s = c
        .completion_stream(&greedy("Once upon a time", 50))
        .unwrap();
    s.next().expect("first event").expect("ok");
    drop(s);
    c.models().unwrap();
    let st = c.stats();
    assert_eq!((st.opened, st.closed), (2, 1), "{st:?}");
}

#[test]
fn prewarm_opens_connections_that_are_then_reused() {
    let c = client(|c| {
        c.max_connections = 4;
        c.max_idle = 4;
        c.prewarm = 4;
    });
    assert_eq!(c.stats().opened, 4);
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                for _ in 0..5 {
                    c.tokenize("warm").unwrap();
                }
            });
        }
    });
    let st = c.stats();
    assert_eq!((st.opened, st.requests), (4, 24), "{st:?}");
}

#[test]
fn idle_connections_past_the_timeout_are_closed_not_reused() {
    let c = client(|c| c.idle_timeout = Duration::from_millis(100));
    c.models().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.models().unwrap();
    let st = c.stats();
    assert_eq!((st.opened, st.closed, st.reused), (2, 1, 0), "{st:?}");
}

#[test]
fn bad_settings_are_refused() {
    for (url, n) in [
        ("https://127.0.0.1:1", 1),
        ("127.0.0.1:1", 1),
        ("http://127.0.0.1:1", 0),
    ] {
        let cfg = ClientConfig::new(url).with_max_connections(n);
        assert_eq!(Client::new(cfg).unwrap_err().kind(), "config", "{url} {n}");
    }
    let c = Client::new(ClientConfig::new("http://127.0.0.1:1")).unwrap();
    assert_eq!(c.models().unwrap_err().kind(), "connect");
}

/// What a scripted connection does: answer `answered` requests, then either close at once
/// (`read_next` false) or read one more request and close without answering.
#[derive(Clone, Copy)]
struct ConnScript {
    answered: usize,
    read_next: bool,
}

/// A server that follows one script per accepted connection, then stops accepting.
fn scripted_server(scripts: Vec<ConnScript>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for script in scripts {
            let Ok((s, _)) = l.accept() else { return };
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut r = BufReader::new(s);
            for _ in 0..script.answered {
                if !read_request(&mut r) {
                    break;
                }
                let body = br#"{"object":"list","data":[{"id":"m"}],"tokens":[1]}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let s = r.get_mut();
                s.write_all(head.as_bytes()).unwrap();
                s.write_all(body).unwrap();
            }
            if script.read_next {
                read_request(&mut r);
            }
            // Dropping the stream closes the connection with no Connection: close header.
        }
    });
    addr
}

/// Reads one request (head and Content-Length body); false at EOF.
fn read_request(r: &mut BufReader<TcpStream>) -> bool {
    let mut len = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).is_ok()
}

fn scripted_client(addr: SocketAddr) -> Client {
    let mut cfg = ClientConfig::new(&format!("http://{addr}"));
    cfg.response_timeout = Duration::from_secs(10);
    Client::new(cfg).unwrap()
}

/// A server that closes an idle connection (as llama-server does after a stream): the probe
/// before reuse sees the close, and the request goes out on a fresh connection.
#[test]
fn a_pooled_connection_closed_by_the_server_is_detected_before_reuse() {
    let once = ConnScript {
        answered: 1,
        read_next: false,
    };
    let c = scripted_client(scripted_server(vec![once, once]));
    c.models().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.models().unwrap();
    let st = c.stats();
    assert_eq!((st.opened, st.reused), (2, 0), "{st:?}");
    // The second connection may also be found closed when it is handed back.
    assert!(st.stale_dropped >= 1, "{st:?}");
    assert_eq!(st.stale_retries, 0);
}

/// The close crosses the request on the wire: the server reads it and hangs up without an
/// answer. A safe request is retried once on a fresh connection; a generation is not.
#[test]
fn a_request_lost_on_a_stale_connection_is_retried_once_if_safe() {
    let close_after_one = ConnScript {
        answered: 1,
        read_next: true,
    };
    let fine = ConnScript {
        answered: 10,
        read_next: false,
    };
    let c = scripted_client(scripted_server(vec![close_after_one, fine]));
    c.models().unwrap();
    assert_eq!(c.tokenize("x").unwrap(), [1], "retried transparently");
    let st = c.stats();
    assert_eq!((st.opened, st.stale_retries), (2, 1), "{st:?}");

    let c = scripted_client(scripted_server(vec![close_after_one]));
    c.models().unwrap();
    let e = c.completion(&greedy("x", 1)).unwrap_err();
    assert_eq!(e.kind(), "connection_lost", "{e}");
    assert_eq!(c.stats().stale_retries, 0);
}

/// DESIGN.md's layering: the client talks to any server and depends on nothing else in the
/// crate (so it could be split into its own crate as it is).
#[test]
fn the_client_depends_on_nothing_else_in_the_crate() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/client");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let src = std::fs::read_to_string(&path).unwrap();
        for (i, line) in src.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            assert!(
                !code.contains("crate::") && !code.contains("super::super"),
                "{}:{}: {line}",
                path.display(),
                i + 1
            );
        }
    }
}
