//! `llama-gpu bench`: llama-bench's tests on our engine. `ppN` times reading an N-token
//! prompt in one pass; `tgN` times generating N tokens one at a time; both start from an
//! empty context, or after `-d D` tokens already in it (`pp512 @ d4096`, filled once and
//! not timed). Each test runs once to warm up, then `-r` times; we report mean ± stddev
//! tokens/s, peak memory, and for generation the share of the machine's read bandwidth
//! the weights stream at.

use super::{load, usage, ModelArgs};
use anyhow::{Context, Result};
use engine::{Logits, Session};
use serde::Serialize;
use std::time::Instant;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    online: Option<Online>,
    /// Prompt lengths to test (comma-separated; 0 skips).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    n_prompt: Vec<usize>,
    /// Generation lengths to test (comma-separated; 0 skips).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    n_gen: Vec<usize>,
    /// Tokens already in the context when each test starts (comma-separated), as
    /// llama-bench's `-d`: how speed holds up in long conversations.
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    n_depth: Vec<usize>,
    /// Thread counts to test (comma-separated).
    #[arg(
        short = 't',
        long = "threads",
        value_delimiter = ',',
        default_value = "2"
    )]
    threads: Vec<usize>,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    repetitions: usize,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Md)]
    output: Format,
    /// Serving mode: waves of this many concurrent requests through the engine
    /// (comma-separated levels); `-p` is each prompt's length, `-n` each output's.
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Serving mode: tokens per engine step (decodes plus prompt chunks).
    #[arg(long, default_value_t = 512)]
    max_batch_tokens: usize,
    /// Serving mode: every output constrained to JSON (an array of `{"id", "name"}`
    /// records, long enough to last `-n` tokens), to measure what structured output
    /// costs; the grammar mask's cost per token is measured after.
    #[arg(long, requires = "concurrency")]
    json_records: bool,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Md,
    Csv,
    Json,
}

#[derive(Serialize)]
struct Row {
    model: String,
    size_bytes: u64,
    params: u64,
    backend: String,
    isa: String,
    threads: usize,
    test: String,
    n_depth: usize,
    avg_ts: f64,
    stddev_ts: f64,
    samples_ts: Vec<f64>,
    peak_rss_bytes: u64,
    /// Generation only: weight bytes read per second over the measured read bandwidth.
    bandwidth_fraction: Option<f64>,
}

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Bytes/s that `threads` threads read from a buffer much larger than the caches.
fn read_bandwidth(pool: &rayon::ThreadPool) -> f64 {
    use rayon::prelude::*;
    let buffer = vec![1u64; 64 << 20]; // 512 MiB
    let pass = || {
        pool.install(|| {
            buffer
                .par_chunks(1 << 16)
                .map(|c| c.iter().fold(0u64, |a, &b| a ^ b))
                .reduce(|| 0, |a, b| a ^ b)
        })
    };
    std::hint::black_box(pass());
    let start = Instant::now();
    let passes = 3;
    for _ in 0..passes {
        std::hint::black_box(pass());
    }
    (buffer.len() * 8 * passes) as f64 / start.elapsed().as_secs_f64()
}

pub(super) fn mean_std(samples: &[f64]) -> (f64, f64) {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let var = if samples.len() > 1 {
        samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

#[derive(clap::Subcommand)]
enum Online {
    /// Load-test any OpenAI-compatible server (ours, llama-server, vLLM).
    Serve(Box<super::bench_serve::Args>),
    /// Render `bench serve` result files as a Markdown report with SVG plots.
    Report(ReportArgs),
    /// Speculative decoding against plain decoding, answer by answer, on a prompt set.
    Spec(Box<super::bench_spec::Args>),
    /// Quantization ablation: perplexity and speed of several model files.
    Sweep(super::bench_sweep::Args),
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Result files of `bench serve --out` (each one series in the plots).
    #[arg(required = true)]
    files: Vec<std::path::PathBuf>,
    /// Directory for report.md and the plots.
    #[arg(long, default_value = "report")]
    out: std::path::PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    match args.online {
        Some(Online::Serve(a)) => return super::bench_serve::run(*a),
        Some(Online::Report(a)) => {
            let files = a
                .files
                .iter()
                .map(|f| bench::report::read(f))
                .collect::<Result<Vec<_>, _>>()?;
            bench::report::write(&files, &a.out)?;
            eprintln!("wrote {}", a.out.join("report.md").display());
            return Ok(());
        }
        Some(Online::Sweep(a)) => return super::bench_sweep::run(a),
        Some(Online::Spec(a)) => return super::bench_spec::run(*a),
        None => {}
    }
    if args.repetitions == 0 || args.threads.contains(&0) {
        return Err(usage("-r and every -t must be at least 1"));
    }
    if !args.concurrency.is_empty() {
        if args.n_depth.iter().any(|&d| d > 0) {
            return Err(usage("-d is for the llama-bench tests, not --concurrency"));
        }
        return concurrency(&args);
    }
    let loaded = load(&args.model)?;
    let model = &loaded.model;
    let path = super::resolve_model(&args.model.model)?;
    let size_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let file = gguf::GgufFile::open(&path)?;
    let params: u64 = file.gguf.tensors.iter().map(|t| t.n_elements()).sum();
    let weight_bytes: u64 = file
        .gguf
        .tensors
        .iter()
        .filter(|t| {
            t.name != "token_embd.weight" || file.gguf.tensor_info("output.weight").is_none()
        })
        .map(|t| t.size)
        .sum();
    let name = match path.file_name().map(|n| n.to_string_lossy().into_owned()) {
        Some(n) if !n.starts_with("sha256-") => n,
        _ => args.model.model.clone(),
    };
    let vocab = model.config.vocab_size as u32;
    let mut rows = Vec::new();
    let tests: Vec<(String, usize, bool)> = args
        .n_prompt
        .iter()
        .filter(|&&p| p > 0)
        .map(|&p| (format!("pp{p}"), p, true))
        .chain(
            args.n_gen
                .iter()
                .filter(|&&n| n > 0)
                .map(|&n| (format!("tg{n}"), n, false)),
        )
        .collect();
    let longest = tests.iter().map(|t| t.1).max().unwrap_or(1)
        + args.n_depth.iter().max().copied().unwrap_or(0);
    if longest > loaded.context {
        return Err(usage(format!(
            "a test of {longest} tokens (depth included) needs -c {longest} or more"
        )));
    }
    let synthetic = |n: usize, salt: u32| -> Vec<u32> {
        (0..n as u32)
            .map(|i| (i * 7919 + 13 + salt) % vocab)
            .collect()
    };
    let mut pools = Vec::new();
    for &threads in &args.threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .context("starting the thread pool")?;
        for (&depth, (test, n, prompt)) in args
            .n_depth
            .iter()
            .flat_map(|d| tests.iter().map(move |t| (d, t)))
        {
            let test = match depth {
                0 => test.clone(),
                d => format!("{test} @ d{d}"),
            };
            let tokens = synthetic(*n, 0);
            let mut session = Session::new(model, loaded.context)?;
            let mut samples = Vec::new();
            for rep in 0..=args.repetitions {
                // Once, or again when a windowed model's ring no longer reaches back to
                // the depth after a repetition (untimed either way).
                if depth > 0 && !session.resumable(depth) {
                    eprintln!("{test} t={threads}: filling {depth} tokens of context");
                    pool.install(|| session.forward_at(&synthetic(depth, 1), 0, Logits::Last))?;
                }
                let seconds = pool.install(|| -> Result<f64> {
                    let start = Instant::now();
                    if *prompt {
                        session.forward_at(&tokens, depth, Logits::Last)?;
                    } else {
                        for (i, &t) in tokens.iter().enumerate() {
                            session.decode_at(t, depth + i)?;
                        }
                    }
                    Ok(start.elapsed().as_secs_f64())
                })?;
                if rep > 0 {
                    samples.push(*n as f64 / seconds);
                }
            }
            let (avg, std) = mean_std(&samples);
            rows.push(Row {
                model: name.clone(),
                size_bytes,
                params,
                backend: model.backend_name().into(),
                isa: match &model.backend {
                    engine::Device::Cuda(gpu) => {
                        let (major, minor) = gpu.gpu().info.compute_capability;
                        format!("sm_{major}{minor}")
                    }
                    engine::Device::Cpu(_) => quant::selected_isa().name().into(),
                },
                threads,
                test: test.clone(),
                n_depth: depth,
                avg_ts: avg,
                stddev_ts: std,
                samples_ts: samples,
                peak_rss_bytes: peak_rss_bytes(),
                bandwidth_fraction: None,
            });
            eprintln!("{test} t={threads}: {avg:.1} ± {std:.1} tok/s");
        }
        pools.push((threads, pool));
    }
    // Last, so its buffer does not count in the peak memory reported above.
    for (threads, pool) in pools {
        let bandwidth = match &model.backend {
            engine::Device::Cuda(gpu) => {
                let b = gpu.gpu().copy_bandwidth()?;
                eprintln!(
                    "GPU memory bandwidth (copy, read + write): {:.0} GB/s",
                    b / 1e9
                );
                b
            }
            engine::Device::Cpu(_) => {
                let b = read_bandwidth(&pool);
                eprintln!("read bandwidth with {threads} threads: {:.1} GB/s", b / 1e9);
                b
            }
        };
        for r in rows
            .iter_mut()
            .filter(|r| r.threads == threads && r.test.starts_with("tg"))
        {
            r.bandwidth_fraction = Some(r.avg_ts * weight_bytes as f64 / bandwidth);
        }
    }
    print_rows(&rows, args.output)
}

fn concurrency(args: &Args) -> Result<()> {
    let [threads] = args.threads[..] else {
        return Err(usage("--concurrency takes a single -t value"));
    };
    let (&[prompt_len], &[gen_len]) = (&args.n_prompt[..], &args.n_gen[..]) else {
        return Err(usage(
            "--concurrency takes a single -p and a single -n value",
        ));
    };
    let results = super::bench_concurrency::run(super::bench_concurrency::Plan {
        levels: &args.concurrency,
        prompt_len,
        gen_len,
        threads,
        repetitions: args.repetitions,
        max_batch_tokens: args.max_batch_tokens,
        json_records: args.json_records,
        model: &args.model,
    })?;
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&results)?),
        Format::Csv => super::bench_concurrency::print_csv(&results),
        Format::Md => super::bench_concurrency::print_markdown(&results),
    }
    Ok(())
}

fn print_rows(rows: &[Row], format: Format) -> Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        Format::Csv => {
            println!("model,size_bytes,params,backend,isa,threads,test,n_depth,avg_ts,stddev_ts,peak_rss_bytes,bandwidth_fraction");
            for r in rows {
                println!(
                    "{},{},{},{},{},{},{},{},{:.3},{:.3},{},{}",
                    r.model,
                    r.size_bytes,
                    r.params,
                    r.backend,
                    r.isa,
                    r.threads,
                    r.test,
                    r.n_depth,
                    r.avg_ts,
                    r.stddev_ts,
                    r.peak_rss_bytes,
                    r.bandwidth_fraction
                        .map_or(String::new(), |f| format!("{f:.4}"))
                );
            }
        }
        Format::Md => {
            println!(
                "| model | size | params | backend | threads | test | t/s | peak RSS | bandwidth |"
            );
            println!("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
            for r in rows {
                println!(
                    "| {} | {:.2} MiB | {:.2} M | {} ({}) | {} | {} | {:.2} ± {:.2} | {:.0} MB | {} |",
                    r.model,
                    r.size_bytes as f64 / (1 << 20) as f64,
                    r.params as f64 / 1e6,
                    r.backend,
                    r.isa,
                    r.threads,
                    r.test,
                    r.avg_ts,
                    r.stddev_ts,
                    r.peak_rss_bytes as f64 / 1e6,
                    r.bandwidth_fraction.map_or("-".into(), |f| format!("{:.1}%", f * 100.0))
                );
            }
        }
    }
    Ok(())
}
