//! `llama-gpu perplexity`: llama-perplexity's method. The text is cut into windows of
//! `-c` tokens; in each, the second half is scored given everything before it.

use super::{load, usage, ModelArgs, ThreadsArg};
use anyhow::{Context, Result};
use engine::Session;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
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
    if !std::env::args().any(|a| a == "-c" || a.starts_with("--ctx-size")) {
        args.model.ctx_size = 512;
    }
    let n_ctx = args.model.ctx_size;
    if n_ctx < 4 {
        return Err(usage("-c must be at least 4 for perplexity"));
    }
    if args.batch_size < n_ctx {
        tracing::info!(
            "-b {} is below -c {n_ctx}: each window still runs in one pass",
            args.batch_size
        );
    }
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| usage(format!("{} is not valid UTF-8", args.file.display())))?;
    args.threads.apply()?;
    let loaded = load(&args.model)?;
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
        for lp in session.score(&window, first)? {
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
