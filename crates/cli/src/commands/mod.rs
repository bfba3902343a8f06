//! One module per subcommand, and the pieces they share: loading a model and reading
//! sampling flags.

pub mod bench;
pub mod bench_concurrency;
pub mod bench_serve;
pub mod bench_spec;
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
    NgramSpeculation, RopeOverrides, RopeScalingKind, SamplingParams, Tokenizer,
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
    /// Context size in tokens (the KV cache is sized to it). Default: 4096 (512 for
    /// perplexity), or the
    /// model's context if shorter; 0: the model's context. Beyond the model's context
    /// only with RoPE scaling (`--rope-scaling`).
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<usize>,
    /// `-c` when not given, if the model's context is at least that long (perplexity
    /// sets llama-perplexity's 512).
    #[arg(skip = 4096usize)]
    pub default_ctx_size: usize,
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
    #[command(flatten)]
    pub rope: RopeArgs,
}

/// RoPE settings over the file's, with llama.cpp's names, to run a model beyond the
/// context it was trained at.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RopeArgs {
    /// RoPE scaling: none, linear or yarn (default: the file's).
    #[arg(long = "rope-scaling")]
    pub scaling: Option<RopeScalingKind>,
    /// The RoPE scaling factor: the context grows this many times (default: the file's).
    #[arg(long = "rope-scale")]
    pub scale: Option<f32>,
    /// RoPE's frequency base (default: the file's).
    #[arg(long = "rope-freq-base")]
    pub freq_base: Option<f32>,
    /// RoPE's frequency scale, 1 / --rope-scale.
    #[arg(long = "rope-freq-scale", conflicts_with = "scale")]
    pub freq_scale: Option<f32>,
    /// YaRN: the context the model was trained at (default: the file's).
    #[arg(long = "yarn-orig-ctx")]
    pub original_context: Option<usize>,
    /// YaRN: how much of the extrapolation ramp applies (default 1 with YaRN).
    #[arg(long = "yarn-ext-factor")]
    pub ext_factor: Option<f32>,
    /// YaRN: the low correction dimension (default 32).
    #[arg(long = "yarn-beta-fast")]
    pub beta_fast: Option<f32>,
    /// YaRN: the high correction dimension (default 1).
    #[arg(long = "yarn-beta-slow")]
    pub beta_slow: Option<f32>,
}

impl RopeArgs {
    fn overrides(&self) -> Result<RopeOverrides> {
        let factor = match self.freq_scale {
            Some(s) if !(s.is_finite() && s > 0.0) => {
                return Err(usage(format!(
                    "--rope-freq-scale must be a positive number, not {s}"
                )))
            }
            Some(s) => Some(1.0 / s),
            None => self.scale,
        };
        Ok(RopeOverrides {
            scaling: self.scaling,
            factor,
            freq_base: self.freq_base,
            original_context: self.original_context,
            yarn_ext_factor: self.ext_factor,
            yarn_beta_fast: self.beta_fast,
            yarn_beta_slow: self.beta_slow,
        })
    }
}

pub struct Loaded {
    pub model: Llama<Device>,
    /// The context size: `-c`, or its default for this model.
    pub context: usize,
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

/// Runs `work` on a thread of the worker pool, so that the parallel loops it starts (a
/// few per layer and token) share their work with the other workers directly. Started
/// from the main thread instead, each loop is handed to the workers and waited for: a
/// wake-up and a hand-back per matrix product, about a tenth of a one-token step of a
/// small model on two cores.
pub fn on_worker_thread<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| work())
}

pub fn load(args: &ModelArgs) -> Result<Loaded> {
    let device = open_device(&args.device)?;
    let path = resolve_model(&args.model)?;
    let file =
        Arc::new(GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?);
    let mut model =
        Llama::load(device, file.clone()).with_context(|| format!("loading {}", path.display()))?;
    model
        .override_rope(&args.rope.overrides()?)
        .map_err(|e| usage(e.to_string()))?;
    let context = context_size(args, &model.config)?;
    if args.flash_attn {
        model.attention_order = AttentionOrder::Flash;
    }
    model.fit_rope_to_context(context);
    model.kv_types = KvTypes {
        k: args.cache_type_k,
        v: args.cache_type_v,
    };
    let (full, windowed) = model.kv_block_bytes();
    tracing::info!(
        "KV cache: keys {}, values {}, {:.1} KiB per token{}",
        args.cache_type_k.name(),
        args.cache_type_v.name(),
        model.kv_bytes_per_token(model.kv_types) as f64 / 1024.0,
        match model.kv_layout.window() {
            Some(w) => format!(
                " ({:.1} KiB in full-attention layers, {:.1} KiB in windowed layers, which serving keeps for {w} positions and a single sequence for {})",
                full as f64 / engine::backend::KV_BLOCK_SIZE as f64 / 1024.0,
                windowed as f64 / engine::backend::KV_BLOCK_SIZE as f64 / 1024.0,
                engine::window_ring::WindowRing::kept_for(w).min(context),
            ),
            None => String::new(),
        }
    );
    let metadata = &file.gguf.metadata;
    let tokenizer = Tokenizer::from_metadata(metadata).context("building the tokenizer")?;
    let template = ChatTemplate::from_metadata(metadata).context("reading the chat template")?;
    Ok(Loaded {
        model,
        context,
        tokenizer: Arc::new(tokenizer),
        template,
    })
}

/// `-c`, or its default: `default_ctx_size` or the model's context if shorter; 0 means
/// the model's context. Past the model's context is refused: its positions would rotate by angles
/// it never saw, and the output would be garbage without an error.
fn context_size(args: &ModelArgs, config: &engine::Config) -> Result<usize> {
    let usable = config.usable_context();
    let context = match args.ctx_size {
        None => usable.min(args.default_ctx_size),
        Some(0) => usable,
        Some(c) => c,
    };
    if context > usable {
        return Err(usage(format!(
            "-c {context} is beyond the model's context of {usable} tokens \
             (trained at {}{}); raise it with RoPE scaling, e.g. --rope-scaling yarn \
             --rope-scale {}, or ask for a smaller -c",
            config.context_length,
            match config.rope_scaling.factor() {
                f if f != 1.0 => format!(", RoPE scaling ×{f}"),
                _ => String::new(),
            },
            context.div_ceil(config.context_length).next_power_of_two(),
        )));
    }
    Ok(context)
}

/// Speculative decoding (`run`, `chat`, `serve`): the output is the same, token for
/// token.
#[derive(clap::Args, Clone, Debug)]
pub struct SpeculationArgs {
    /// Propose tokens and check them in one pass: `ngram` looks the last tokens up in
    /// the prompt and the output so far (pays off when the output repeats the input:
    /// rewriting, extending, quoting code or text); `draft` has a smaller model with the
    /// same vocabulary (`--draft-model`) decode ahead.
    #[arg(long = "spec", value_name = "KIND", value_parser = ["ngram", "draft"])]
    kind: Option<String>,
    /// The draft model for `--spec draft`: a GGUF path, a store name or a digest prefix.
    #[arg(long = "draft-model", alias = "md", value_name = "MODEL")]
    draft_model: Option<String>,
    /// Most tokens proposed at once.
    #[arg(long = "spec-k", default_value_t = 8, requires = "kind")]
    max_draft: usize,
    /// `--spec draft`: the fewest tokens the draft proposes each round, whatever its
    /// measured cost and acceptance say (llama.cpp's `--draft-min`); 0: they decide.
    #[arg(long = "spec-k-min", default_value_t = 0, requires = "kind")]
    min_draft: usize,
    /// `--spec draft`: stop drafting at the first token less likely than this under the
    /// draft (llama.cpp's `--draft-p-min`); that token is still checked where its row of
    /// the target's pass pays for itself.
    #[arg(long = "spec-p-min", default_value_t = 0.75, requires = "kind")]
    min_confidence: f32,
    /// The longest run of last tokens matched: the longest match (the latest among
    /// equals) proposes, and the longer it is, the more of its proposals are checked.
    #[arg(long = "spec-ngram-max", default_value_t = NgramSpeculation::default().max_ngram, requires = "kind")]
    max_ngram: usize,
    /// The shortest run of last tokens looked up.
    #[arg(long = "spec-ngram-min", default_value_t = NgramSpeculation::default().min_ngram, requires = "kind")]
    min_ngram: usize,
    /// `--spec draft`: the tokens the draft scores, the vocabulary's first ones by id
    /// (`half`, `all`, or a count). In a byte-pair vocabulary the later ids are rare
    /// merges; the draft never proposes them, and scores the rest faster. The output
    /// does not change: the model checks every token.
    #[arg(
        long = "draft-vocab",
        default_value = "half",
        value_name = "TOKENS",
        requires = "draft_model"
    )]
    draft_vocab: DraftVocab,
}

/// How much of the vocabulary a draft model scores (`--draft-vocab`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DraftVocab {
    All,
    Half,
    First(usize),
}

impl std::str::FromStr for DraftVocab {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "all" => Ok(DraftVocab::All),
            "half" => Ok(DraftVocab::Half),
            _ => match s.parse::<usize>() {
                Ok(n) if n > 0 => Ok(DraftVocab::First(n)),
                _ => Err(format!(
                    "{s:?} is not `all`, `half` or a count of tokens (at least 1)"
                )),
            },
        }
    }
}

impl DraftVocab {
    /// Tokens scored out of a vocabulary of `vocab`.
    pub fn tokens(self, vocab: usize) -> usize {
        match self {
            DraftVocab::All => vocab,
            DraftVocab::Half => vocab.div_ceil(2),
            DraftVocab::First(n) => n.min(vocab),
        }
    }
}

impl SpeculationArgs {
    /// Whether any speculation was asked for.
    pub fn enabled(&self) -> bool {
        self.kind.is_some()
    }

    /// The n-gram lookup asked for, if any.
    pub fn speculation(&self) -> Result<Option<NgramSpeculation>> {
        if self.max_draft == 0 {
            return Err(usage("--spec-k must be at least 1"));
        }
        match (self.kind.as_deref(), &self.draft_model) {
            (Some("ngram"), None) => {}
            (Some("draft"), Some(_)) => {
                if self.min_draft > self.max_draft {
                    return Err(usage("--spec-k-min must be at most --spec-k"));
                }
                if !(0.0..=1.0).contains(&self.min_confidence) {
                    return Err(usage("--spec-p-min must be between 0 and 1"));
                }
                return Ok(None);
            }
            (Some("draft"), None) => return Err(usage("--spec draft needs --draft-model")),
            (_, Some(_)) => return Err(usage("--draft-model goes with --spec draft")),
            _ => return Ok(None),
        }
        if self.min_ngram == 0 || self.min_ngram > self.max_ngram {
            return Err(usage(
                "--spec-ngram-min must be at least 1, and at most --spec-ngram-max",
            ));
        }
        Ok(Some(NgramSpeculation {
            max_draft: self.max_draft,
            max_ngram: self.max_ngram,
            min_ngram: self.min_ngram,
        }))
    }

    /// The draft model for `--spec draft`, loaded with the target's settings and
    /// context, once its vocabulary is checked against the target's.
    pub fn load_draft(&self, target: &ModelArgs, loaded: &Loaded) -> Result<Option<Loaded>> {
        self.speculation()?; // the flags go together
        let Some(name) = &self.draft_model else {
            return Ok(None);
        };
        let args = ModelArgs {
            model: name.clone(),
            ctx_size: Some(loaded.context),
            ..target.clone()
        };
        let mut draft = load(&args).context("loading the draft model")?;
        let vocab = loaded.model.config.vocab_size;
        let mismatch = if draft.model.config.vocab_size != vocab {
            Some(format!(
                "{} tokens against {vocab}",
                draft.model.config.vocab_size
            ))
        } else {
            (0..vocab as u32)
                .find(|&id| draft.tokenizer.token_bytes(id) != loaded.tokenizer.token_bytes(id))
                .map(|id| format!("token {id} differs"))
        };
        if let Some(mismatch) = mismatch {
            return Err(usage(format!(
                "the draft model {name:?} does not share the model's vocabulary ({mismatch})"
            )));
        }
        draft
            .model
            .limit_logits(self.draft_vocab.tokens(vocab))
            .context("limiting the draft model's vocabulary (--draft-vocab)")?;
        Ok(Some(draft))
    }

    /// `draft` drafting for the serving engine, as the flags say.
    pub fn serving_draft(&self, draft: Loaded) -> engine::serving::DraftModel<Device> {
        engine::serving::DraftModel {
            model: draft.model,
            max_draft: self.max_draft,
            min_draft: self.min_draft,
            min_confidence: self.min_confidence,
        }
    }

    /// A drafter over `draft` for a session with `loaded`'s model.
    pub fn drafter<'m>(
        &self,
        draft: &'m Loaded,
        loaded: &Loaded,
    ) -> Result<engine::Drafter<'m, Device>> {
        let mut drafter = engine::Drafter::new(
            &draft.model,
            loaded.model.config.vocab_size,
            loaded.context,
            self.max_draft,
            self.min_confidence,
        )?;
        drafter.min_draft = self.min_draft;
        Ok(drafter)
    }
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
