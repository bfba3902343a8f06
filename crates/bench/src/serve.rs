//! The load generator: sends streaming requests to an OpenAI-compatible server at a fixed
//! concurrency or a Poisson rate, records every request's timings, and summarises them.

use crate::stats::Stats;
use crate::workload::{Prompt, Rng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    Chat,
    Completions,
}

/// Counts the tokens of a text, for servers that do not report usage.
pub type TokenCounter = Arc<dyn Fn(&str) -> usize + Send + Sync>;

#[derive(Clone, Serialize)]
pub struct Target {
    pub url: String,
    #[serde(skip)]
    pub api_key: Option<String>,
    pub model: Option<String>,
    pub endpoint: Endpoint,
    pub ignore_eos: bool,
    pub timeout: Duration,
    /// Used when a stream carries no usage; without it, content chunks are counted.
    #[serde(skip)]
    pub count_tokens: Option<TokenCounter>,
}

/// How requests arrive in one run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    /// This many requests in flight at all times.
    Concurrency(usize),
    /// Poisson arrivals at this many requests per second.
    Rate(f64),
}

/// Service-level objective: a request meets it when both bounds hold (milliseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
}

/// One request's measurements. Times are seconds from the run's start or durations.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub start_s: f64,
    /// Error kind when the request failed: connect, timeout, http_NNN, malformed_stream,
    /// incomplete_stream, server_error.
    pub error: Option<String>,
    pub error_detail: Option<String>,
    pub ttft_s: Option<f64>,
    /// Gaps between consecutive content chunks.
    pub itl_s: Vec<f64>,
    pub e2e_s: f64,
    pub prompt_tokens: Option<usize>,
    pub output_tokens: usize,
    /// Whether `output_tokens` came from the server's usage (else: the target's token
    /// counter, or the number of content chunks).
    pub usage_reported: bool,
}

impl Record {
    /// Time per output token after the first.
    pub fn tpot_s(&self) -> Option<f64> {
        let ttft = self.ttft_s?;
        (self.output_tokens > 1).then(|| (self.e2e_s - ttft) / (self.output_tokens - 1) as f64)
    }

    fn meets(&self, slo: &Slo) -> bool {
        self.error.is_none()
            && slo
                .ttft_ms
                .is_none_or(|b| self.ttft_s.is_some_and(|t| t * 1e3 <= b))
            && slo
                .tpot_ms
                .is_none_or(|b| self.tpot_s().is_none_or(|t| t * 1e3 <= b))
    }
}

fn body(target: &Target, prompt: &Prompt) -> Value {
    let mut b = match target.endpoint {
        Endpoint::Chat => json!({
            "messages": prompt.messages.iter().map(|(r, c)| json!({"role": r, "content": c})).collect::<Vec<_>>(),
        }),
        Endpoint::Completions => json!({
            "prompt": prompt.messages.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>().join("\n"),
        }),
    };
    b["max_tokens"] = json!(prompt.max_tokens);
    b["stream"] = json!(true);
    b["stream_options"] = json!({"include_usage": true});
    b["temperature"] = json!(0);
    if target.ignore_eos {
        b["ignore_eos"] = json!(true);
    }
    if let Some(m) = &target.model {
        b["model"] = json!(m);
    }
    b
}

fn path(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Chat => "/v1/chat/completions",
        Endpoint::Completions => "/v1/completions",
    }
}

/// Sends one streaming request and times it.
pub fn send(agent: &ureq::Agent, target: &Target, prompt: &Prompt, run_start: Instant) -> Record {
    let start = Instant::now();
    let mut rec = Record {
        start_s: start.duration_since(run_start).as_secs_f64(),
        ..Default::default()
    };
    let fail = |mut rec: Record, kind: &str, detail: String| {
        rec.error = Some(kind.into());
        rec.error_detail = Some(detail);
        rec.e2e_s = start.elapsed().as_secs_f64();
        rec
    };
    let url = format!(
        "{}{}",
        target.url.trim_end_matches('/'),
        path(target.endpoint)
    );
    let mut req = agent.post(&url).header("content-type", "application/json");
    if let Some(k) = &target.api_key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let response = match req.send(body(target, prompt).to_string()) {
        Ok(r) => r,
        Err(ureq::Error::Timeout(_)) => return fail(rec, "timeout", "no response in time".into()),
        Err(e) => return fail(rec, "connect", e.to_string()),
    };
    let status = response.status().as_u16();
    if status != 200 {
        let text = response.into_body().read_to_string().unwrap_or_default();
        return fail(
            rec,
            &format!("http_{status}"),
            text.chars().take(300).collect(),
        );
    }
    let mut last: Option<Instant> = None;
    let mut output = String::new();
    let mut done = false;
    for line in BufReader::new(response.into_body().into_reader()).lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) if e.to_string().to_lowercase().contains("timeout") => {
                return fail(rec, "timeout", e.to_string())
            }
            Err(e) => return fail(rec, "incomplete_stream", e.to_string()),
        };
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            break;
        }
        let chunk: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => return fail(rec, "malformed_stream", format!("{e}: {data}")),
        };
        if let Some(err) = chunk.get("error") {
            return fail(rec, "server_error", err.to_string());
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            rec.prompt_tokens = u["prompt_tokens"].as_u64().map(|x| x as usize);
            if let Some(c) = u["completion_tokens"].as_u64() {
                rec.output_tokens = c as usize;
                rec.usage_reported = true;
            }
        }
        let text = chunk["choices"][0]["delta"]["content"]
            .as_str()
            .or(chunk["choices"][0]["text"].as_str())
            .unwrap_or("");
        if !text.is_empty() {
            output.push_str(text);
            let now = Instant::now();
            match last {
                None => rec.ttft_s = Some(now.duration_since(start).as_secs_f64()),
                Some(prev) => rec.itl_s.push(now.duration_since(prev).as_secs_f64()),
            }
            last = Some(now);
            if !rec.usage_reported {
                rec.output_tokens += 1;
            }
        }
    }
    if !done {
        return fail(
            rec,
            "incomplete_stream",
            "the stream ended without [DONE]".into(),
        );
    }
    if let (false, Some(count)) = (rec.usage_reported, &target.count_tokens) {
        rec.output_tokens = count(&output);
    }
    rec.e2e_s = start.elapsed().as_secs_f64();
    rec
}

/// One load level's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub load: Load,
    pub requests: usize,
    pub completed: usize,
    pub failed: usize,
    pub errors: BTreeMap<String, usize>,
    pub duration_s: f64,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub ttft_ms: Stats,
    pub tpot_ms: Stats,
    pub itl_ms: Stats,
    pub e2e_ms: Stats,
    /// Requests per second that met the SLO (all completed ones without an SLO).
    pub goodput: f64,
    /// What the server proposed and kept by speculative decoding during the run, where
    /// its `/metrics` counts it (ours with `--spec`).
    #[serde(default)]
    pub speculation: Option<Speculation>,
}

/// Tokens proposed and kept by a server's speculative decoding, and what its draft model
/// ran (zeros without one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Speculation {
    pub proposed: u64,
    pub accepted: u64,
    /// Tokens run through the draft model (text read into its cache, tokens drafted) and
    /// the seconds its passes took.
    #[serde(default)]
    pub draft_tokens: u64,
    #[serde(default)]
    pub draft_seconds: f64,
}

impl Speculation {
    /// The server's counters now: our Prometheus counters at `/metrics`; `None` for a
    /// server without them (or none reachable).
    pub fn read(target: &Target) -> Option<Speculation> {
        let url = format!("{}/metrics", target.url.trim_end_matches('/'));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut req = agent.get(&url);
        if let Some(k) = &target.api_key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let text = req.call().ok()?.body_mut().read_to_string().ok()?;
        Speculation::parse(&text)
    }

    fn parse(metrics: &str) -> Option<Speculation> {
        let counter = |name: &str| {
            metrics.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix(' ')?;
                value.trim().parse::<f64>().ok()
            })
        };
        Some(Speculation {
            proposed: counter("llama_gpu_speculative_proposed_tokens_total")? as u64,
            accepted: counter("llama_gpu_speculative_accepted_tokens_total")? as u64,
            draft_tokens: counter("llama_gpu_draft_tokens_total").unwrap_or(0.0) as u64,
            draft_seconds: counter("llama_gpu_draft_seconds_total").unwrap_or(0.0),
        })
    }

    /// What was counted between `before` and `self`; `None` when nothing was proposed
    /// and no draft model ran.
    pub fn since(self, before: Speculation) -> Option<Speculation> {
        let counted = Speculation {
            proposed: self.proposed.saturating_sub(before.proposed),
            accepted: self.accepted.saturating_sub(before.accepted),
            draft_tokens: self.draft_tokens.saturating_sub(before.draft_tokens),
            draft_seconds: (self.draft_seconds - before.draft_seconds).max(0.0),
        };
        (counted.proposed > 0 || counted.draft_tokens > 0).then_some(counted)
    }
}

pub fn summarize(load: Load, records: &[Record], duration_s: f64, slo: &Slo) -> Summary {
    let ok: Vec<&Record> = records.iter().filter(|r| r.error.is_none()).collect();
    let mut errors = BTreeMap::new();
    for r in records {
        if let Some(e) = &r.error {
            *errors.entry(e.clone()).or_default() += 1;
        }
    }
    let output: usize = ok.iter().map(|r| r.output_tokens).sum();
    let prompt: usize = ok.iter().filter_map(|r| r.prompt_tokens).sum();
    let per_s = |x: f64| {
        if duration_s > 0.0 {
            x / duration_s
        } else {
            0.0
        }
    };
    let ms = |s: f64| s * 1e3;
    Summary {
        load,
        requests: records.len(),
        completed: ok.len(),
        failed: records.len() - ok.len(),
        errors,
        duration_s,
        request_throughput: per_s(ok.len() as f64),
        output_throughput: per_s(output as f64),
        total_token_throughput: per_s((output + prompt) as f64),
        ttft_ms: Stats::of(ok.iter().filter_map(|r| r.ttft_s).map(ms)),
        tpot_ms: Stats::of(ok.iter().filter_map(|r| r.tpot_s()).map(ms)),
        itl_ms: Stats::of(ok.iter().flat_map(|r| r.itl_s.iter().copied()).map(ms)),
        e2e_ms: Stats::of(ok.iter().map(|r| r.e2e_s).map(ms)),
        goodput: per_s(records.iter().filter(|r| r.meets(slo)).count() as f64),
        speculation: None,
    }
}

/// One run: `prompts` (cycled) against `target` under `load`, until `count` requests
/// were sent or `duration` passed.
pub struct Run<'a> {
    pub target: &'a Target,
    pub load: Load,
    pub prompts: &'a [Prompt],
    pub count: usize,
    pub duration: Option<Duration>,
    /// Fixes the Poisson arrival times.
    pub seed: u64,
}

/// Carries out `run`; setting `stop` ends it early. Requests in flight are always
/// awaited. Returns every request's record and the run's wall time.
pub fn run(run: &Run, stop: &AtomicBool, progress: &indicatif::ProgressBar) -> (Vec<Record>, f64) {
    let Run {
        target,
        load,
        prompts,
        count,
        duration,
        seed,
    } = *run;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(target.timeout))
        .build()
        .into();
    let start = Instant::now();
    let records = Mutex::new(Vec::with_capacity(count));
    let next = AtomicUsize::new(0);
    let out_of_time =
        || duration.is_some_and(|d| start.elapsed() >= d) || stop.load(Ordering::Relaxed);
    // Claims the next request index, if any are left.
    let claim = || {
        if out_of_time() {
            return None;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        (i < count).then_some(i)
    };
    let one = |i: usize| {
        let rec = send(&agent, target, &prompts[i % prompts.len()], start);
        progress.inc(1);
        records.lock().unwrap_or_else(|e| e.into_inner()).push(rec);
    };
    std::thread::scope(|scope| match load {
        Load::Concurrency(c) => {
            for _ in 0..c.max(1) {
                scope.spawn(|| {
                    while let Some(i) = claim() {
                        one(i);
                    }
                });
            }
        }
        Load::Rate(rate) => {
            let mut rng = Rng::new(seed);
            let mut at = 0.0;
            while let Some(i) = claim() {
                let wait = at - start.elapsed().as_secs_f64();
                if wait > 0.0 {
                    std::thread::sleep(Duration::from_secs_f64(wait));
                }
                if out_of_time() {
                    break;
                }
                let one = &one;
                scope.spawn(move || one(i));
                at += rng.exponential(rate);
            }
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut records = records.into_inner().unwrap_or_else(|e| e.into_inner());
    records.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    (records, elapsed)
}

/// Shared flag for Ctrl-C: set it and the run ends after the requests in flight.
pub fn stop_flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speculation_counters_are_read_from_prometheus_text() {
        let metrics = "# TYPE llama_gpu_speculative_proposed_tokens_total counter\n\
                       llama_gpu_speculative_proposed_tokens_total 496\n\
                       llama_gpu_speculative_accepted_tokens_total_extra 1\n\
                       llama_gpu_speculative_accepted_tokens_total 332\n\
                       llama_gpu_draft_tokens_total 1200\n\
                       llama_gpu_draft_seconds_total 2.5\n";
        let now = Speculation::parse(metrics).unwrap();
        assert_eq!(
            now,
            Speculation {
                proposed: 496,
                accepted: 332,
                draft_tokens: 1200,
                draft_seconds: 2.5,
            }
        );
        let before = Speculation {
            proposed: 96,
            accepted: 32,
            draft_tokens: 200,
            draft_seconds: 0.5,
        };
        assert_eq!(
            now.since(before),
            Some(Speculation {
                proposed: 400,
                accepted: 300,
                draft_tokens: 1000,
                draft_seconds: 2.0,
            })
        );
        assert_eq!(now.since(now), None);
        // A draft that read prompts but proposed nothing still shows what it cost.
        let read_only = Speculation {
            proposed: 96,
            accepted: 32,
            ..now
        };
        assert_eq!(read_only.since(before).map(|s| s.draft_tokens), Some(1000));
        // A server without a draft model: n-gram counters only.
        let ngram = Speculation::parse(
            "llama_gpu_speculative_proposed_tokens_total 4\n\
             llama_gpu_speculative_accepted_tokens_total 3\n",
        );
        assert_eq!(ngram.map(|s| s.draft_tokens), Some(0));
        assert_eq!(Speculation::parse("vllm_requests_total 3\n"), None);
    }

    #[test]
    fn summaries_count_errors_and_goodput() {
        let ok = |ttft: f64, e2e: f64, n: usize| Record {
            ttft_s: Some(ttft),
            e2e_s: e2e,
            output_tokens: n,
            prompt_tokens: Some(10),
            itl_s: vec![(e2e - ttft) / (n - 1) as f64; n - 1],
            ..Default::default()
        };
        let records = vec![
            ok(0.1, 1.1, 11),
            ok(0.5, 1.5, 11),
            Record {
                error: Some("http_503".into()),
                ..Default::default()
            },
        ];
        let slo = Slo {
            ttft_ms: Some(200.0),
            tpot_ms: Some(150.0),
        };
        let s = summarize(Load::Concurrency(2), &records, 2.0, &slo);
        assert_eq!((s.completed, s.failed), (2, 1));
        assert_eq!(s.errors["http_503"], 1);
        assert_eq!(s.output_throughput, 11.0);
        assert_eq!(s.total_token_throughput, 21.0);
        assert!((s.tpot_ms.mean - 100.0).abs() < 1e-9);
        assert_eq!(s.goodput, 0.5); // only the first meets TTFT ≤ 200 ms
    }
}
