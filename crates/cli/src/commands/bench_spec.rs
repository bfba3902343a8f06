//! `llama-gpu bench spec`: what speculative decoding buys on a set of prompts. Each prompt
//! of a JSONL dataset is answered greedily twice, with and without speculation (in
//! alternating order, so drift in the machine's speed does not favour one), the two
//! answers are checked to be the same tokens, and the generation speed of both is
//! reported per task type (the lines' `"task"` field) with the share of proposals kept
//! and the mean number checked per pass.

use super::{load, on_worker_thread, usage, Loaded, ModelArgs, SpeculationArgs, ThreadsArg};
use anyhow::{bail, Context, Result};
use engine::{GenerateOptions, Message, Sampler, SamplingParams, Session, SpeculationStats};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// JSONL prompts: `{"prompt": "…", "task": "…"}` or `{"messages": […], "task": "…"}`
    /// (`task` optional; e.g. tests/data/spec_prompts.jsonl).
    #[arg(long)]
    dataset: PathBuf,
    /// Tokens to generate per answer at most (a line's `max_tokens` wins).
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    n_predict: usize,
    /// Print the table as JSON rows instead of Markdown.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    threads: ThreadsArg,
    #[command(flatten)]
    speculation: SpeculationArgs,
    #[command(flatten)]
    model: ModelArgs,
}

/// One prompt's two answers, timed.
struct Measured {
    task: String,
    tokens: usize,
    plain_seconds: f64,
    spec_seconds: f64,
    stats: SpeculationStats,
}

/// A task type's totals (or all prompts', as `task: "all"`).
#[derive(Serialize)]
struct Row {
    task: String,
    prompts: usize,
    tokens: usize,
    plain_tokens_per_second: f64,
    spec_tokens_per_second: f64,
    speedup: f64,
    proposed: usize,
    kept: usize,
    acceptance: f64,
    /// Proposals checked per verifying pass, on average (the k the tuner chose).
    mean_k: f64,
}

impl Row {
    fn total(task: &str, measured: &[&Measured]) -> Row {
        let tokens = measured.iter().map(|m| m.tokens).sum::<usize>();
        let plain = measured.iter().map(|m| m.plain_seconds).sum::<f64>();
        let spec = measured.iter().map(|m| m.spec_seconds).sum::<f64>();
        let sum = |f: fn(&SpeculationStats) -> usize| measured.iter().map(|m| f(&m.stats)).sum();
        let stats = SpeculationStats {
            drafted: sum(|s| s.drafted),
            accepted: sum(|s| s.accepted),
            checks: sum(|s| s.checks),
        };
        let rate = |seconds: f64| tokens as f64 / seconds.max(1e-9);
        Row {
            task: task.to_string(),
            prompts: measured.len(),
            tokens,
            plain_tokens_per_second: rate(plain),
            spec_tokens_per_second: rate(spec),
            speedup: plain / spec.max(1e-9),
            proposed: stats.drafted,
            kept: stats.accepted,
            acceptance: stats.acceptance(),
            mean_k: stats.drafted as f64 / stats.checks.max(1) as f64,
        }
    }
}

/// The dataset's conversations, each with its task type and output length.
fn read_dataset(args: &Args) -> Result<Vec<(String, Vec<Message>, usize)>> {
    Ok(bench::workload::from_jsonl(&args.dataset, args.n_predict)?
        .into_iter()
        .map(|p| {
            let messages = p.messages.iter().map(|(r, c)| Message::new(r, c)).collect();
            let task = p.task.unwrap_or_else(|| "untyped".to_string());
            (task, messages, p.max_tokens)
        })
        .collect())
}

/// A greedy answer to `prompt` from `session`: its tokens, generation seconds and
/// speculation counts.
fn answer(
    loaded: &Loaded,
    session: &mut Session<'_, engine::Device>,
    prompt: &[u32],
    options: &GenerateOptions,
) -> Result<engine::Generated> {
    let mut sampler = Sampler::new(SamplingParams::greedy())?;
    Ok(session.generate(&loaded.tokenizer, prompt, &mut sampler, options, |_| true)?)
}

pub fn run(args: Args) -> Result<()> {
    if !args.speculation.enabled() {
        return Err(usage("bench spec needs --spec ngram or --spec draft"));
    }
    let lookup = args.speculation.speculation()?;
    if args.n_predict == 0 {
        return Err(usage("-n must be at least 1"));
    }
    let dataset = read_dataset(&args)?;
    args.threads.apply()?;
    let loaded = load(&args.model)?;
    let draft = args.speculation.load_draft(&args.model, &loaded)?;
    let mut plain = Session::new(&loaded.model, loaded.context)?;
    let mut speculating = Session::new(&loaded.model, loaded.context)?;
    if let Some(draft) = &draft {
        speculating.set_drafter(args.speculation.drafter(draft, &loaded)?);
    }
    let options = |max_tokens: usize, speculate: bool| GenerateOptions {
        max_tokens,
        stop: Vec::new(),
        ignore_eos: false,
        grammar: None,
        speculation: lookup.filter(|_| speculate),
    };
    let bar = indicatif::ProgressBar::new(dataset.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("answering twice [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let measured = on_worker_thread(|| -> Result<Vec<Measured>> {
        let mut measured = Vec::new();
        for (i, (task, messages, max_tokens)) in dataset.iter().enumerate() {
            let prompt = loaded.template.encode(
                &loaded.tokenizer,
                messages,
                true,
                &Default::default(),
                engine::ContentTokens::Text,
            )?;
            if i == 0 {
                // Warm both sessions (page faults, caches) before anything is timed.
                answer(&loaded, &mut plain, &prompt, &options(16, false))?;
                answer(&loaded, &mut speculating, &prompt, &options(16, true))?;
            }
            let (without, with) = if i % 2 == 0 {
                let p = answer(&loaded, &mut plain, &prompt, &options(*max_tokens, false))?;
                let s = answer(&loaded, &mut speculating, &prompt, &options(*max_tokens, true))?;
                (p, s)
            } else {
                let s = answer(&loaded, &mut speculating, &prompt, &options(*max_tokens, true))?;
                let p = answer(&loaded, &mut plain, &prompt, &options(*max_tokens, false))?;
                (p, s)
            };
            if without.tokens != with.tokens {
                let at = without
                    .tokens
                    .iter()
                    .zip(&with.tokens)
                    .take_while(|(a, b)| a == b)
                    .count();
                bail!(
                    "speculation changed the answer to the dataset's prompt {} at token {at}: a bug, please report it",
                    i + 1
                );
            }
            measured.push(Measured {
                task: task.clone(),
                tokens: without.tokens.len(),
                plain_seconds: without.generation_seconds,
                spec_seconds: with.generation_seconds,
                stats: with.speculation,
            });
            bar.inc(1);
        }
        Ok(measured)
    })
    .context("answering the dataset's prompts")?;
    bar.finish_and_clear();
    let mut by_task: BTreeMap<&str, Vec<&Measured>> = BTreeMap::new();
    for m in &measured {
        by_task.entry(&m.task).or_default().push(m);
    }
    let mut rows: Vec<Row> = by_task
        .iter()
        .map(|(task, group)| Row::total(task, group))
        .collect();
    rows.push(Row::total("all", &measured.iter().collect::<Vec<_>>()));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("| task | prompts | tokens | plain tok/s | speculative tok/s | speedup | kept / proposed | mean k |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.2}× | {} / {} ({:.0} %) | {:.1} |",
            r.task,
            r.prompts,
            r.tokens,
            r.plain_tokens_per_second,
            r.spec_tokens_per_second,
            r.speedup,
            r.kept,
            r.proposed,
            100.0 * r.acceptance,
            r.mean_k
        );
    }
    Ok(())
}
