//! `ryzanstein serve`: the OpenAI-compatible HTTP server on one model.
//!
//! Settings come from flags, then `RYZANSTEIN_*` environment variables, then the TOML file of
//! `--config`, then defaults (`ryzanstein::config`). The server answers `/health` as soon as it
//! listens and loads the model in the background; SIGTERM or SIGINT stops it: no new requests,
//! the ones in flight finish, the engine drains, exit 0.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use ryzanstein::config::{ServeConfig, ServeSettings};
use ryzanstein::server::{Server, ServerOptions};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A TOML file of settings: `key = value` lines with the flags' names in snake_case.
    #[arg(long, env = "RYZANSTEIN_CONFIG")]
    config: Option<PathBuf>,
    /// Print the resolved settings as TOML and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    settings: ServeSettings,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let file = match &a.config {
        Some(p) => ServeSettings::from_file(p)?,
        None => ServeSettings::default(),
    };
    // RUST_LOG ranks below --log-level / RYZANSTEIN_LOG_LEVEL and above the file.
    let log_flag = a.settings.log_level.clone();
    let cfg = ServeConfig::resolve(a.settings, file)?;
    if a.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let filter = log_flag
        .or_else(|| std::env::var("RUST_LOG").ok())
        .or_else(|| cfg.log_level.clone())
        .unwrap_or_else(|| "info".into());
    init_logging(&filter)?;
    let model_path = super::model_path(cfg.model.clone())?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("cannot install signal handlers")?;
    }
    let listen = cfg.listen.clone();
    let server = Server::start(ServerOptions {
        config: cfg,
        model_path,
        panic_route: false,
    })
    .with_context(|| format!("cannot listen on {listen}"))?;
    // The tests and scripts read this line to find the port (listen may say port 0).
    eprintln!("listening on http://{}", server.local_addr());
    while !stop.load(Ordering::Relaxed) {
        if let Some(e) = server.load_error() {
            let e = e.to_string();
            server.shutdown();
            bail!("{e}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("signal received: draining");
    server.shutdown();
    Ok(())
}

fn init_logging(filter: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}
