//! Model hyperparameters read from GGUF metadata (`{arch}.block_count`, ...).

use crate::error::{EngineError, Result};
use gguf::Metadata;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    /// Llama graph with biases on Q, K and V, and NeoX-ordered RoPE.
    Qwen2,
}

impl Architecture {
    pub fn from_name(name: &str) -> Result<Architecture> {
        match name {
            "llama" => Ok(Architecture::Llama),
            "mistral" => Ok(Architecture::Mistral),
            "qwen2" => Ok(Architecture::Qwen2),
            other => Err(EngineError::UnsupportedArchitecture(other.into())),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions are divided by the factor.
    Linear(f32),
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
        let vocab_size = match get("vocab_size") {
            Ok(v) => v,
            Err(_) => m.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_scaling = match m.get_str(&key("rope.scaling.type")) {
            Err(_) => RopeScaling::None,
            Ok("none") => RopeScaling::None,
            Ok("linear") => RopeScaling::Linear(m.get_f32(&key("rope.scaling.factor"))?),
            Ok(other) => {
                return Err(EngineError::Config(format!(
                    "RoPE scaling {other:?} is not supported (supported: none, linear, llama3 via rope_freqs)"
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
            rope_neox: arch == Architecture::Qwen2,
            rope_scaling,
        };
        if config.rope_dims > head_dim || !config.rope_dims.is_multiple_of(2) {
            return Err(EngineError::Config(format!(
                "rope.dimension_count {} must be even and at most the head size {head_dim}",
                config.rope_dims
            )));
        }
        Ok(config)
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
}
