//! `ryzanstein bench`: load-test any OpenAI-compatible server (see `ryzanstein::bench`).
//! With `--compare URL_B` it alternates the two servers level by level and prints A÷B ratios.
//! A progress bar runs on stderr while a level runs (hidden when stderr is not a terminal);
//! `--json` writes the whole report and `--svg DIR` draws the charts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use ryzanstein::bench::{chart, parse_prompts, run_level, Arrivals, LevelReport, Slo, Workload};

/// Largest prompt file read.
const PROMPT_FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Server base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// A second server to run side by side (levels alternate between the two).
    #[arg(long)]
    compare: Option<String>,
    /// Closed-loop levels: numbers of concurrent clients.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// Open-loop levels: request rates (per second, Poisson); replaces --concurrency.
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Most requests in flight in an open-loop level.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Requests per level (default: 4 per client, at least 8).
    #[arg(long)]
    requests: Option<usize>,
    /// Prompt length in tokens (random ids from --token-range).
    #[arg(long, default_value_t = 20)]
    prompt_tokens: usize,
    /// Prompts from a JSONL file instead of random token ids, used in turn: each line a JSON
    /// string (a text prompt) or an object with `prompt` (text or token ids) or `messages`
    /// (sent to /v1/chat/completions), and optionally `max_tokens`.
    #[arg(long)]
    prompts: Option<std::path::PathBuf>,
    /// Token ids of the random prompts, LO..HI.
    #[arg(long, default_value = "100..1000")]
    token_range: String,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Non-streaming requests.
    #[arg(long)]
    no_stream: bool,
    /// Stop at end-of-generation tokens instead of asking the server to ignore them.
    #[arg(long)]
    allow_eos: bool,
    /// `model` field of the requests.
    #[arg(long)]
    model: Option<String>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout_s: f64,
    /// Unmeasured requests sent before the first level (per server).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// SLOs for goodput, in milliseconds.
    #[arg(long)]
    slo_ttft_ms: Option<f64>,
    #[arg(long)]
    slo_tpot_ms: Option<f64>,
    #[arg(long)]
    slo_e2el_ms: Option<f64>,
    /// Write the full report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Draw throughput.svg and latency.svg (against concurrency or rate) into this directory.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let w = workload(&a)?;
    let slo = Slo {
        ttft_ms: a.slo_ttft_ms,
        tpot_ms: a.slo_tpot_ms,
        e2el_ms: a.slo_e2el_ms,
    };
    let levels = levels(&a)?;
    let servers: Vec<&str> = std::iter::once(a.url.as_str())
        .chain(a.compare.as_deref())
        .collect();
    for url in &servers {
        if a.warmup > 0 {
            run_level(
                url,
                &w,
                Arrivals::Closed { clients: 1 },
                a.warmup,
                &slo,
                &|_| {},
            )
            .with_context(|| format!("warm-up against {url}"))?;
        }
    }
    let mut rows: Vec<Vec<LevelReport>> = vec![Vec::new(); servers.len()];
    print_header();
    for &(arr, n) in &levels {
        for (si, url) in servers.iter().enumerate() {
            let bar = progress_bar(n, si, arr);
            let r = run_level(url, &w, arr, n, &slo, &|done| bar.set_position(done as u64))
                .with_context(|| format!("level {arr:?} against {url}"))?;
            bar.finish_and_clear();
            print_row(si, &r);
            rows[si].push(r);
        }
        if servers.len() == 2 {
            print_ratio(&rows[0][rows[0].len() - 1], &rows[1][rows[1].len() - 1]);
        }
    }
    if let Some(path) = &a.json {
        let report = serde_json::json!({
            "servers": servers,
            "workload": {
                "prompts_file": a.prompts.as_ref().map(|p| p.display().to_string()),
                "prompt_tokens": w.prompt_tokens,
                "max_tokens": w.max_tokens,
                "stream": w.stream,
                "ignore_eos": w.ignore_eos,
            },
            "levels": rows,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &a.svg {
        for f in chart::write_charts(dir, &servers, &rows).map_err(anyhow::Error::msg)? {
            eprintln!("wrote {}", f.display());
        }
    }
    Ok(())
}

/// A bar on stderr for one level; indicatif hides it when stderr is not a terminal.
fn progress_bar(n: usize, server: usize, arr: Arrivals) -> ProgressBar {
    let bar = ProgressBar::new(n as u64);
    let level = match arr {
        Arrivals::Closed { clients } => format!("{clients} clients"),
        Arrivals::Open { rate, .. } => format!("{rate} req/s"),
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{} {level}", ["A", "B"][server.min(1)]));
    bar
}

fn load_prompts(path: &std::path::Path) -> Result<Vec<ryzanstein::bench::PromptSpec>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .len();
    if len > PROMPT_FILE_BYTES_MAX {
        bail!(
            "{}: {len} bytes; prompt files are at most {PROMPT_FILE_BYTES_MAX}",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    parse_prompts(&text)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{}", path.display()))
}

fn workload(a: &BenchArgs) -> Result<Workload> {
    let (lo, hi) = a
        .token_range
        .split_once("..")
        .and_then(|(l, h)| Some((l.parse().ok()?, h.parse().ok()?)))
        .filter(|(l, h): &(u32, u32)| l < h)
        .with_context(|| {
            format!(
                "--token-range {}: expected LO..HI with LO < HI",
                a.token_range
            )
        })?;
    if a.prompt_tokens == 0 || a.max_tokens == 0 {
        bail!("--prompt-tokens and --max-tokens must be at least 1");
    }
    if !(a.timeout_s > 0.0 && a.timeout_s.is_finite()) {
        bail!("--timeout-s must be a positive number");
    }
    Ok(Workload {
        model: a.model.clone(),
        prompt_tokens: a.prompt_tokens,
        max_tokens: a.max_tokens,
        stream: !a.no_stream,
        token_range: (lo, hi),
        ignore_eos: !a.allow_eos,
        timeout: Duration::from_secs_f64(a.timeout_s),
        seed: 0x5EED,
        prompts: match &a.prompts {
            Some(p) => Some(Arc::new(load_prompts(p)?)),
            None => None,
        },
    })
}

/// Most clients or requests a level may ask for: beyond this it is a typo.
const LEVEL_MAX: usize = 100_000;

fn levels(a: &BenchArgs) -> Result<Vec<(Arrivals, usize)>> {
    let n_for = |clients: usize| a.requests.unwrap_or((4 * clients).max(8));
    let out: Vec<(Arrivals, usize)> = if a.rate.is_empty() {
        a.concurrency
            .iter()
            .map(|&c| (Arrivals::Closed { clients: c }, n_for(c)))
            .collect()
    } else {
        a.rate
            .iter()
            .map(|&r| {
                let n = a.requests.unwrap_or(((r * 20.0) as usize).max(8));
                (
                    Arrivals::Open {
                        rate: r,
                        clients: a.max_in_flight,
                    },
                    n,
                )
            })
            .collect()
    };
    for (arr, n) in &out {
        let ok = match *arr {
            Arrivals::Closed { clients } => (1..=LEVEL_MAX).contains(&clients),
            Arrivals::Open { rate, clients } => {
                rate > 0.0 && rate.is_finite() && (1..=LEVEL_MAX).contains(&clients)
            }
        };
        if !ok || !(1..=LEVEL_MAX).contains(n) {
            bail!("level {arr:?} with {n} requests is out of range");
        }
    }
    Ok(out)
}

fn print_header() {
    println!(
        "{:>6} {:>7} {:>6} {:>5} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>5}",
        "server",
        "clients",
        "rate",
        "done",
        "req/s",
        "tok/s",
        "ttft p50",
        "ttft p99",
        "itl p50",
        "itl p99",
        "tpot p50",
        "e2e p99",
        "conns",
        "err"
    );
}

fn print_row(server: usize, r: &LevelReport) {
    let rate = r.rate.map_or("-".to_string(), |x| format!("{x:.1}"));
    println!(
        "{:>6} {:>7} {:>6} {:>5} {:>8.2} {:>8.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>6} {:>5}",
        ["A", "B"][server.min(1)],
        r.clients,
        rate,
        r.completed,
        r.request_throughput,
        r.output_throughput,
        r.ttft_ms.p50,
        r.ttft_ms.p99,
        r.itl_ms.p50,
        r.itl_ms.p99,
        r.tpot_ms.p50,
        r.e2el_ms.p99,
        r.connections_opened,
        r.errors.values().sum::<usize>(),
    );
}

/// A/B for throughputs (higher is better for A) and B/A... printed plainly as A÷B.
fn print_ratio(a: &LevelReport, b: &LevelReport) {
    let div = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
    println!(
        "{:>6} {:>7} {:>6} {:>5} {:>8.2} {:>8.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        "A÷B",
        "",
        "",
        "",
        div(a.request_throughput, b.request_throughput),
        div(a.output_throughput, b.output_throughput),
        div(a.ttft_ms.p50, b.ttft_ms.p50),
        div(a.ttft_ms.p99, b.ttft_ms.p99),
        div(a.itl_ms.p50, b.itl_ms.p50),
        div(a.itl_ms.p99, b.itl_ms.p99),
        div(a.tpot_ms.p50, b.tpot_ms.p50),
        div(a.e2el_ms.p99, b.e2el_ms.p99),
    );
}
