//! `/metrics` in Prometheus' text format: the server's own request counters and
//! latencies (through the `prometheus` crate), then the engine's gauges, counters and
//! histograms, all named `llama_gpu_…`.

use engine::serving::{Histogram, Metrics, LATENCY_BUCKETS};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use std::fmt::Write;

pub struct HttpMetrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub response_time: HistogramVec,
    pub e2e_latency: HistogramVec,
}

impl HttpMetrics {
    pub fn new() -> HttpMetrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "llama_gpu_http_requests_total",
                "HTTP requests by route and status.",
            ),
            &["route", "status"],
        )
        .expect("valid metric");
        let response_time = HistogramVec::new(
            HistogramOpts::new(
                "llama_gpu_http_response_seconds",
                "Time from request to response headers, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let e2e_latency = HistogramVec::new(
            HistogramOpts::new(
                "llama_gpu_e2e_request_latency_seconds",
                "Time from request to its last generated token, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(response_time.clone()),
            Box::new(e2e_latency.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        HttpMetrics {
            registry,
            requests,
            response_time,
            e2e_latency,
        }
    }

    /// Everything, the engine's figures included.
    pub fn render(&self, engine: Option<&Metrics>) -> String {
        let mut out = TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default();
        if let Some(m) = engine {
            render_engine(&mut out, m);
        }
        out
    }
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (le, count) in LATENCY_BUCKETS.iter().zip(h.counts) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.sum, h.count);
}

fn render_engine(out: &mut String, m: &Metrics) {
    let usage = if m.kv_blocks_total == 0 {
        0.0
    } else {
        m.kv_blocks_used as f64 / m.kv_blocks_total as f64
    };
    metric(
        out,
        "llama_gpu_requests_waiting",
        "gauge",
        "Requests waiting for admission.",
        m.waiting as f64,
    );
    metric(
        out,
        "llama_gpu_requests_running",
        "gauge",
        "Sequences being generated.",
        m.running as f64,
    );
    metric(
        out,
        "llama_gpu_kv_cache_blocks_used",
        "gauge",
        "KV-cache blocks held by sequences.",
        m.kv_blocks_used as f64,
    );
    metric(
        out,
        "llama_gpu_kv_cache_blocks_total",
        "gauge",
        "KV-cache blocks in the pool.",
        m.kv_blocks_total as f64,
    );
    metric(
        out,
        "llama_gpu_kv_cache_blocks_cached",
        "gauge",
        "Full blocks kept for prefix reuse.",
        m.kv_blocks_cached as f64,
    );
    metric(
        out,
        "llama_gpu_kv_cache_window_blocks_used",
        "gauge",
        "Blocks of the sliding-window layers' pool held by sequences (0 without one).",
        m.kv_window_blocks_used as f64,
    );
    metric(
        out,
        "llama_gpu_kv_cache_window_blocks_total",
        "gauge",
        "Blocks in the sliding-window layers' pool (0 without one).",
        m.kv_window_blocks_total as f64,
    );
    metric(
        out,
        "llama_gpu_draft_kv_cache_blocks_used",
        "gauge",
        "Blocks of the draft model's pool held by sequences (0 without a draft model).",
        m.draft_kv_blocks_used as f64,
    );
    metric(
        out,
        "llama_gpu_draft_kv_cache_blocks_total",
        "gauge",
        "Blocks in the draft model's pool (0 without a draft model).",
        m.draft_kv_blocks_total as f64,
    );
    metric(
        out,
        "llama_gpu_kv_cache_usage_ratio",
        "gauge",
        "Share of KV-cache blocks in use.",
        usage,
    );
    metric(
        out,
        "llama_gpu_prefix_cache_hit_rate",
        "gauge",
        "Share of prompt tokens found in the prefix cache.",
        m.prefix_hit_rate(),
    );
    metric(
        out,
        "llama_gpu_prefix_cache_queried_tokens_total",
        "counter",
        "Prompt tokens looked up in the prefix cache.",
        m.prefix_queried_tokens as f64,
    );
    metric(
        out,
        "llama_gpu_prefix_cache_hit_tokens_total",
        "counter",
        "Prompt tokens found in the prefix cache.",
        m.prefix_hit_tokens as f64,
    );
    metric(
        out,
        "llama_gpu_preemptions_total",
        "counter",
        "Sequences preempted for lack of KV blocks.",
        m.preemptions as f64,
    );
    metric(
        out,
        "llama_gpu_requests_finished_total",
        "counter",
        "Engine requests finished or cancelled.",
        m.requests_finished as f64,
    );
    metric(
        out,
        "llama_gpu_requests_refused_total",
        "counter",
        "Engine requests refused at submission.",
        m.requests_refused as f64,
    );
    metric(
        out,
        "llama_gpu_prompt_tokens_total",
        "counter",
        "Prompt tokens admitted.",
        m.prompt_tokens as f64,
    );
    metric(
        out,
        "llama_gpu_generation_tokens_total",
        "counter",
        "Tokens generated.",
        m.generated_tokens as f64,
    );
    metric(
        out,
        "llama_gpu_speculative_proposed_tokens_total",
        "counter",
        "Tokens proposed by speculative decoding and checked.",
        m.speculative_proposed_tokens as f64,
    );
    metric(
        out,
        "llama_gpu_speculative_accepted_tokens_total",
        "counter",
        "Proposed tokens that were kept.",
        m.speculative_accepted_tokens as f64,
    );
    metric(
        out,
        "llama_gpu_draft_tokens_total",
        "counter",
        "Tokens run through the draft model: text read into its cache and tokens drafted.",
        m.draft_tokens as f64,
    );
    metric(
        out,
        "llama_gpu_draft_seconds_total",
        "counter",
        "Seconds the draft model's passes took.",
        m.draft_seconds,
    );
    metric(
        out,
        "llama_gpu_engine_steps_total",
        "counter",
        "Batched model steps.",
        m.steps as f64,
    );
    histogram(
        out,
        "llama_gpu_queue_time_seconds",
        "Time from submission to admission.",
        &m.queue_time,
    );
    histogram(
        out,
        "llama_gpu_time_to_first_token_seconds",
        "Time from submission to the first token.",
        &m.time_to_first_token,
    );
    histogram(
        out,
        "llama_gpu_inter_token_latency_seconds",
        "Time between consecutive tokens of a sample.",
        &m.inter_token_latency,
    );
}
