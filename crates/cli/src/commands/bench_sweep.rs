//! `llama-gpu bench sweep`: the quantization ablation. For each model file it runs our own
//! `perplexity` and `bench` commands (each in its own process, so memory and threads
//! start clean) and writes the table and plot of `bench::sweep`.

use super::{resolve_model, usage};
use anyhow::{bail, Context, Result};
use bench::sweep::AblationRow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Models: GGUF paths, store names or digests (e.g. default /tmp/smol-Q8_0.gguf).
    #[arg(required = true)]
    models: Vec<String>,
    /// Text for perplexity.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Perplexity window.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    ctx_size: usize,
    /// Perplexity windows scored per model (all when absent).
    #[arg(long)]
    chunks: Option<usize>,
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    #[arg(short = 't', long = "threads", default_value_t = 2)]
    threads: usize,
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    repetitions: usize,
    /// Directory for ablation.{md,csv,json} and ppl_vs_speed.svg.
    #[arg(long, default_value = "ablation")]
    out: PathBuf,
}

/// Runs this binary with `args` and parses its standard output as JSON.
fn ourselves(args: &[String]) -> Result<serde_json::Value> {
    let exe = std::env::current_exe().context("locating the llama-gpu binary")?;
    let out = Command::new(exe)
        .args(args)
        .output()
        .context("running llama-gpu")?;
    if !out.status.success() {
        bail!(
            "llama-gpu {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("reading the output of llama-gpu {}", args.join(" ")))
}

/// The weight type holding the most bytes of the file.
fn main_weight_type(path: &std::path::Path) -> Result<String> {
    let file = gguf::GgufFile::open(path)?;
    let mut bytes: BTreeMap<String, u64> = BTreeMap::new();
    for t in &file.gguf.tensors {
        *bytes.entry(t.ty.to_string()).or_default() += t.size;
    }
    Ok(bytes
        .into_iter()
        .max_by_key(|(_, b)| *b)
        .map_or_else(String::new, |(t, _)| t))
}

pub fn run(args: Args) -> Result<()> {
    if args.threads == 0 || args.repetitions == 0 || args.n_prompt == 0 || args.n_gen == 0 {
        return Err(usage("-t, -r, -p and -n must be at least 1"));
    }
    let bar = indicatif::ProgressBar::new(args.models.len() as u64 * 2).with_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    for model in &args.models {
        let path = resolve_model(model)?;
        let m = path.display().to_string();
        bar.set_message(format!("{model}: perplexity"));
        let mut ppl_args: Vec<String> = ["perplexity", "-m", &m, "-f"].map(String::from).to_vec();
        ppl_args.push(args.file.display().to_string());
        ppl_args.extend([
            "-b".into(),
            args.ctx_size.to_string(),
            "-t".into(),
            args.threads.to_string(),
            "--json".into(),
        ]);
        if let Some(c) = args.chunks {
            ppl_args.extend(["--chunks".into(), c.to_string()]);
        }
        let ppl = ourselves(&ppl_args)?;
        bar.inc(1);
        bar.set_message(format!("{model}: speed"));
        let speed = ourselves(
            &[
                "bench",
                "-m",
                &m,
                "-p",
                &args.n_prompt.to_string(),
                "-n",
                &args.n_gen.to_string(),
                "-t",
                &args.threads.to_string(),
                "-r",
                &args.repetitions.to_string(),
                "-o",
                "json",
            ]
            .map(String::from),
        )?;
        bar.inc(1);
        let tests = speed.as_array().context("bench printed no rows")?;
        let rate = |prefix: &str| {
            tests
                .iter()
                .find(|r| r["test"].as_str().is_some_and(|t| t.starts_with(prefix)))
                .and_then(|r| r["avg_ts"].as_f64())
                .unwrap_or(f64::NAN)
        };
        let first = tests.first().context("bench printed no rows")?;
        rows.push(AblationRow {
            model: match path.file_name().map(|n| n.to_string_lossy().into_owned()) {
                Some(n) if !n.starts_with("sha256-") => n,
                _ => model.clone(),
            },
            weight_type: main_weight_type(&path)?,
            size_bytes: first["size_bytes"].as_u64().unwrap_or(0),
            params: first["params"].as_u64().unwrap_or(0),
            ppl: ppl["ppl"].as_f64().unwrap_or(f64::NAN),
            ppl_err: ppl["ppl_err"].as_f64().unwrap_or(f64::NAN),
            pp_ts: rate("pp"),
            tg_ts: rate("tg"),
            prompt_len: args.n_prompt,
            gen_len: args.n_gen,
        });
    }
    bar.finish_and_clear();
    print!("{}", bench::sweep::markdown(&rows));
    bench::sweep::write(&rows, &args.out)?;
    eprintln!("wrote {}", args.out.join("ablation.md").display());
    Ok(())
}
