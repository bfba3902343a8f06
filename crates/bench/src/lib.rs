//! Benchmarks that look at llama-gpu from the outside. `serve` is a load generator for any
//! OpenAI-compatible server (ours, llama-server, vLLM): it streams every response and
//! measures time to first token, time per output token, every inter-token gap and
//! end-to-end latency, at fixed concurrency levels or at a Poisson arrival rate. `report` turns result files
//! into a Markdown report with SVG plots, several runs (servers, devices) overlaid;
//! `sweep` writes the quantization ablation (size, perplexity, speed) and its plot.

pub mod report;
pub mod serve;
pub mod stats;
pub mod sweep;
pub mod workload;
