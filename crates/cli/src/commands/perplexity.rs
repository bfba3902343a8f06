//! `llama-gpu perplexity`: llama-perplexity's method. The text is cut into windows of
//! `-c` tokens; in each, the second half is scored given everything before it. With
//! `--score`, continuations are scored after their contexts instead, as evaluation
//! harnesses do (log-likelihood and multiple-choice tasks).

use super::{load, usage, ModelArgs, ThreadsArg};
use anyhow::{Context, Result};
use engine::Session;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["file", "score"])))]
pub struct Args {
    /// The text to measure.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Score continuations instead: each line of this JSON Lines file is
    /// `{"context": TEXT, "continuation": TEXT}` or `{"context_tokens": [IDS],
    /// "continuation_tokens": [IDS]}`; each answer line gives the continuation's summed
    /// `logprob`, whether every token of it is the greedy choice (`is_greedy`), and its
    /// `tokens`. Text is split as lm-evaluation-harness splits it: the continuation is
    /// what encoding the whole adds to the context's tokens.
    #[arg(long, value_name = "FILE")]
    score: Option<PathBuf>,
    /// Tokens per window (also the batch: a window is one forward pass).
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch_size: usize,
    /// Score only the first N windows.
    #[arg(long)]
    chunks: Option<usize>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    threads: ThreadsArg,
}

#[derive(Serialize)]
struct Report {
    n_ctx: usize,
    n_chunks: usize,
    tokens_scored: usize,
    ppl: f64,
    ppl_err: f64,
    running_ppl_per_chunk: Vec<f64>,
    seconds: f64,
}

pub fn run(mut args: Args) -> Result<()> {
    // The default -c for perplexity is llama-perplexity's 512, not the 4096 of generation.
    args.model.default_ctx_size = 512;
    if args.model.ctx_size.is_some_and(|c| (1..4).contains(&c)) {
        return Err(usage("-c must be at least 4 for perplexity"));
    }
    if let Some(pairs) = &args.score {
        return score_continuations(pairs, &args);
    }
    let file = args.file.as_ref().expect("clap requires --file or --score");
    let text = read_text(file)?;
    args.threads.apply()?;
    let loaded = load(&args.model)?;
    let n_ctx = loaded.context;
    if args.batch_size < n_ctx {
        tracing::info!(
            "-b {} is below -c {n_ctx}: each window still runs in one pass",
            args.batch_size
        );
    }
    let tokens = loaded.tokenizer.encode_prompt(&text, false)?;
    let available = tokens.len() / n_ctx;
    let n_chunks = args.chunks.map_or(available, |c| c.min(available));
    if n_chunks == 0 {
        return Err(usage(format!(
            "{} tokens is less than one window of -c {n_ctx}",
            tokens.len()
        )));
    }
    eprintln!(
        "perplexity: {} tokens, {n_chunks} windows of {n_ctx}",
        tokens.len()
    );
    let bar = indicatif::ProgressBar::new(n_chunks as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} windows, eta {eta} {msg}")
    {
        bar.set_style(style);
    }
    let mut session = Session::new(&loaded.model, n_ctx)?;
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut running = Vec::new();
    let start = Instant::now();
    for c in 0..n_chunks {
        let mut window = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if let (true, Some(bos)) = (loaded.tokenizer.add_bos, loaded.tokenizer.bos) {
            window[0] = bos;
        }
        let first = n_ctx / 2;
        for scored in session.score(&window, first)? {
            let lp = scored.logprob;
            nll -= lp;
            nll2 += lp * lp;
            count += 1;
        }
        let ppl = (nll / count as f64).exp();
        running.push(ppl);
        bar.set_message(format!("PPL {ppl:.4}"));
        bar.inc(1);
        if !args.json {
            bar.suspend(|| print!("[{}]{:.4},", c + 1, ppl));
        }
    }
    bar.finish_and_clear();
    let mean = nll / count as f64;
    let ppl = mean.exp();
    let var = nll2 / count as f64 - mean * mean;
    let ppl_err = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    let seconds = start.elapsed().as_secs_f64();
    if args.json {
        let report = Report {
            n_ctx,
            n_chunks,
            tokens_scored: count,
            ppl,
            ppl_err,
            running_ppl_per_chunk: running,
            seconds,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!();
        println!("Final estimate: PPL = {ppl:.4} +/- {ppl_err:.5}");
        eprintln!("{count} tokens scored in {seconds:.1} s");
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| usage(format!("{} is not valid UTF-8", path.display())))
}

/// One line of a `--score` file.
#[derive(Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum Pair {
    Text {
        context: String,
        continuation: String,
    },
    Tokens {
        context_tokens: Vec<u32>,
        continuation_tokens: Vec<u32>,
    },
}

#[derive(Serialize)]
struct PairScore {
    logprob: f64,
    is_greedy: bool,
    tokens: usize,
}

fn score_continuations(path: &Path, args: &Args) -> Result<()> {
    let text = read_text(path)?;
    args.threads.apply()?;
    let loaded = load(&args.model)?;
    let n_ctx = loaded.context;
    let mut session = Session::new(&loaded.model, n_ctx)?;
    let vocab = loaded.model.config.vocab_size;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let bar = indicatif::ProgressBar::new(lines.len() as u64);
    for (index, line) in lines {
        let at = || format!("{} line {}", path.display(), index + 1);
        let pair: Pair = serde_json::from_str(line).map_err(|e| match e.is_data() {
            true => usage(format!(
                "{}: give context and continuation as text, or context_tokens and continuation_tokens",
                at()
            )),
            false => usage(format!("{}: {e}", at())),
        })?;
        let (context, continuation) = match pair {
            Pair::Text {
                context,
                continuation,
            } => {
                let context_ids = loaded.tokenizer.encode_prompt(&context, false)?;
                let whole = loaded
                    .tokenizer
                    .encode_prompt(&format!("{context}{continuation}"), false)?;
                let split = context_ids.len().min(whole.len());
                (whole[..split].to_vec(), whole[split..].to_vec())
            }
            Pair::Tokens {
                context_tokens,
                continuation_tokens,
            } => (context_tokens, continuation_tokens),
        };
        if context.is_empty() || continuation.is_empty() {
            return Err(usage(format!(
                "{}: the context and the continuation must each have at least one token",
                at()
            )));
        }
        if let Some(bad) = context
            .iter()
            .chain(&continuation)
            .find(|&&t| t as usize >= vocab)
        {
            return Err(usage(format!(
                "{}: token {bad} is outside the vocabulary of {vocab}",
                at()
            )));
        }
        let tokens = [context.as_slice(), continuation.as_slice()].concat();
        let scored = session.score(&tokens, context.len() - 1).with_context(at)?;
        let answer = PairScore {
            logprob: scored.iter().map(|s| s.logprob).sum(),
            is_greedy: scored.iter().all(|s| s.is_greedy),
            tokens: scored.len(),
        };
        bar.suspend(|| println!("{}", serde_json::to_string(&answer).unwrap_or_default()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}
