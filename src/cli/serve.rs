//! `ryzanstein serve`: the OpenAI-compatible HTTP server on one model file (`-m`) or on a
//! models directory (`--models-dir`, with an optional `models.toml` manifest).
//!
//! Settings come from flags, then `RYZANSTEIN_*` environment variables, then the TOML file of
//! `--config`, then defaults (`ryzanstein::config`). The catalog is validated before the
//! server starts (a bad manifest is one clear error line). The server answers `/health` as
//! soon as it listens and loads the preload models in the background — with a progress bar
//! per load when stderr is a terminal; SIGTERM or SIGINT stops it: new connections are
//! refused, the requests in flight get `drain_timeout_ms` to finish (then end with an error),
//! the engines stop, exit 0 (a second signal exits at once, code 1). With one file, a failed
//! load — or a model whose engine failed — ends the process (exit 1); with a directory, the
//! other models go on serving.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use ryzanstein::config::{ServeConfig, ServeSettings};
use ryzanstein::engine::{Catalog, ModelEvent, Phase, Subscription};
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
    let (model_path, catalog) = match &cfg.models.dir {
        Some(dir) => {
            let c = Catalog::from_dir(dir, cfg.models.manifest.as_deref())?;
            if c.is_empty() {
                bail!(
                    "{}: no models (no *.gguf file, no manifest entry)",
                    dir.display()
                );
            }
            if cfg.model.is_some() {
                tracing::info!("models_dir is set: the model setting is not used");
            }
            (PathBuf::new(), Some(c))
        }
        None => (super::model_path(cfg.model.clone())?, None),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal during the drain exits at once (code 1): the operator insists.
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())
            .context("cannot install signal handlers")?;
        signal_hook::flag::register(sig, stop.clone()).context("cannot install signal handlers")?;
    }
    log_panics();
    let listen = cfg.listen.clone();
    let server = Server::start(ServerOptions {
        config: cfg,
        model_path,
        catalog,
        // Only a build with the `fault-injection` feature can say yes (tests/faults.rs).
        panic_route: ryzanstein::faults::handler_panic_route(),
    })
    .with_context(|| format!("cannot listen on {listen}"))?;
    // The tests and scripts read this line to find the port (listen may say port 0).
    eprintln!("listening on http://{}", server.local_addr());
    let mut bars = std::io::stderr()
        .is_terminal()
        .then(|| Bars::new(server.registry().subscribe_all()));
    while !stop.load(Ordering::Relaxed) {
        if let Some(e) = server.fatal_error() {
            server.shutdown();
            bail!("{e}");
        }
        match &mut bars {
            Some(b) => b.update(Duration::from_millis(50)),
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    tracing::info!("signal received: draining");
    server.shutdown();
    Ok(())
}

/// Logs every panic as one error line (thread, place, message) instead of the default
/// hook's lines on stderr: a handler, dispatcher or loader panic is caught and reported by
/// the server, and this is the line that says where it happened. With `RUST_BACKTRACE` set
/// (and not "0") the default hook stays, backtrace included.
fn log_panics() {
    if std::env::var("RUST_BACKTRACE").is_ok_and(|v| !v.is_empty() && v != "0") {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let msg = ryzanstein::engine::panic_message(info.payload());
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            at,
            "panic: {msg}"
        );
    }));
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

/// One progress bar per model load, on stderr (only when it is a terminal).
struct Bars {
    rx: Subscription,
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
}

impl Bars {
    fn new(rx: Subscription) -> Bars {
        Bars {
            rx,
            multi: MultiProgress::new(),
            bars: HashMap::new(),
        }
    }

    /// Applies the events that arrive within `wait`.
    fn update(&mut self, wait: Duration) {
        let Ok(ev) = self.rx.recv_timeout(wait) else {
            return;
        };
        self.apply(ev);
        while let Ok(ev) = self.rx.try_recv() {
            self.apply(ev);
        }
    }

    fn apply(&mut self, ev: ModelEvent) {
        let p = &ev.progress;
        if matches!(p.phase, Phase::Evicted | Phase::Unloaded) {
            return;
        }
        let multi = &self.multi;
        let bar = self.bars.entry(ev.model.clone()).or_insert_with(|| {
            let b = multi.add(ProgressBar::new(1000));
            b.set_style(
                ProgressStyle::with_template("{prefix:>16} [{bar:30}] {percent:>3}% {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_prefix(ev.model.clone());
            b
        });
        bar.set_position((ev.percent * 10.0) as u64);
        let phase = serde_json::to_value(p.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let mb = |b: u64| b as f64 / (1 << 20) as f64;
        bar.set_message(format!(
            "{phase} {:.0}/{:.0} MiB, {}/{} tensors",
            mb(p.bytes_done),
            mb(p.bytes_total),
            p.tensors_done,
            p.tensors_total
        ));
        match p.phase {
            Phase::Ready => {
                bar.finish_with_message("ready");
                self.bars.remove(&ev.model);
            }
            Phase::Failed => {
                bar.abandon_with_message(format!("failed: {}", ev.error.as_deref().unwrap_or("")));
                self.bars.remove(&ev.model);
            }
            _ => {}
        }
    }
}
