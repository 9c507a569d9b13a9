//! The client library against a running server: the model list, a whole completion, a
//! streamed chat answer printed as it arrives, and the pool's figures.
//!
//! ```sh
//! cargo run --release -- serve &                      # or any OpenAI-compatible server
//! cargo run --release --example client -- http://127.0.0.1:8080
//! ```

use std::io::Write;

use ryzanstein::client::{ChatRequest, Client, ClientConfig, CompletionRequest, Error, Message};

fn main() -> Result<(), Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    // A pool of at most 4 connections, 2 of them opened up front.
    let mut cfg = ClientConfig::new(&url).with_max_connections(4);
    cfg.prewarm = 2;
    let client = Client::new(cfg)?;

    for m in client.models()? {
        println!("model: {}", m.id);
    }

    let mut req = CompletionRequest::new("The capital of France is");
    req.max_tokens = Some(12);
    req.temperature = Some(0.0);
    let done = client.completion(&req)?;
    println!("completion: {:?} ({:?})", done.choices[0].text, done.usage);

    let mut chat = ChatRequest::new(vec![Message::new("user", "Write a haiku about the sea.")]);
    chat.max_tokens = Some(48);
    print!("chat: ");
    for chunk in client.chat_stream(&chat)? {
        let chunk = chunk?;
        if let Some(c) = chunk.choices.first() {
            print!("{}", c.text());
            let _ = std::io::stdout().flush();
        }
        if let Some(u) = chunk.usage {
            print!(
                "\n({} prompt + {} generated tokens)",
                u.prompt_tokens, u.completion_tokens
            );
        }
    }
    println!();

    let st = client.stats();
    println!(
        "pool: {} opened, {} requests, reuse rate {:.2}, longest checkout wait {:?}",
        st.opened,
        st.requests,
        st.reuse_rate(),
        st.checkout_wait_max
    );
    Ok(())
}
