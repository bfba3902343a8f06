//! One module per subcommand, and the pieces they share: loading a model and reading
//! sampling flags.

pub mod bench;
pub mod bench_concurrency;
pub mod bench_serve;
pub mod bench_sweep;
pub mod chat;
pub mod doctor;
pub mod inspect;
pub mod models;
pub mod perplexity;
pub mod quantize;
pub mod run;
pub mod serve;
pub mod tokenize;

use anyhow::{Context, Result};
use engine::{
    AttentionOrder, ChatTemplate, ContentTokens, Device, DeviceChoice, KvCacheType, KvTypes, Llama,
    SamplingParams, Tokenizer,
};
use gguf::GgufFile;
use std::path::PathBuf;
use std::sync::Arc;

/// A mistake in the command line: reported like clap's own errors, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// Resolves a model argument to a file, pulling known models on first use.
pub fn resolve_model(model: &str) -> Result<PathBuf> {
    let store = store::Store::open_default().context("opening the model store")?;
    store
        .resolve(model)
        .with_context(|| format!("resolving model {model:?}"))
}

#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: a GGUF path, a store name (`default`), or a SHA-256 prefix.
    #[arg(short, long, env = "LLAMA_GPU_MODEL", default_value = "default")]
    pub model: String,
    /// Context size in tokens (the KV cache is sized to it).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    pub ctx_size: usize,
    /// Device: auto, cpu or cuda[:N].
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// On the CPU, sum attention in the order of llama.cpp's flash attention (its
    /// `-fa on`) instead of its matrix-product order, to reproduce those numbers.
    #[arg(long)]
    pub flash_attn: bool,
    /// How the KV cache stores keys: f16, q8_0 or q4_0 (CPU; llama.cpp's `-ctk`).
    #[arg(long = "cache-type-k", alias = "ctk", default_value = "f16")]
    pub cache_type_k: KvCacheType,
    /// How the KV cache stores values: f16, q8_0 or q4_0 (CPU; llama.cpp's `-ctv`).
    #[arg(long = "cache-type-v", alias = "ctv", default_value = "f16")]
    pub cache_type_v: KvCacheType,
}

pub struct Loaded {
    pub model: Llama<Device>,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
}

/// Opens the device `--device` names; compiled GPU kernels are cached in the store.
pub fn open_device(device: &str) -> Result<Device> {
    let choice: DeviceChoice = device.parse().map_err(usage)?;
    let kernel_cache = store::Store::open_default()
        .ok()
        .map(|s| s.root().join("kernels"));
    Device::open(choice, kernel_cache).with_context(|| format!("opening --device {device}"))
}

/// `-t/--threads` for commands that run on one thread count.
#[derive(clap::Args, Clone, Debug)]
pub struct ThreadsArg {
    /// Worker threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
}

impl ThreadsArg {
    /// Sizes the global worker pool.
    pub fn apply(&self) -> Result<()> {
        if let Some(n) = self.threads {
            if n == 0 {
                return Err(usage("--threads must be at least 1"));
            }
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()
                .context("starting the thread pool")?;
        }
        Ok(())
    }
}

pub fn load(args: &ModelArgs) -> Result<Loaded> {
    if args.ctx_size == 0 {
        return Err(usage("--ctx-size must be at least 1"));
    }
    let device = open_device(&args.device)?;
    let path = resolve_model(&args.model)?;
    let file =
        Arc::new(GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?);
    let mut model =
        Llama::load(device, file.clone()).with_context(|| format!("loading {}", path.display()))?;
    if args.flash_attn {
        model.attention_order = AttentionOrder::Flash;
    }
    model.fit_rope_to_context(args.ctx_size);
    model.kv_types = KvTypes {
        k: args.cache_type_k,
        v: args.cache_type_v,
    };
    tracing::info!(
        "KV cache: keys {}, values {}, {:.1} KiB per token",
        args.cache_type_k.name(),
        args.cache_type_v.name(),
        model.kv_bytes_per_token(model.kv_types) as f64 / 1024.0
    );
    let metadata = &file.gguf.metadata;
    let tokenizer = Tokenizer::from_metadata(metadata).context("building the tokenizer")?;
    let template = ChatTemplate::from_metadata(metadata).context("reading the chat template")?;
    if args.ctx_size > model.config.context_length {
        tracing::warn!(
            "--ctx-size {} is beyond the model's trained context of {}",
            args.ctx_size,
            model.config.context_length
        );
    }
    Ok(Loaded {
        model,
        tokenizer: Arc::new(tokenizer),
        template,
    })
}

/// How chat message text is tokenized (`run`, `chat`, `serve`).
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct ContentTokensArg {
    /// Read control-token spellings in message text (such as `<|im_end|>`) as control
    /// tokens, as llama.cpp and vLLM do. Off by default: message text is text, so it
    /// cannot end its turn or fake another role. For trusted input only.
    #[arg(long)]
    special_tokens_in_content: bool,
}

impl ContentTokensArg {
    pub fn rule(self) -> ContentTokens {
        if self.special_tokens_in_content {
            ContentTokens::Special
        } else {
            ContentTokens::Text
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.8, allow_negative_numbers = true)]
    pub temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub typical_p: f32,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// TOKEN_ID=BIAS, repeatable (use -inf to ban a token).
    #[arg(long = "logit-bias", value_parser = parse_bias)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Random seed (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
}

fn parse_bias(s: &str) -> Result<(u32, f32), String> {
    let (id, bias) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not TOKEN_ID=BIAS"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|_| format!("{id:?} is not a token id"))?;
    let bias = bias
        .trim()
        .parse()
        .map_err(|_| format!("{bias:?} is not a number"))?;
    Ok((id, bias))
}

impl SamplingArgs {
    pub fn params(&self) -> Result<SamplingParams> {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        let params = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            typical_p: self.typical_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: self.logit_bias.clone(),
            seed,
        };
        params.validate().map_err(|e| usage(e.to_string()))?;
        Ok(params)
    }
}
