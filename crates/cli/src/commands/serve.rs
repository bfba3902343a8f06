//! `llama-gpu serve`: the OpenAI-compatible server. It listens at once (`/health`
//! answers 503 while the model loads), then serves until SIGINT or SIGTERM, letting
//! requests in flight finish for up to `--shutdown-timeout`.

use super::{load, usage, ContentTokensArg, ModelArgs, SpeculationArgs};
use anyhow::{Context, Result};
use engine::{Engine, EngineConfig, KvBudget};
use server::{AppState, Model, ServerConfig};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences generated at once; the KV cache holds `--ctx-size` tokens for each
    /// unless `--kv-cache-bytes` is given.
    #[arg(short = 'p', long = "parallel", alias = "np", default_value_t = 8)]
    parallel: usize,
    /// KV-cache budget in bytes (overrides ctx-size × parallel).
    #[arg(long)]
    kv_cache_bytes: Option<usize>,
    /// On a GPU: give the KV cache this fraction (0–1] of the device memory left free
    /// once the weights and the activations of a step are provided for (overrides
    /// ctx-size × parallel).
    #[arg(long)]
    gpu_memory_fraction: Option<f64>,
    /// Tokens per engine step (decodes plus prompt chunks).
    #[arg(long, default_value_t = 512)]
    max_batch_tokens: usize,
    /// While requests are generating, size other requests' prompt chunks so that a step
    /// takes about this long (milliseconds, adapted from measured steps): a long prompt
    /// then delays the streams' next tokens by about this much. 0: chunks fill
    /// --max-batch-tokens.
    #[arg(long, default_value_t = 150)]
    itl_target_ms: u64,
    /// Requests that may wait for a free sequence; more are refused with 503.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Do not reuse the KV blocks of identical prompt prefixes.
    #[arg(long)]
    no_prefix_cache: bool,
    /// Worker threads for the model (default: all cores).
    #[arg(short, long)]
    threads: Option<usize>,
    /// The model name clients use (repeatable: the first is the id `/v1/models` lists,
    /// the others are aliases; default: the -m value, or the file's name). `--alias` is
    /// llama.cpp's name for it.
    #[arg(long = "served-model-name", alias = "alias", value_name = "NAME")]
    served_model_names: Vec<String>,
    /// Accept only requests bearing this key (repeatable).
    #[arg(long = "api-key", env = "LLAMA_GPU_API_KEY")]
    api_keys: Vec<String>,
    /// A file of API keys, one per line.
    #[arg(long)]
    api_key_file: Option<std::path::PathBuf>,
    /// Requests per minute per key.
    #[arg(long)]
    rate_limit_rpm: Option<u32>,
    /// Prompt plus generated tokens per minute per key.
    #[arg(long)]
    rate_limit_tpm: Option<u32>,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Seconds a generation may take before it is ended.
    #[arg(long)]
    request_timeout: Option<f64>,
    /// Tokens generated for a request that sets no `max_tokens` (the context's end comes
    /// first when it is nearer).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens_default: u32,
    /// Allow browsers on this origin (repeatable).
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    #[command(flatten)]
    content_tokens: ContentTokensArg,
    #[command(flatten)]
    speculation: SpeculationArgs,
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30.0)]
    shutdown_timeout: f64,
}

fn model_id(args: &Args) -> String {
    if let Some(name) = args.served_model_names.first() {
        return name.clone();
    }
    let m = &args.model.model;
    let path = std::path::Path::new(m);
    if path.exists() {
        path.file_name()
            .map_or(m.clone(), |n| n.to_string_lossy().into_owned())
    } else {
        m.clone()
    }
}

pub fn run(args: Args) -> Result<()> {
    if args
        .gpu_memory_fraction
        .is_some_and(|f| !(f > 0.0 && f <= 1.0))
    {
        return Err(usage("--gpu-memory-fraction must be in (0, 1]"));
    }
    if args.parallel == 0 || args.max_batch_tokens == 0 || args.threads == Some(0) {
        return Err(usage(
            "--parallel, --max-batch-tokens and --threads must be at least 1",
        ));
    }
    let speculation = args.speculation.speculation()?;
    let mut api_keys = args.api_keys.clone();
    if let Some(file) = &args.api_key_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the API key file {}", file.display()))?;
        api_keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
    }
    let bad_seconds = |s: f64| !(s.is_finite() && s > 0.0);
    if args.request_timeout.is_some_and(bad_seconds) || bad_seconds(args.shutdown_timeout) {
        return Err(usage(
            "--request-timeout and --shutdown-timeout must be positive seconds",
        ));
    }
    let config = ServerConfig {
        model_id: model_id(&args),
        model_aliases: args.served_model_names.iter().skip(1).cloned().collect(),
        api_keys,
        requests_per_minute: args.rate_limit_rpm,
        tokens_per_minute: args.rate_limit_tpm,
        max_body_bytes: args.max_body_bytes,
        request_timeout: args.request_timeout.map(Duration::from_secs_f64),
        cors_origins: args.cors_origins.clone(),
        content_tokens: args.content_tokens.rule(),
        max_tokens_default: args.max_tokens_default as usize,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let address = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("listening on {address}"))?;
        let bound = listener.local_addr()?;
        if config.api_keys.is_empty() && !bound.ip().is_loopback() {
            tracing::warn!(
                "listening on {bound} without --api-key: anyone who can reach it can use it"
            );
        }
        eprintln!("llama-gpu: listening on http://{bound}");
        let state = AppState::new(config);
        let loading = {
            let state = state.clone();
            std::thread::spawn(move || -> Result<()> {
                let loaded = load(&args.model)?;
                let mut engine_config = EngineConfig::new(loaded.context, args.parallel);
                if let Some(bytes) = args.kv_cache_bytes {
                    engine_config.kv_budget = KvBudget::Bytes(bytes);
                }
                if let Some(fraction) = args.gpu_memory_fraction {
                    engine_config.kv_budget = KvBudget::Bytes(gpu_kv_bytes(
                        &loaded.model,
                        fraction,
                        args.max_batch_tokens,
                        args.parallel,
                    )?);
                }
                engine_config.max_batch_tokens = args.max_batch_tokens;
                engine_config.step_target =
                    Some(std::time::Duration::from_millis(args.itl_target_ms));
                engine_config.max_waiting = args.max_queue;
                engine_config.prefix_caching = !args.no_prefix_cache;
                engine_config.threads = args.threads;
                engine_config.speculation = speculation;
                let draft = args.speculation.load_draft(&args.model, &loaded)?;
                let engine = match draft {
                    Some(draft) => Engine::start_with_draft(
                        loaded.model,
                        args.speculation.serving_draft(draft),
                        loaded.tokenizer,
                        engine_config,
                    )?,
                    None => Engine::start(loaded.model, loaded.tokenizer, engine_config)?,
                };
                state.set_model(Model {
                    engine,
                    template: loaded.template,
                });
                eprintln!("llama-gpu: model loaded, ready");
                Ok(())
            })
        };
        let grace = Duration::from_secs_f64(args.shutdown_timeout);
        let server = tokio::spawn(server::serve(listener, state, shutdown_signal(), grace));
        // A model that fails to load ends the server with its error.
        tokio::task::spawn_blocking(move || {
            loading
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the model loading thread panicked")))
        })
        .await
        .context("loading the model")??;
        server
            .await
            .context("the server task")?
            .context("serving")?;
        eprintln!("llama-gpu: stopped");
        Ok(())
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}

/// The KV budget `--gpu-memory-fraction` asks for: that share of the device memory free
/// after loading, less what one step's activations (and logits) take.
fn gpu_kv_bytes(
    model: &engine::Llama<engine::Device>,
    fraction: f64,
    batch_tokens: usize,
    sequences: usize,
) -> Result<usize> {
    let engine::Device::Cuda(gpu) = &model.backend else {
        return Err(usage(
            "--gpu-memory-fraction needs --device cuda (or auto with a GPU)",
        ));
    };
    let c = &model.config;
    let per_token =
        4 * (3 * c.dim + 2 * c.q_dim() + 2 * c.kv_dim() + 2 * c.ffn_dim) + 2 * c.ffn_dim.max(c.dim);
    let step = batch_tokens * per_token + sequences.max(1) * c.vocab_size * 4;
    let free = gpu.gpu().free_bytes()?;
    let usable = free.saturating_sub(2 * step + (256 << 20));
    let bytes = (usable as f64 * fraction) as usize;
    tracing::info!(
        "KV cache: {:.2} GiB ({fraction} of {:.2} GiB free after weights and step buffers)",
        bytes as f64 / (1u64 << 30) as f64,
        usable as f64 / (1u64 << 30) as f64
    );
    Ok(bytes)
}
