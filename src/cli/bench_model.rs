//! `ryzanstein bench-model`: prefill and decode speed of the forward pass, measured like
//! llama-bench's `pp` and `tg` tests (random tokens; prefill as one batch; decode one token at a
//! time from an empty cache; logits computed for the last token of each call).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use ryzanstein::model::{BatchToken, Model, ModelOptions};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The GGUF file (default: the default model in the cache).
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// Prompt length of the prefill test, in tokens (0 skips it).
    #[arg(short = 'p', long, default_value_t = 512)]
    n_prompt: usize,
    /// Tokens of the decode test (0 skips it).
    #[arg(short = 'n', long, default_value_t = 128)]
    n_gen: usize,
    /// Sequences decoded together in the decode test (one token each per step, all with
    /// logits, as the server's batched decode does); tokens/s counts all of them.
    #[arg(short, long, default_value_t = 1)]
    batch: usize,
    /// Compute threads.
    #[arg(short, long, default_value_t = 2)]
    threads: usize,
    /// Repetitions of each test.
    #[arg(short, long, default_value_t = 3)]
    reps: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Most sequences `--batch` takes: each holds a logits row (1 MiB for a 262,144-token
/// vocabulary) and a KV cache, and the server batches at most `max_batch_size` (32 by default).
const BATCH_MAX: usize = 256;

pub fn run(a: BenchArgs) -> Result<()> {
    if a.reps == 0 || a.threads == 0 || a.batch == 0 {
        bail!("--reps, --threads and --batch must be at least 1");
    }
    if a.batch > BATCH_MAX {
        bail!("--batch {} is over {BATCH_MAX}", a.batch);
    }
    let path = super::model_path(a.model.clone())?;
    let opts = ModelOptions {
        n_ctx: (a.n_prompt.max(a.n_gen) + 1).max(16),
        n_seq: a.batch,
        max_batch_tokens: a.n_prompt.max(a.batch),
        max_logit_rows: a.batch,
    };
    let model = Model::load(&path, opts)?;
    let pool = super::compute_pool(a.threads)?;
    let n_vocab = model.config().n_vocab as u64;
    let mut rng = 0x5EED_u64;
    let mut next_token = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n_vocab) as u32
    };
    let mut state = model.new_state();
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    let mut step = Vec::with_capacity(a.batch);
    // One untimed warm-up of each test, as llama-bench does.
    for rep in 0..=a.reps {
        if a.n_prompt > 0 {
            let batch: Vec<BatchToken> = (0..a.n_prompt)
                .map(|pos| BatchToken {
                    token: next_token(),
                    pos,
                    seq: 0,
                    logits: pos + 1 == a.n_prompt,
                })
                .collect();
            let t0 = Instant::now();
            ryzanstein::team::run(&pool, || model.forward(&mut state, &batch))?;
            if rep > 0 {
                pp.push(a.n_prompt as f64 / t0.elapsed().as_secs_f64());
            }
        }
        if a.n_gen > 0 {
            let t0 = Instant::now();
            for pos in 0..a.n_gen {
                step.clear();
                step.extend((0..a.batch).map(|seq| BatchToken {
                    token: next_token(),
                    pos,
                    seq,
                    logits: true,
                }));
                ryzanstein::team::run(&pool, || model.forward(&mut state, &step))?;
            }
            if rep > 0 {
                tg.push((a.n_gen * a.batch) as f64 / t0.elapsed().as_secs_f64());
            }
        }
    }
    report(&a, &path, &pp, &tg);
    Ok(())
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64;
    (mean, var.sqrt())
}

fn report(a: &BenchArgs, path: &std::path::Path, pp: &[f64], tg: &[f64]) {
    let (pp_mean, pp_sd) = mean_sd(pp);
    let (tg_mean, tg_sd) = mean_sd(tg);
    if a.json {
        let v = serde_json::json!({
            "model": path.display().to_string(), "threads": a.threads, "reps": a.reps,
            "n_prompt": a.n_prompt, "n_gen": a.n_gen, "batch": a.batch,
            "prefill_tokens_per_s": pp_mean, "prefill_sd": pp_sd,
            "decode_tokens_per_s": tg_mean, "decode_sd": tg_sd,
        });
        println!("{v}");
        return;
    }
    println!(
        "model: {}  threads: {}  reps: {}",
        path.display(),
        a.threads,
        a.reps
    );
    if a.n_prompt > 0 {
        println!(
            "pp{:<5} {:>9.2} ± {:.2} tokens/s",
            a.n_prompt, pp_mean, pp_sd
        );
    }
    if a.n_gen > 0 {
        let tg = format!("tg{}", a.n_gen);
        let tg = match a.batch {
            1 => tg,
            b => format!("{tg}x{b}"),
        };
        println!("{tg:<7} {:>9.2} ± {:.2} tokens/s", tg_mean, tg_sd);
    }
}
