//! Inter-token latency of running streams while a long prompt is admitted, measured in-process
//! on the engine (no HTTP): `cargo run --release --example engine_itl -- [MODEL] [STREAMS]
//! [PROMPT_TOKENS]`. Prints the streams' ITL p50/p99/max before and during the long prefill, and
//! the long prompt's time to first token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ryzanstein::engine::{EngineOptions, Event, GenerationRequest, ModelHandle};
use ryzanstein::model::sampler::SamplingParams;
use ryzanstein::model::tokenizer::Tokenizer;
use ryzanstein::model::Model;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = match args.next() {
        Some(p) => p.into(),
        None => std::path::PathBuf::from(std::env::var("HOME")?)
            .join(".cache/ryzanstein/models/gemma-3-270m-q4_k_m.gguf"),
    };
    let n_streams: usize = args.next().map_or(Ok(4), |s| s.parse())?;
    let long_tokens: usize = args.next().map_or(Ok(2000), |s| s.parse())?;
    let opts = EngineOptions {
        n_ctx: 4096,
        max_batch_size: n_streams + 1,
        ..EngineOptions::default()
    };
    let model = Model::load(&path, opts.model_options())?;
    let tok = Tokenizer::from_gguf(model.file())?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
    let h = Arc::new(ModelHandle::start(
        "m",
        Arc::new(model),
        Arc::new(tok),
        opts,
        Arc::new(pool),
    )?);
    let req = |prompt: Vec<u32>, max_tokens| GenerationRequest {
        prompt,
        max_tokens,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        token_group: 1,
    };
    // Arrival times of every token of every stream.
    let stamps: Arc<Mutex<Vec<Vec<Instant>>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 0..n_streams {
        let s = h.submit(req(vec![2, 100 + i as u32, 200, 300], 100_000))?;
        let (stamps, stop) = (stamps.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut mine = Vec::new();
            while let Some(ev) = s.recv() {
                if let Event::Token(_) = ev {
                    mine.push(Instant::now());
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            stamps.lock().unwrap().push(mine);
            // Dropping `s` cancels the stream.
        }));
    }
    std::thread::sleep(Duration::from_secs(3));
    let t_long = Instant::now();
    let long: Vec<u32> = (0..long_tokens)
        .map(|i| 1000 + (i as u32 * 7919) % 20000)
        .collect();
    let s = h.submit(req(long, 1))?;
    let mut ttft = None;
    while let Some(ev) = s.recv() {
        if let Event::Token(_) = ev {
            ttft = Some(t_long.elapsed());
        }
    }
    let t_end = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let all = stamps.lock().unwrap().clone();
    // Inter-token gaps of each stream whose later token arrived in [from, to].
    let gaps = |from: Instant, to: Instant| {
        let mut g: Vec<f64> = all
            .iter()
            .flat_map(|ts| ts.windows(2))
            .filter(|w| w[1] >= from && w[1] <= to)
            .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
            .collect();
        g.sort_by(f64::total_cmp);
        g
    };
    let pct = |g: &[f64], q: f64| g[((q * g.len() as f64).ceil() as usize).clamp(1, g.len()) - 1];
    let idle = gaps(t_long - Duration::from_secs(2), t_long);
    let busy = gaps(t_long, t_end);
    println!("streams {n_streams}, long prompt {long_tokens} tokens");
    println!(
        "idle ITL ms:    p50 {:.1}  p99 {:.1}  max {:.1}  ({} gaps)",
        pct(&idle, 0.5),
        pct(&idle, 0.99),
        idle[idle.len() - 1],
        idle.len()
    );
    println!(
        "prefill ITL ms: p50 {:.1}  p99 {:.1}  max {:.1}  ({} gaps)",
        pct(&busy, 0.5),
        pct(&busy, 0.99),
        busy[busy.len() - 1],
        busy.len()
    );
    println!(
        "ratio p99: {:.2}   long prompt TTFT: {:.2} s",
        pct(&busy, 0.99) / pct(&idle, 0.99),
        ttft.unwrap_or_default().as_secs_f64()
    );
    Ok(())
}
