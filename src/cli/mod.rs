//! Command-line commands: `serve`, `generate`, `inspect`, `bench-model`, `bench`.

mod bench;
mod bench_model;
mod generate;
mod inspect;
mod serve;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// Ryzanstein: run quantized GGUF language models on the CPU.
#[derive(Parser, Debug)]
#[command(name = "ryzanstein", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the OpenAI-compatible HTTP API (completions, chat, streaming) on a model or a
    /// models directory.
    Serve(Box<serve::ServeArgs>),
    /// Generate text from a prompt, streamed to stdout as it is produced.
    Generate(generate::GenerateArgs),
    /// Print a GGUF file's metadata and tensor table.
    Inspect(inspect::InspectArgs),
    /// Measure prefill and decode speed (tokens/s) the way llama-bench does.
    BenchModel(bench_model::BenchArgs),
    /// Load-test an OpenAI-compatible server (closed or open loop), optionally side by side
    /// with a second one.
    Bench(bench::BenchArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(a) => serve::run(*a),
        Command::Generate(a) => generate::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::BenchModel(a) => bench_model::run(a),
        Command::Bench(a) => bench::run(a),
    }
}

/// The model path: the flag, else `RYZANSTEIN_MODEL`, else the default model in the cache.
fn model_path(flag: Option<PathBuf>) -> Result<PathBuf> {
    let path = match flag.or_else(|| std::env::var_os("RYZANSTEIN_MODEL").map(PathBuf::from)) {
        Some(p) => p,
        None => {
            let cache = match std::env::var_os("RYZANSTEIN_CACHE") {
                Some(c) => PathBuf::from(c),
                None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
                    .join(".cache/ryzanstein"),
            };
            cache.join("models/gemma-3-270m-q4_k_m.gguf")
        }
    };
    if !path.is_file() {
        bail!(
            "model file {} not found (scripts/fetch-model.sh fetches the default model)",
            path.display()
        );
    }
    Ok(path)
}

/// Most compute threads a command accepts: more than this is a typo, not a machine.
const THREADS_MAX: usize = 1024;

/// A rayon pool of `threads` compute threads (0 = one per core).
fn compute_pool(threads: usize) -> Result<rayon::ThreadPool> {
    if threads > THREADS_MAX {
        bail!("--threads {threads} is over the limit of {THREADS_MAX}");
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("compute-{i}"))
        .build()
        .context("could not start the compute threads")
}
