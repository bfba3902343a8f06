//! `llama-gpu bench serve`: the load generator of `crates/bench` against a running
//! server, with a progress bar, a table, and JSON/CSV results.

use super::usage;
use anyhow::{Context, Result};
use bench::serve::{self, Endpoint, Load, Slo, Speculation, Summary, Target};
use bench::workload;
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Base URL of the server (without /v1).
    #[arg(long)]
    url: String,
    #[arg(long, env = "OPENAI_API_KEY")]
    api_key: Option<String>,
    /// Model id to request (default: none sent; most servers then use theirs).
    #[arg(long)]
    model: Option<String>,
    #[arg(long, value_enum, default_value_t = EndpointArg::Chat)]
    endpoint: EndpointArg,
    /// Concurrency levels, one run each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    concurrency: Vec<usize>,
    /// Poisson arrivals at this rate (requests/s) instead of fixed concurrency.
    #[arg(long)]
    request_rate: Option<f64>,
    /// Requests per run.
    #[arg(long, default_value_t = 32)]
    num_requests: usize,
    /// End each run after this many seconds (requests in flight are awaited).
    #[arg(long)]
    duration: Option<f64>,
    /// Words per synthetic prompt (about one token each).
    #[arg(long, default_value_t = 128)]
    input_len: usize,
    /// Tokens asked of each response.
    #[arg(long, default_value_t = 64)]
    output_len: usize,
    /// Lengths vary uniformly within ± this fraction.
    #[arg(long, default_value_t = 0.0)]
    range_ratio: f64,
    /// Prompts from a JSONL file ({"prompt": …} or {"messages": […]}, optional max_tokens).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Ask the server to ignore end-of-generation tokens, so lengths are exact.
    #[arg(long)]
    ignore_eos: bool,
    /// Seconds a request may take.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Service-level objective for goodput, e.g. ttft=500,tpot=50 (milliseconds).
    #[arg(long)]
    slo: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write every measurement, the summaries and the run's parameters here (JSON); a
    /// CSV of the summaries is written beside it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Count output tokens with this model's tokenizer when the server reports no usage
    /// (a GGUF path, store name or digest); otherwise stream chunks are counted.
    #[arg(long)]
    tokenizer: Option<String>,
    /// A label for this run in reports (e.g. "llama-gpu" or "llama-server").
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EndpointArg {
    Chat,
    Completions,
}

fn token_counter(model: &str) -> Result<serve::TokenCounter> {
    let path = super::resolve_model(model)?;
    let file =
        gguf::GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?;
    let tokenizer =
        engine::Tokenizer::from_metadata(&file.gguf.metadata).context("building the tokenizer")?;
    Ok(std::sync::Arc::new(move |text: &str| {
        tokenizer.encode(text, false).map_or(0, |ids| ids.len())
    }))
}

fn parse_slo(s: &str) -> Result<Slo> {
    let mut slo = Slo::default();
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| usage(format!("--slo {s:?}: expected ttft=MS,tpot=MS")))?;
        let ms: f64 = v
            .parse()
            .map_err(|_| usage(format!("--slo: {v:?} is not a number of milliseconds")))?;
        match k.trim() {
            "ttft" => slo.ttft_ms = Some(ms),
            "tpot" => slo.tpot_ms = Some(ms),
            other => {
                return Err(usage(format!(
                    "--slo: unknown bound {other:?} (ttft, tpot)"
                )))
            }
        }
    }
    Ok(slo)
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
    });
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

pub fn run(args: Args) -> Result<()> {
    if args.concurrency.contains(&0) || args.num_requests == 0 || args.timeout <= 0.0 {
        return Err(usage(
            "--concurrency, --num-requests and --timeout must be positive",
        ));
    }
    if args
        .request_rate
        .is_some_and(|r| !(r.is_finite() && r > 0.0))
    {
        return Err(usage(
            "--request-rate must be a positive number of requests per second",
        ));
    }
    let slo = args
        .slo
        .as_deref()
        .map(parse_slo)
        .transpose()?
        .unwrap_or_default();
    let prompts = match &args.dataset {
        Some(path) => workload::from_jsonl(path, args.output_len)?,
        None => workload::synthetic(
            args.num_requests,
            args.input_len,
            args.output_len,
            args.range_ratio,
            args.seed,
        ),
    };
    let target = Target {
        url: args.url.clone(),
        api_key: args.api_key.clone(),
        model: args.model.clone(),
        endpoint: match args.endpoint {
            EndpointArg::Chat => Endpoint::Chat,
            EndpointArg::Completions => Endpoint::Completions,
        },
        ignore_eos: args.ignore_eos,
        timeout: Duration::from_secs_f64(args.timeout),
        count_tokens: match &args.tokenizer {
            Some(model) => Some(token_counter(model)?),
            None => None,
        },
    };
    let loads: Vec<Load> = match args.request_rate {
        Some(r) => vec![Load::Rate(r)],
        None => args
            .concurrency
            .iter()
            .map(|&c| Load::Concurrency(c))
            .collect(),
    };
    let stop = serve::stop_flag();
    {
        let stop = stop.clone();
        // Ctrl-C ends the run early; what was measured is still reported.
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    let mut results = Vec::new();
    for load in loads {
        let bar = indicatif::ProgressBar::new(args.num_requests as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} requests, {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(match load {
            Load::Concurrency(c) => format!("concurrency {c}"),
            Load::Rate(r) => format!("{r} req/s"),
        });
        let duration = args.duration.map(Duration::from_secs_f64);
        let plan = serve::Run {
            target: &target,
            load,
            prompts: &prompts,
            count: args.num_requests,
            duration,
            seed: args.seed,
        };
        let counted_before = Speculation::read(&target);
        let (records, elapsed) = serve::run(&plan, &stop, &bar);
        bar.finish_and_clear();
        let mut summary = serve::summarize(load, &records, elapsed, &slo);
        summary.speculation = counted_before
            .zip(Speculation::read(&target))
            .and_then(|(before, after)| after.since(before));
        for (kind, n) in &summary.errors {
            let example = records
                .iter()
                .find(|r| r.error.as_deref() == Some(kind))
                .and_then(|r| r.error_detail.clone())
                .unwrap_or_default();
            eprintln!("{n} × {kind}: {example}");
        }
        results.push((summary, records));
        if stop.load(Ordering::Relaxed) {
            eprintln!("interrupted: reporting what was measured");
            break;
        }
    }
    let summaries: Vec<&Summary> = results.iter().map(|r| &r.0).collect();
    print_table(&args.label, &summaries);
    if let Some(out) = &args.out {
        let doc = json!({
            "label": args.label,
            "target": target,
            "params": {
                "num_requests": args.num_requests, "input_len": args.input_len, "output_len": args.output_len,
                "range_ratio": args.range_ratio, "dataset": args.dataset, "ignore_eos": args.ignore_eos,
                "seed": args.seed, "slo": slo, "duration": args.duration,
            },
            "machine": machine(),
            "runs": results.iter().map(|(s, r)| json!({"summary": s, "requests": r})).collect::<Vec<_>>(),
        });
        std::fs::write(out, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", out.display()))?;
        let csv = out.with_extension("csv");
        std::fs::write(
            &csv,
            summaries_csv(&args.label, results.iter().map(|r| &r.0)),
        )
        .with_context(|| format!("writing {}", csv.display()))?;
        eprintln!("wrote {} and {}", out.display(), csv.display());
    }
    Ok(())
}

fn load_name(l: &Load) -> String {
    match l {
        Load::Concurrency(c) => format!("c={c}"),
        Load::Rate(r) => format!("{r}/s"),
    }
}

fn print_table(label: &str, summaries: &[&Summary]) {
    println!("| {label} load | ok/all | req/s | out tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | ITL p50 / p99 ms | E2E p50 / p99 ms | goodput req/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for s in summaries {
        println!(
            "| {} | {}/{} | {:.2} | {:.1} | {:.0} / {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {:.0} / {:.0} | {:.2} |",
            load_name(&s.load), s.completed, s.requests, s.request_throughput, s.output_throughput,
            s.ttft_ms.median, s.ttft_ms.p99, s.tpot_ms.median, s.tpot_ms.p99, s.itl_ms.median, s.itl_ms.p99,
            s.e2e_ms.median, s.e2e_ms.p99, s.goodput
        );
    }
    for s in summaries {
        if let Some(spec) = s.speculation {
            let kept = 100.0 * spec.accepted as f64 / spec.proposed.max(1) as f64;
            print!(
                "{}: the server kept {} of {} proposed tokens ({kept:.0} %)",
                load_name(&s.load),
                spec.accepted,
                spec.proposed,
            );
            match spec.draft_tokens {
                0 => println!(),
                tokens => println!(
                    "; its draft model ran {tokens} tokens in {:.2} s ({:.0} % of the run)",
                    spec.draft_seconds,
                    100.0 * spec.draft_seconds / s.duration_s
                ),
            }
        }
    }
}

fn summaries_csv<'a>(label: &str, summaries: impl Iterator<Item = &'a Summary>) -> String {
    let mut out = String::from("label,load,requests,completed,failed,duration_s,request_throughput,output_throughput,total_token_throughput,goodput");
    for m in ["ttft", "tpot", "itl", "e2e"] {
        for q in ["mean", "median", "p90", "p95", "p99"] {
            out.push_str(&format!(",{m}_{q}_ms"));
        }
    }
    out.push('\n');
    for s in summaries {
        out.push_str(&format!(
            "{label},{},{},{},{},{:.3},{:.4},{:.3},{:.3},{:.4}",
            load_name(&s.load),
            s.requests,
            s.completed,
            s.failed,
            s.duration_s,
            s.request_throughput,
            s.output_throughput,
            s.total_token_throughput,
            s.goodput
        ));
        for st in [&s.ttft_ms, &s.tpot_ms, &s.itl_ms, &s.e2e_ms] {
            for v in [st.mean, st.median, st.p90, st.p95, st.p99] {
                out.push_str(&format!(",{v:.3}"));
            }
        }
        out.push('\n');
    }
    out
}
