//! `ryzanstein bench`: load-test any OpenAI-compatible server (see `ryzanstein::bench`).
//! With `--compare URL_B` it alternates the two servers level by level and prints A÷B ratios.
//! A progress bar runs on stderr while a level runs (hidden when stderr is not a terminal);
//! `--json` writes the whole report and `--svg DIR` draws the charts. `--workload` picks the
//! requests: random token ids (or `--prompts`), a shared document with a question each
//! (`shared-prefix`), or conversations resending their history (`multi-turn`, which adds TTFT
//! by turn to the table and the report). For admission and overload tests, `--connections`
//! (an alias of `--concurrency`) runs up to thousands of keep-alive clients, `--duration-s`
//! runs each closed-loop level for a fixed time, and `--on-503` says what a refused client
//! does (record it, resend at once, or resend after `Retry-After`); the table then adds 503s
//! and answered requests per second.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use ryzanstein::bench::conversation::{
    document, DOCUMENT_SEED, DOCUMENT_WORDS_DEFAULT, DOCUMENT_WORDS_MAX,
};
use ryzanstein::bench::{
    chart, parse_prompts, raise_descriptor_limit, run_level, run_level_timed, Arrivals,
    LevelReport, On503, Slo, Workload, WorkloadKind, SPARE_DESCRIPTORS,
};

/// Largest prompt file read.
const PROMPT_FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Most turns a conversation may have: beyond this it is a typo.
const TURNS_MAX: usize = 1_000;

/// `--on-503`.
#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum On503Arg {
    /// Record the request as error `http_503` and send the next one.
    Fail,
    /// Resend the same request at once (as wrk and many HTTP clients do).
    Immediate,
    /// Sleep the 503's `Retry-After` seconds (1 when absent), then resend.
    Honor,
}

impl From<On503Arg> for On503 {
    fn from(a: On503Arg) -> On503 {
        match a {
            On503Arg::Fail => On503::Fail,
            On503Arg::Immediate => On503::Immediate,
            On503Arg::Honor => On503::Honor,
        }
    }
}

/// `--workload`.
#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum WorkloadArg {
    /// Random token-id prompts (`--prompt-tokens`, `--token-range`), or `--prompts`.
    Random,
    /// One shared document as the system message of every chat request, then a question of
    /// the request's own.
    SharedPrefix,
    /// Conversations of `--turns` chat requests over the document, each resending the
    /// history with the server's answers; `--requests` counts conversations.
    MultiTurn,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Server base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// A second server to run side by side (levels alternate between the two).
    #[arg(long)]
    compare: Option<String>,
    /// What the requests are: random (the default), shared-prefix or multi-turn.
    #[arg(long, value_enum, default_value_t = WorkloadArg::Random)]
    workload: WorkloadArg,
    /// Words of the shared document (shared-prefix, multi-turn); the default is about 1,050
    /// tokens on Gemma 3's tokenizer.
    #[arg(long, default_value_t = DOCUMENT_WORDS_DEFAULT)]
    prefix_words: usize,
    /// Turns per conversation (multi-turn).
    #[arg(long, default_value_t = 8)]
    turns: usize,
    /// Closed-loop levels: numbers of concurrent clients, each with its own keep-alive
    /// connection and thread (`--connections` is the same flag).
    #[arg(
        long,
        visible_alias = "connections",
        value_delimiter = ',',
        default_value = "1,4,16"
    )]
    concurrency: Vec<usize>,
    /// Run each closed-loop level this many seconds instead of a number of requests: clients
    /// send until then and the requests under way finish.
    #[arg(long)]
    duration_s: Option<f64>,
    /// What a client does with a 503: fail (record error http_503, go on), immediate (resend
    /// at once) or honor (resend after Retry-After). Resending stops at the level's end
    /// (--duration-s) or --timeout-s after the first send.
    #[arg(long = "on-503", value_enum, default_value_t = On503Arg::Fail)]
    on_503: On503Arg,
    /// Open-loop levels: request rates (per second, Poisson); replaces --concurrency.
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Most requests in flight in an open-loop level.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Requests per level (default: 4 per client, at least 8); conversations in multi-turn
    /// (default: one per client). Not with --duration-s.
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
    let mut w = workload(&a)?;
    let slo = Slo {
        ttft_ms: a.slo_ttft_ms,
        tpot_ms: a.slo_tpot_ms,
        e2el_ms: a.slo_e2el_ms,
    };
    let levels = levels(&a)?;
    let servers: Vec<&str> = std::iter::once(a.url.as_str())
        .chain(a.compare.as_deref())
        .collect();
    let per_unit = w.kind.requests_per_unit();
    let duration = a.duration_s.map(Duration::from_secs_f64);
    let most_clients = levels.iter().map(|(arr, _)| clients_of(*arr)).max();
    let needed = most_clients.unwrap_or(1) as u64 + SPARE_DESCRIPTORS;
    if let Some(limit) = raise_descriptor_limit(needed).filter(|&l| l < needed) {
        eprintln!(
            "warning: {limit} open files allowed (ulimit -n) for {needed} needed: the \
             connections beyond fail as `io` errors"
        );
    }
    // Warm-up: the first questions (a whole conversation in multi-turn); the levels go on
    // from there, each with questions of its own, the same on both servers.
    let warmup = a.warmup.div_ceil(per_unit);
    for url in &servers {
        if warmup > 0 {
            run_level(
                url,
                &w,
                Arrivals::Closed { clients: 1 },
                warmup,
                &slo,
                &|_| {},
            )
            .with_context(|| format!("warm-up against {url}"))?;
        }
    }
    w.first_index += warmup;
    let mut rows: Vec<Vec<LevelReport>> = vec![Vec::new(); servers.len()];
    let mut table = Table {
        refusals: w.on_503 != On503::Fail,
    };
    table.print_header();
    for &(arr, n) in &levels {
        for (si, url) in servers.iter().enumerate() {
            let bar = progress_bar(duration.map_or(Some(n * per_unit), |_| None), si, arr);
            let on_done = |done: usize| bar.set_position(done as u64);
            let r = match duration {
                Some(d) => run_level_timed(url, &w, clients_of(arr), d, &slo, &on_done),
                None => run_level(url, &w, arr, n, &slo, &on_done),
            }
            .with_context(|| format!("level {arr:?} against {url}"))?;
            bar.finish_and_clear();
            table.print_row(si, &r);
            rows[si].push(r);
        }
        let last: Vec<&LevelReport> = rows.iter().filter_map(|r| r.last()).collect();
        if let [a, b] = last[..] {
            table.print_ratio(a, b);
        }
        print_turns(&last);
        // The next level's questions follow the most any server of this one used.
        w.first_index += match duration {
            Some(_) => last.iter().map(|r| r.started).max().unwrap_or(0),
            None => n,
        };
    }
    if let Some(path) = &a.json {
        let report = serde_json::json!({
            "servers": servers,
            "workload": {
                "kind": w.kind.name(),
                "prompts_file": a.prompts.as_ref().map(|p| p.display().to_string()),
                "prompt_tokens": (w.kind == WorkloadKind::Random && a.prompts.is_none())
                    .then_some(w.prompt_tokens),
                "prefix_words": (w.kind != WorkloadKind::Random).then_some(a.prefix_words),
                "turns": matches!(w.kind, WorkloadKind::MultiTurn { .. }).then_some(a.turns),
                "max_tokens": w.max_tokens,
                "stream": w.stream,
                "ignore_eos": w.ignore_eos,
                "on_503": w.on_503.name(),
                "level_duration_s": a.duration_s,
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

fn clients_of(arr: Arrivals) -> usize {
    match arr {
        Arrivals::Closed { clients } | Arrivals::Open { clients, .. } => clients,
    }
}

/// A bar on stderr for one level of `n` requests (a counter when `n` is not known ahead: a
/// timed level); indicatif hides it when stderr is not a terminal.
fn progress_bar(n: Option<usize>, server: usize, arr: Arrivals) -> ProgressBar {
    let level = match arr {
        Arrivals::Closed { clients } => format!("{clients} clients"),
        Arrivals::Open { rate, .. } => format!("{rate} req/s"),
    };
    let bar = match n {
        Some(n) => ProgressBar::new(n as u64),
        None => ProgressBar::no_length(),
    };
    let template = match n {
        Some(_) => "{prefix} [{bar:30}] {pos}/{len} {elapsed}",
        None => "{prefix} {pos} requests {elapsed}",
    };
    bar.set_style(
        ProgressStyle::with_template(template)
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
    if a.workload != WorkloadArg::Random && a.prompts.is_some() {
        bail!("--prompts goes with --workload random only");
    }
    if !(1..=DOCUMENT_WORDS_MAX).contains(&a.prefix_words) {
        bail!("--prefix-words must be 1 to {DOCUMENT_WORDS_MAX}");
    }
    if !(1..=TURNS_MAX).contains(&a.turns) {
        bail!("--turns must be 1 to {TURNS_MAX}");
    }
    let kind = match a.workload {
        WorkloadArg::Random => WorkloadKind::Random,
        WorkloadArg::SharedPrefix => WorkloadKind::SharedPrefix {
            document: document(a.prefix_words, DOCUMENT_SEED).into(),
        },
        WorkloadArg::MultiTurn => WorkloadKind::MultiTurn {
            document: document(a.prefix_words, DOCUMENT_SEED).into(),
            turns: a.turns,
        },
    };
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
        kind,
        first_index: 0,
        on_503: a.on_503.into(),
    })
}

/// Most clients or requests a level may ask for: beyond this it is a typo.
const LEVEL_MAX: usize = 100_000;
/// Longest timed level: a day.
const DURATION_S_MAX: f64 = 86_400.0;

fn levels(a: &BenchArgs) -> Result<Vec<(Arrivals, usize)>> {
    if let Some(d) = a.duration_s {
        if !(d > 0.0 && d <= DURATION_S_MAX) {
            bail!("--duration-s must be a positive number of seconds, at most {DURATION_S_MAX}");
        }
        if !a.rate.is_empty() || a.requests.is_some() {
            bail!("--duration-s goes with closed-loop levels only, without --rate or --requests");
        }
    }
    let n_for = |clients: usize| match a.workload {
        WorkloadArg::MultiTurn => a.requests.unwrap_or(clients),
        _ => a.requests.unwrap_or((4 * clients).max(8)),
    };
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
        let requests = n.saturating_mul(if a.workload == WorkloadArg::MultiTurn {
            a.turns
        } else {
            1
        });
        // A timed level sends as many requests as its time allows.
        if !ok || (a.duration_s.is_none() && !(1..=LEVEL_MAX).contains(&requests)) {
            bail!("level {arr:?} with {requests} requests is out of range");
        }
    }
    Ok(out)
}

/// The printed table of levels.
struct Table {
    /// Adds 503s per second and answered requests per second: with `--on-503` resending,
    /// and from the first level that got a 503 (the header is printed again then).
    refusals: bool,
}

impl Table {
    fn print_header(&self) {
        let mut line = format!(
            "{:>6} {:>7} {:>6} {:>5} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>5} {:>6}",
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
            "err",
            "cached"
        );
        if self.refusals {
            line.push_str(&format!(" {:>8} {:>8}", "503/s", "ans/s"));
        }
        println!("{line}");
    }

    fn print_row(&mut self, server: usize, r: &LevelReport) {
        if !self.refusals && r.refusals_503 > 0 {
            self.refusals = true;
            self.print_header();
        }
        let rate = r.rate.map_or("-".to_string(), |x| format!("{x:.1}"));
        let mut line = format!(
            "{:>6} {:>7} {:>6} {:>5} {:>8.2} {:>8.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>6} {:>5} {:>6}",
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
            format!("{:.0}%", r.cached_prompt_share * 100.0),
        );
        if self.refusals {
            line.push_str(&format!(
                " {:>8.2} {:>8.2}",
                r.refusals_per_s, r.answered_2xx_per_s
            ));
        }
        println!("{line}");
    }

    /// A÷B of every figure (throughputs: higher is better for A; latencies: lower).
    fn print_ratio(&self, a: &LevelReport, b: &LevelReport) {
        let mut line = format!(
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
        if self.refusals {
            line.push_str(&format!(
                " {:>6} {:>5} {:>6} {:>8.2} {:>8.2}",
                "",
                "",
                "",
                div(a.refusals_per_s, b.refusals_per_s),
                div(a.answered_2xx_per_s, b.answered_2xx_per_s),
            ));
        }
        println!("{line}");
    }
}

fn div(x: f64, y: f64) -> f64 {
    if y > 0.0 {
        x / y
    } else {
        f64::NAN
    }
}

/// Multi-turn: TTFT p50 of each turn index for the level just run, a line per server (and
/// A÷B); the last column is the turn-N TTFT. Nothing for other workloads.
fn print_turns(last: &[&LevelReport]) {
    let Some(first) = last.first().filter(|r| !r.turns.is_empty()) else {
        return;
    };
    let mut head = format!("{:>21}", "TTFT p50 by turn, ms:");
    for t in &first.turns {
        head.push_str(&format!(" {:>8}", format!("turn-{}", t.turn)));
    }
    println!("{head}");
    for (si, r) in last.iter().enumerate() {
        let mut line = format!("{:>21}", ["A", "B"][si.min(1)]);
        for t in &r.turns {
            line.push_str(&format!(" {:>8.1}", t.ttft_ms.p50));
        }
        println!("{line}");
    }
    if let [a, b] = last {
        let mut line = format!("{:>21}", "A÷B");
        for (ta, tb) in a.turns.iter().zip(&b.turns) {
            line.push_str(&format!(" {:>8.2}", div(ta.ttft_ms.p50, tb.ttft_ms.p50)));
        }
        println!("{line}");
    }
}
