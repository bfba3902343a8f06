//! Model hyperparameters read from GGUF metadata (`{arch}.block_count`, ...), and the
//! rules that set a model family apart from Llama, as data that `forward()` reads.

use crate::error::{EngineError, Result};
use gguf::Metadata;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    /// Llama graph with biases on Q, K and V, and NeoX-ordered RoPE.
    Qwen2,
    /// Qwen2 without the biases, with RMSNorm over each head of Q and K.
    Qwen3,
    /// QK-norm, norms after attention and FFN too, GeGLU, scaled embeddings, and
    /// sliding-window attention on five layers of every six.
    Gemma3,
    /// Fused QKV and gate/up tensors, queries scaled before attention, LongRoPE.
    Phi3,
    /// Gemma 3 without QK-norm, with soft-capped attention scores and logits, and a
    /// window on every other layer.
    Gemma2,
    /// Llama with no RoPE on every fourth layer (NoPE).
    SmolLM3,
}

impl Architecture {
    pub fn from_name(name: &str) -> Result<Architecture> {
        match name {
            "llama" => Ok(Architecture::Llama),
            "mistral" => Ok(Architecture::Mistral),
            "qwen2" => Ok(Architecture::Qwen2),
            "qwen3" => Ok(Architecture::Qwen3),
            "gemma3" => Ok(Architecture::Gemma3),
            "phi3" => Ok(Architecture::Phi3),
            "gemma2" => Ok(Architecture::Gemma2),
            "smollm3" => Ok(Architecture::SmolLM3),
            other => Err(EngineError::UnsupportedArchitecture(other.into())),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions are divided by the factor.
    Linear(f32),
    /// YaRN with this factor: slow-turning pairs interpolated as by `Linear`, fast ones
    /// left alone, a ramp between (`quant::YarnRamp`), and a magnitude correction.
    Yarn(f32),
}

impl RopeScaling {
    /// How much longer a context it is meant for than the original one (1 without).
    pub fn factor(self) -> f32 {
        match self {
            RopeScaling::None => 1.0,
            RopeScaling::Linear(f) | RopeScaling::Yarn(f) => f,
        }
    }
}

/// YaRN's magnitude correction for a context `factor` times longer: 1 + 0.1 · ln factor.
pub(crate) fn yarn_magnitude(factor: f32) -> f32 {
    1.0 + 0.1 * factor.ln()
}

/// YaRN's knobs, llama.cpp's defaults unless overridden.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct YarnSettings {
    /// How much of the ramp applies: 1 with YaRN scaling, 0 without, unless set.
    pub ext_factor: Option<f32>,
    /// Pairs turning at least this often over the original context keep their angles.
    pub beta_fast: f32,
    /// Pairs turning at most this often over the original context are interpolated.
    pub beta_slow: f32,
}

impl Default for YarnSettings {
    fn default() -> Self {
        YarnSettings {
            ext_factor: None,
            beta_fast: 32.0,
            beta_slow: 1.0,
        }
    }
}

/// RoPE settings a user asks for over the file's (llama.cpp's `--rope-scaling`,
/// `--rope-scale`, `--rope-freq-base`, `--yarn-*`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RopeOverrides {
    /// `none`, `linear` or `yarn`.
    pub scaling: Option<RopeScalingKind>,
    /// The scaling factor (the file's, or 1, when not given).
    pub factor: Option<f32>,
    pub freq_base: Option<f32>,
    pub original_context: Option<usize>,
    pub yarn_ext_factor: Option<f32>,
    pub yarn_beta_fast: Option<f32>,
    pub yarn_beta_slow: Option<f32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeScalingKind {
    None,
    Linear,
    Yarn,
}

impl std::str::FromStr for RopeScalingKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(RopeScalingKind::None),
            "linear" => Ok(RopeScalingKind::Linear),
            "yarn" => Ok(RopeScalingKind::Yarn),
            other => Err(format!(
                "unknown RoPE scaling {other:?} (expected none, linear or yarn)"
            )),
        }
    }
}

/// The gate of the feed-forward block: `act(gate) · up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: x · sigmoid(x).
    Silu,
    /// GeGLU with GELU's tanh approximation.
    GeluTanh,
}

/// Sliding-window attention: the layers that use it see only the last `size` positions
/// (their own included) and rotate with a RoPE base of their own.
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    pub size: usize,
    /// Per layer: whether it is windowed.
    pub layers: Vec<bool>,
    pub rope_base: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub arch: Architecture,
    pub n_layers: usize,
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// Leading dimensions of each head that RoPE rotates.
    pub rope_dims: usize,
    /// NeoX ordering rotates (i, i + d/2) pairs; the original ordering rotates (2i, 2i+1).
    pub rope_neox: bool,
    pub rope_scaling: RopeScaling,
    /// Multiplies RoPE's cos and sin (`rope.scaling.attn_factor`; phi3's LongRoPE).
    pub rope_mscale: f32,
    /// The context the model was trained at before RoPE scaling; beyond it, phi3 uses
    /// its long RoPE factors (`rope_factors_long`) instead of the short ones. YaRN's
    /// ramp is placed for it (the trained context when not given).
    pub rope_original_context: Option<usize>,
    pub yarn: YarnSettings,

    // What families change (all off for Llama).
    /// Every this-many-th layer (the 4th, 8th, ...) attends without RoPE (smollm3: 4,
    /// fixed in llama.cpp rather than read from the file).
    pub no_rope_period: Option<usize>,
    /// RMSNorm over each head of Q and K before RoPE (qwen3, gemma3).
    pub qk_norm: bool,
    /// RMSNorm of the attention and FFN outputs before each residual add (gemma3).
    pub post_norms: bool,
    pub activation: Activation,
    /// The embeddings are multiplied by this (gemma3: √dim).
    pub embedding_scale: Option<f32>,
    /// Queries are multiplied by this before attention, which then leaves its scores
    /// unscaled (gemma3, as llama.cpp computes it); without it, scores are scaled by
    /// 1/√head_dim.
    pub query_scale: Option<f32>,
    pub sliding_window: Option<SlidingWindow>,
    /// Attention scores become cap·tanh(score / cap) before the softmax (gemma2).
    pub attention_softcap: Option<f32>,
    /// Logits become cap·tanh(logit / cap) (gemma2, some gemma3 files).
    pub final_softcap: Option<f32>,
}

impl Config {
    pub fn from_metadata(m: &Metadata) -> Result<Config> {
        let arch_name = m.get_str("general.architecture")?;
        let arch = Architecture::from_name(arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let get = |k: &str| -> Result<usize> { Ok(m.get_u32(&key(k))? as usize) };
        let dim = get("embedding_length")?;
        let n_heads = get("attention.head_count")?;
        let n_kv_heads = get("attention.head_count_kv").unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(EngineError::Config(format!(
                "{n_heads} attention heads cannot be shared by {n_kv_heads} KV heads"
            )));
        }
        let head_dim = get("attention.key_length").unwrap_or(dim / n_heads);
        let gemma = matches!(arch, Architecture::Gemma2 | Architecture::Gemma3);
        let vocab_size = match get("vocab_size") {
            Ok(v) => v,
            Err(_) => m.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_scaling = match m.get_str(&key("rope.scaling.type")) {
            Err(_) => RopeScaling::None,
            // LongRoPE's factors are tensors (`rope_factors_short/long`), read at load.
            Ok("none") | Ok("longrope") => RopeScaling::None,
            Ok("linear") => RopeScaling::Linear(m.get_f32(&key("rope.scaling.factor"))?),
            Ok("yarn") => RopeScaling::Yarn(m.get_f32(&key("rope.scaling.factor"))?),
            Ok(other) => {
                return Err(EngineError::Config(format!(
                    "RoPE scaling {other:?} is not supported (supported: none, linear, yarn, longrope, llama3 via rope_freqs)"
                )))
            }
        };
        let config = Config {
            arch,
            n_layers: get("block_count")?,
            dim,
            ffn_dim: get("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length: get("context_length")?,
            rms_eps: m.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_base: m.get_f32(&key("rope.freq_base")).unwrap_or(10000.0),
            rope_dims: get("rope.dimension_count").unwrap_or(head_dim),
            rope_neox: !matches!(
                arch,
                Architecture::Llama | Architecture::Mistral | Architecture::SmolLM3
            ),
            rope_scaling,
            rope_mscale: m.get_f32(&key("rope.scaling.attn_factor")).unwrap_or(1.0),
            rope_original_context: get("rope.scaling.original_context_length").ok(),
            yarn: YarnSettings::default(),
            no_rope_period: (arch == Architecture::SmolLM3).then_some(4),
            qk_norm: matches!(arch, Architecture::Qwen3 | Architecture::Gemma3),
            post_norms: gemma,
            activation: match gemma {
                true => Activation::GeluTanh,
                false => Activation::Silu,
            },
            embedding_scale: gemma.then(|| (dim as f32).sqrt()),
            query_scale: match arch {
                Architecture::Gemma2 | Architecture::Gemma3 => {
                    Some(gemma_query_scale(m, arch_name, dim, n_heads, head_dim))
                }
                Architecture::Phi3 => Some(1.0 / (head_dim as f32).sqrt()),
                _ => None,
            },
            sliding_window: sliding_window(m, arch, arch_name)?,
            attention_softcap: (arch == Architecture::Gemma2)
                .then(|| m.get_f32(&key("attn_logit_softcapping")).ok())
                .flatten(),
            final_softcap: gemma
                .then(|| m.get_f32(&key("final_logit_softcapping")).ok())
                .flatten()
                .filter(|&cap| cap != 0.0),
        };
        if config.rope_dims > head_dim || !config.rope_dims.is_multiple_of(2) {
            return Err(EngineError::Config(format!(
                "rope.dimension_count {} must be even and at most the head size {head_dim}",
                config.rope_dims
            )));
        }
        Ok(config)
    }

    /// The longest context the model is meant to see: its trained context, or the
    /// original one times the RoPE scaling factor when that is longer. (A file's own
    /// scaling without an original context already counts in its trained context.)
    pub fn usable_context(&self) -> usize {
        let scaled = self.rope_original_context.map_or(0, |original| {
            (original as f64 * self.rope_scaling.factor() as f64) as usize
        });
        self.context_length.max(scaled)
    }

    /// 1 / the RoPE scaling factor.
    pub fn rope_freq_scale(&self) -> f32 {
        1.0 / self.rope_scaling.factor()
    }

    /// How much of YaRN's ramp applies (0: YaRN is off).
    pub fn yarn_ext_factor(&self) -> f32 {
        let yarn = matches!(self.rope_scaling, RopeScaling::Yarn(_));
        self.yarn.ext_factor.unwrap_or(if yarn { 1.0 } else { 0.0 })
    }

    /// What multiplies RoPE's cos and sin besides YaRN's per-layer magnitude correction,
    /// as llama.cpp computes it: with YaRN, that correction for the model's factor and its
    /// inverse (llama.cpp cancels its kernel's correction this way, rounding included),
    /// then `rope.scaling.attn_factor`.
    pub fn rope_attention_factor(&self) -> f32 {
        let mut factor = 1.0;
        if self.yarn_ext_factor() != 0.0 {
            let scale = 1.0 / self.rope_freq_scale();
            if scale > 1.0 {
                factor = yarn_magnitude(scale);
            }
            factor *= 1.0 / yarn_magnitude(scale);
        }
        factor * self.rope_mscale
    }

    /// Applies a user's RoPE settings (see `RopeOverrides`) over the file's.
    pub fn override_rope(&mut self, o: &RopeOverrides) -> Result<()> {
        let positive = |name: &str, v: Option<f32>| match v {
            Some(x) if !(x.is_finite() && x > 0.0) => Err(EngineError::Config(format!(
                "{name} must be a positive number, not {x}"
            ))),
            _ => Ok(()),
        };
        positive("the RoPE scaling factor", o.factor)?;
        positive("the RoPE frequency base", o.freq_base)?;
        positive("YaRN's beta_fast", o.yarn_beta_fast)?;
        positive("YaRN's beta_slow", o.yarn_beta_slow)?;
        if let Some(base) = o.freq_base {
            self.rope_base = base;
        }
        let factor = o.factor.unwrap_or(self.rope_scaling.factor());
        self.rope_scaling = match o.scaling {
            Some(RopeScalingKind::None) => RopeScaling::None,
            Some(RopeScalingKind::Linear) => RopeScaling::Linear(factor),
            Some(RopeScalingKind::Yarn) => RopeScaling::Yarn(factor),
            // A factor alone rescales the file's kind, linear when it has none.
            None => match (o.factor, self.rope_scaling) {
                (None, kept) => kept,
                (Some(f), RopeScaling::Yarn(_)) => RopeScaling::Yarn(f),
                (Some(f), _) => RopeScaling::Linear(f),
            },
        };
        if o.original_context == Some(0) {
            return Err(EngineError::Config(
                "the original context of YaRN must be at least 1".into(),
            ));
        }
        // Scaling asked for here extends the context the file states.
        let rescaled = o.scaling.is_some() || o.factor.is_some();
        self.rope_original_context = o
            .original_context
            .or(self.rope_original_context)
            .or(rescaled.then_some(self.context_length));
        self.yarn = YarnSettings {
            ext_factor: o.yarn_ext_factor.or(self.yarn.ext_factor),
            beta_fast: o.yarn_beta_fast.unwrap_or(self.yarn.beta_fast),
            beta_slow: o.yarn_beta_slow.unwrap_or(self.yarn.beta_slow),
        };
        Ok(())
    }

    /// Whether layer `l` attends through a sliding window.
    pub fn is_windowed(&self, l: usize) -> bool {
        self.sliding_window
            .as_ref()
            .is_some_and(|w| w.layers.get(l) == Some(&true))
    }

    /// Whether layer `l` rotates its queries and keys.
    pub fn uses_rope(&self, l: usize) -> bool {
        self.no_rope_period
            .is_none_or(|p| !(l + 1).is_multiple_of(p))
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
}

/// Gemma scales queries by 1/√head_dim, except the 27B models (gemma2: 46 layers, gemma3:
/// 62), which use 1/√(dim / heads) (llama.cpp, after Google's reference implementation).
fn gemma_query_scale(
    m: &Metadata,
    arch_name: &str,
    dim: usize,
    n_heads: usize,
    head_dim: usize,
) -> f32 {
    let layers = m.get_u32(&format!("{arch_name}.block_count")).unwrap_or(0);
    let is_27b = matches!((arch_name, layers), ("gemma2", 46) | ("gemma3", 62));
    let d = if is_27b { dim / n_heads } else { head_dim };
    1.0 / (d as f32).sqrt()
}

/// Gemma's window: `attention.sliding_window` positions on every layer but each sixth
/// (gemma3) or on every other layer (gemma2), or the per-layer pattern the file gives;
/// gemma3's windowed layers rotate with base 10,000, gemma2's with the model's, unless
/// the file names another. Other families have none.
fn sliding_window(
    m: &Metadata,
    arch: Architecture,
    arch_name: &str,
) -> Result<Option<SlidingWindow>> {
    let (default_size, default_period, default_base) = match arch {
        Architecture::Gemma3 => (None, 6, 10000.0),
        Architecture::Gemma2 => (
            Some(4096),
            2,
            m.get_f32(&format!("{arch_name}.rope.freq_base"))
                .unwrap_or(10000.0),
        ),
        _ => return Ok(None),
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let size = match m
        .get_u32(&key("attention.sliding_window"))
        .ok()
        .or(default_size)
    {
        Some(0) | None => return Ok(None),
        Some(size) => size as usize,
    };
    let n_layers = m.get_u32(&key("block_count"))? as usize;
    let pattern_key = key("attention.sliding_window_pattern");
    let layers = match m.get_bool_array(&pattern_key) {
        Ok(per_layer) if per_layer.len() == n_layers => per_layer,
        Ok(per_layer) => {
            return Err(EngineError::Config(format!(
                "{pattern_key} has {} entries for {n_layers} layers",
                per_layer.len()
            )))
        }
        Err(_) => {
            let period = m.get_u32(&pattern_key).unwrap_or(default_period) as usize;
            (0..n_layers)
                .map(|l| period == 0 || l % period < period - 1)
                .collect()
        }
    };
    Ok(Some(SlidingWindow {
        size,
        layers,
        rope_base: m
            .get_f32(&key("rope.freq_base_swa"))
            .unwrap_or(default_base),
    }))
}
