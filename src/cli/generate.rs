//! `ryzanstein generate`: stream a completion to stdout, speeds to stderr.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use ryzanstein::gguf::GgufFile;
use ryzanstein::model::chat::{ChatMessage, ChatTemplate, TemplateSource, TEMPLATE_BYTES_MAX};
use ryzanstein::model::generate::{generate, GenerateParams};
use ryzanstein::model::sampler::SamplingParams;
use ryzanstein::model::tokenizer::Tokenizer;
use ryzanstein::model::{Model, ModelOptions};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The GGUF file (default: $RYZANSTEIN_MODEL, else the default model in the cache).
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// The prompt text (with --chat: the user message).
    #[arg(short, long)]
    prompt: String,
    /// Treat --prompt as a user message and render it with the model's chat template; stop at
    /// the end of the model's turn.
    #[arg(long)]
    chat: bool,
    /// A system message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// A Jinja chat template file to use instead of the model's (with --chat).
    #[arg(long, requires = "chat")]
    chat_template: Option<PathBuf>,
    /// Most tokens to generate.
    #[arg(short = 'n', long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probabilities add up to p.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one.
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalty for tokens among the last --repeat-last-n (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Tokens of history the penalties look at.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// Bias a token's logit: TOKEN_ID=BIAS (repeatable).
    #[arg(long = "logit-bias", value_parser = parse_bias)]
    logit_bias: Vec<(u32, f32)>,
    /// Random seed: the same seed and settings give the same tokens.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this text is produced (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Print the N most likely tokens of each step to stderr.
    #[arg(long, default_value_t = 0)]
    logprobs: usize,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Compute threads (0 = one per core).
    #[arg(short, long, default_value_t = 0)]
    threads: usize,
    /// Context length in tokens.
    #[arg(short, long, default_value_t = 4096)]
    ctx: usize,
}

fn parse_bias(s: &str) -> Result<(u32, f32), String> {
    let (id, bias) = s.split_once('=').ok_or("expected TOKEN_ID=BIAS")?;
    let id = id
        .trim()
        .parse()
        .map_err(|e| format!("token id {id:?}: {e}"))?;
    let bias = bias
        .trim()
        .parse()
        .map_err(|e| format!("bias {bias:?}: {e}"))?;
    Ok((id, bias))
}

/// The prompt ids of `--prompt` (and `--system`) as a chat rendered with the model's template or
/// `--chat-template`.
fn chat_prompt(
    a: &GenerateArgs,
    override_source: Option<&str>,
    file: &GgufFile,
    tok: &Tokenizer,
) -> Result<Vec<u32>> {
    let template = ChatTemplate::from_gguf(file, tok, override_source).with_context(|| match &a
        .chat_template
    {
        Some(path) => format!("chat template {}", path.display()),
        None => file.path().display().to_string(),
    })?;
    match template.source() {
        TemplateSource::Builtin(_) => eprintln!(
            "the model has no chat template; using {}",
            template.source()
        ),
        source => eprintln!("chat template: {source}"),
    }
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = &a.system {
        messages.push(ChatMessage::new("system", system.as_str()));
    }
    messages.push(ChatMessage::new("user", a.prompt.as_str()));
    let ids = template.render_tokens(tok, &messages, true)?;
    Ok(ids)
}

/// A `--chat-template` file's text, capped in size before it is read whole.
fn read_template(path: &Path) -> Result<String> {
    let name = || format!("chat template {}", path.display());
    let bytes = std::fs::metadata(path).with_context(name)?.len();
    if bytes > TEMPLATE_BYTES_MAX as u64 {
        bail!(
            "chat template {}: {bytes} bytes, over the limit of {TEMPLATE_BYTES_MAX}",
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(name)
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let path = super::model_path(a.model.clone())?;
    if a.prompt.is_empty() {
        bail!("--prompt is empty");
    }
    // Read before the model loads, so a wrong path fails at once.
    let override_source = a.chat_template.as_deref().map(read_template).transpose()?;
    let sampling = SamplingParams {
        temperature: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repetition_penalty: a.repeat_penalty,
        frequency_penalty: a.frequency_penalty,
        presence_penalty: a.presence_penalty,
        penalty_last_n: a.repeat_last_n,
        logit_bias: a.logit_bias.clone(),
        seed: a.seed,
        n_logprobs: a.logprobs,
        logprob: a.logprobs > 0,
    };
    sampling.validate()?;
    let opts = ModelOptions {
        n_ctx: a.ctx,
        ..ModelOptions::default()
    };
    let model = Model::load(&path, opts)?;
    let tok = Tokenizer::from_gguf(model.file()).with_context(|| path.display().to_string())?;
    let prompt = if a.chat {
        chat_prompt(&a, override_source.as_deref(), model.file(), &tok)?
    } else {
        tok.encode(&a.prompt, true, true)
    };
    let params = GenerateParams {
        max_tokens: a.max_tokens,
        sampling,
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
    };
    let pool = super::compute_pool(a.threads)?;
    let mut state = model.new_state();
    let mut stdout = std::io::stdout();
    let g = ryzanstein::team::run(&pool, || {
        generate(&model, &mut state, &tok, &prompt, &params, |text| {
            // A closed stdout (e.g. `| head`) ends generation quietly.
            stdout
                .write_all(text.as_bytes())
                .and_then(|_| stdout.flush())
                .is_ok()
        })
    })?;
    let _ = writeln!(stdout);
    if a.logprobs > 0 {
        for t in &g.tokens {
            let top: Vec<String> = t
                .top
                .iter()
                .map(|c| format!("{}:{:.3}", c.token, c.logprob))
                .collect();
            eprintln!(
                "token {} logprob {:.4} top [{}]",
                t.id,
                t.logprob,
                top.join(" ")
            );
        }
    }
    let n_gen = g.tokens.len();
    eprintln!(
        "prompt: {} tokens in {:.3} s ({:.1} tokens/s); decode: {} tokens in {:.3} s ({:.1} tokens/s); finish: {:?}",
        g.n_prompt,
        g.prefill_time.as_secs_f64(),
        g.n_prompt as f64 / g.prefill_time.as_secs_f64(),
        n_gen,
        g.decode_time.as_secs_f64(),
        n_gen as f64 / g.decode_time.as_secs_f64().max(1e-9),
        g.finish
    );
    Ok(())
}
