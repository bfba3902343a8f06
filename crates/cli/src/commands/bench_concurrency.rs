//! `llama-gpu bench --concurrency 1,4,8,16`: the serving engine under load, offline.
//! Each level submits a wave of that many requests at once (distinct random prompts of
//! `-p` tokens, `-n` tokens generated each, end-of-generation ignored) through the
//! Engine API and measures aggregate generation tok/s, time to first token and the
//! latency between tokens. The wave runs once to warm up, then `-r` times. With
//! `--json-records` every output is constrained to a JSON array of records that cannot
//! close before `-n` tokens, and the grammar mask's cost per token is measured
//! afterwards by replaying the last outputs.

use super::{load, usage, ModelArgs};
use anyhow::{Context, Result};
use bench::stats::Stats;
use engine::{Constraint, Engine, EngineConfig, Event, Request};
use serde::Serialize;
use std::time::{Duration, Instant};

pub struct Plan<'a> {
    pub levels: &'a [usize],
    pub prompt_len: usize,
    pub gen_len: usize,
    pub threads: usize,
    pub repetitions: usize,
    pub max_batch_tokens: usize,
    pub json_records: bool,
    pub model: &'a ModelArgs,
}

#[derive(Serialize)]
pub struct LevelResult {
    pub concurrency: usize,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// Generated tokens of the wave over its wall time.
    pub aggregate_ts: f64,
    pub aggregate_ts_stddev: f64,
    /// `aggregate_ts` over the single-stream level's, when measured.
    pub vs_single: Option<f64>,
    pub ttft_ms: Stats,
    pub itl_ms: Stats,
    pub preemptions: u64,
    /// With `--json-records`: microseconds per grammar mask.
    pub mask_us: Option<Stats>,
    pub mask_us_max: Option<f64>,
}

/// Per-request timings of one wave.
struct Wave {
    seconds: f64,
    generated: usize,
    outputs: Vec<Vec<u32>>,
    ttft: Vec<Duration>,
    itl: Vec<Duration>,
}

fn run_wave(
    engine: &Engine,
    prompts: Vec<Vec<u32>>,
    gen_len: usize,
    constraint: Option<&Constraint>,
) -> Result<Wave> {
    let start = Instant::now();
    let grammars = constraint.map(|_| engine.grammars()).transpose()?;
    let streams = prompts
        .into_iter()
        .map(|p| {
            let request = Request {
                ignore_eos: true,
                constraint: match (&grammars, constraint) {
                    (Some(g), Some(c)) => Some(g.compile(c)?),
                    _ => None,
                },
                ..Request::greedy(p, gen_len)
            };
            engine.submit(request).context("submitting a request")
        })
        .collect::<Result<Vec<_>>>()?;
    // One thread per stream, as separate clients would read them.
    let per_request: Vec<Result<(Vec<u32>, Vec<Duration>)>> = std::thread::scope(|s| {
        let readers: Vec<_> = streams
            .into_iter()
            .map(|stream| {
                s.spawn(move || {
                    let mut times = Vec::new();
                    let mut ids = Vec::new();
                    for event in stream {
                        match event {
                            Event::Token { id, .. } => {
                                times.push(start.elapsed());
                                ids.push(id);
                            }
                            Event::Finished { error: Some(e), .. } => {
                                anyhow::bail!("a request failed: {e}")
                            }
                            Event::Finished { .. } | Event::Prompt { .. } => {}
                        }
                    }
                    Ok((ids, times))
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|r| {
                r.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("reader panicked")))
            })
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut wave = Wave {
        seconds,
        generated: 0,
        outputs: Vec::new(),
        ttft: Vec::new(),
        itl: Vec::new(),
    };
    for r in per_request {
        let (ids, times) = r?;
        wave.generated += ids.len();
        wave.outputs.push(ids);
        if let Some(&first) = times.first() {
            wave.ttft.push(first);
        }
        wave.itl.extend(times.windows(2).map(|w| w[1] - w[0]));
    }
    Ok(wave)
}

pub fn run(plan: Plan) -> Result<Vec<LevelResult>> {
    if plan.levels.contains(&0) || plan.prompt_len == 0 || plan.gen_len == 0 {
        return Err(usage(
            "--concurrency levels, -p and -n must be at least 1 in concurrency mode",
        ));
    }
    let loaded = load(plan.model)?;
    let vocab = loaded.model.config.vocab_size as u64;
    let widest = plan.levels.iter().copied().max().unwrap_or(1);
    let context = plan.prompt_len + plan.gen_len + 1;
    let mut config = EngineConfig::new(context, widest);
    config.max_batch_tokens = plan.max_batch_tokens;
    config.max_waiting = widest;
    config.threads = Some(plan.threads);
    let engine = Engine::start(loaded.model, loaded.tokenizer, config)?;

    let mut seed = 0u64;
    // Distinct random prompts, so no wave reuses another's prefix.
    let mut prompts = |n: usize| -> Vec<Vec<u32>> {
        (0..n)
            .map(|_| {
                (0..plan.prompt_len)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((seed >> 33) % vocab) as u32
                    })
                    .collect()
            })
            .collect()
    };
    // Each record takes more than one token, so the array outlasts `-n` tokens.
    let constraint = plan.json_records.then(|| Constraint::JsonSchema {
        schema: serde_json::json!({
            "type": "array",
            "minItems": plan.gen_len,
            "items": {
                "type": "object",
                "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
                "required": ["id", "name"],
                "additionalProperties": false
            }
        }),
        strict: true,
    });
    let mut results: Vec<LevelResult> = Vec::new();
    for &level in plan.levels {
        let before = engine.metrics().preemptions;
        let mut rates = Vec::new();
        let (mut ttft, mut itl) = (Vec::new(), Vec::new());
        let mut outputs = Vec::new();
        for rep in 0..=plan.repetitions {
            let wave = run_wave(&engine, prompts(level), plan.gen_len, constraint.as_ref())?;
            if rep == 0 {
                continue;
            }
            outputs = wave.outputs;
            rates.push(wave.generated as f64 / wave.seconds);
            ttft.extend(wave.ttft.iter().map(|d| d.as_secs_f64() * 1e3));
            itl.extend(wave.itl.iter().map(|d| d.as_secs_f64() * 1e3));
        }
        let (mean, std) = super::bench::mean_std(&rates);
        let single = results
            .iter()
            .find(|r| r.concurrency == 1)
            .map(|r| r.aggregate_ts);
        let mut r = LevelResult {
            concurrency: level,
            threads: plan.threads,
            prompt_tokens: plan.prompt_len,
            gen_tokens: plan.gen_len,
            aggregate_ts: mean,
            aggregate_ts_stddev: std,
            vs_single: single.map(|s| mean / s),
            ttft_ms: Stats::of(ttft),
            itl_ms: Stats::of(itl),
            preemptions: engine.metrics().preemptions - before,
            mask_us: None,
            mask_us_max: None,
        };
        if let Some(c) = &constraint {
            let times = mask_times(&engine, c, &outputs)?;
            r.mask_us_max = times.iter().copied().reduce(f64::max);
            r.mask_us = Some(Stats::of(times));
        }
        eprintln!(
            "concurrency {level}: {mean:.1} ± {std:.1} tok/s, TTFT p50 {:.0} ms p99 {:.0} ms, ITL p50 {:.1} ms p99 {:.1} ms",
            r.ttft_ms.median, r.ttft_ms.p99, r.itl_ms.median, r.itl_ms.p99
        );
        if let (Some(m), Some(max)) = (&r.mask_us, r.mask_us_max) {
            eprintln!(
                "  grammar mask: p50 {:.0} µs, p99 {:.0} µs, max {max:.0} µs over {} tokens",
                m.median, m.p99, m.count
            );
        }
        results.push(r);
    }
    Ok(results)
}

/// Microseconds each grammar mask takes along the given outputs, replayed one token
/// at a time as the engine computes them.
fn mask_times(engine: &Engine, c: &Constraint, outputs: &[Vec<u32>]) -> Result<Vec<f64>> {
    let grammars = engine.grammars()?;
    let mut times = Vec::new();
    for ids in outputs {
        let mut state = grammars.compile(c)?;
        for &id in ids {
            let t = Instant::now();
            state.mask()?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
            state.consume(id)?;
        }
    }
    Ok(times)
}

pub fn print_markdown(results: &[LevelResult]) {
    println!("| concurrency | threads | prompt | gen | aggregate t/s | × single | TTFT p50 / p95 / p99 ms | ITL p50 / p95 / p99 ms | preemptions |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in results {
        println!(
            "| {} | {} | {} | {} | {:.1} ± {:.1} | {} | {:.0} / {:.0} / {:.0} | {:.1} / {:.1} / {:.1} | {} |",
            r.concurrency,
            r.threads,
            r.prompt_tokens,
            r.gen_tokens,
            r.aggregate_ts,
            r.aggregate_ts_stddev,
            r.vs_single.map_or("-".into(), |x| format!("{x:.2}×")),
            r.ttft_ms.median,
            r.ttft_ms.p95,
            r.ttft_ms.p99,
            r.itl_ms.median,
            r.itl_ms.p95,
            r.itl_ms.p99,
            r.preemptions
        );
    }
}

pub fn print_csv(results: &[LevelResult]) {
    println!("concurrency,threads,prompt_tokens,gen_tokens,aggregate_ts,aggregate_ts_stddev,vs_single,ttft_p50_ms,ttft_p95_ms,ttft_p99_ms,itl_p50_ms,itl_p95_ms,itl_p99_ms,preemptions");
    for r in results {
        println!(
            "{},{},{},{},{:.3},{:.3},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{}",
            r.concurrency,
            r.threads,
            r.prompt_tokens,
            r.gen_tokens,
            r.aggregate_ts,
            r.aggregate_ts_stddev,
            r.vs_single.map_or(String::new(), |x| format!("{x:.4}")),
            r.ttft_ms.median,
            r.ttft_ms.p95,
            r.ttft_ms.p99,
            r.itl_ms.median,
            r.itl_ms.p95,
            r.itl_ms.p99,
            r.preemptions
        );
    }
}
