//! Writes GGUF files with random weights in any quant type and a byte-level vocabulary,
//! for every architecture the engine runs (llama, qwen2, qwen3, gemma2/3, phi3, smollm3:
//! their tensors and metadata), so tests and benchmarks can run models that need no
//! download: small ones for tests, and the shapes of real models (`preset`) for
//! benchmarks.

use crate::error::{EngineError, Result};
use gguf::{Array, GgmlType, GgufWriter, Value, ValueType};
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct SyntheticModel {
    /// `llama`, `qwen2` (Q/K/V biases), `qwen3` (QK-norm), `gemma3` (QK-norm,
    /// post-norms, and a sliding window on every layer but each `window_period`-th),
    /// `gemma2` (gemma3 without QK-norm, with soft-capped scores and logits) or
    /// `phi3` (fused QKV and gate/up, LongRoPE factors and attention factor, RoPE on
    /// half of each head) or `smollm3` (llama's tensors, no RoPE on every fourth layer).
    pub architecture: &'static str,
    pub layers: usize,
    pub dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// `attention.key_length` when set; `dim / heads` otherwise.
    pub head_dim: Option<usize>,
    /// gemma3's `attention.sliding_window` and `attention.sliding_window_pattern`.
    pub window: usize,
    pub window_period: usize,
    pub ffn_dim: usize,
    pub context_length: usize,
    /// At least the 259 byte-level and control tokens; the rest are filler tokens.
    pub vocab_size: usize,
    pub rope_base: f32,
    /// `rope.scaling.type` and `rope.scaling.factor`, with the original context
    /// `context_length` (e.g. `("yarn", 4.0)`).
    pub rope_scaling: Option<(&'static str, f32)>,
    /// An `output.weight` of its own instead of the tied token embedding.
    pub separate_output: bool,
    /// Types of the 2-D weight matrices (norms stay F32).
    pub weights: WeightMix,
    pub seed: u64,
}

impl Default for SyntheticModel {
    fn default() -> Self {
        SyntheticModel {
            architecture: "llama",
            layers: 2,
            dim: 256,
            heads: 4,
            kv_heads: 2,
            head_dim: None,
            window: 512,
            window_period: 6,
            ffn_dim: 512,
            context_length: 256,
            vocab_size: BYTE_VOCAB,
            rope_base: 10000.0,
            rope_scaling: None,
            separate_output: false,
            weights: WeightMix::Uniform(GgmlType::Q8_0),
            seed: 1,
        }
    }
}

/// Shapes of real models, for benchmarks at realistic sizes, and tiny models of each
/// family (two to four layers, vocabulary 264, the family's metadata), for tests.
pub const PRESETS: &[&str] = &[
    "llama3-8b",
    "llama3-1b",
    "qwen2-7b",
    "qwen3-tiny",
    "gemma3-tiny",
    "gemma2-tiny",
    "phi3-tiny",
    "smollm3-tiny",
];

impl SyntheticModel {
    /// The shape and metadata of one of `PRESETS`, with random weights.
    pub fn preset(name: &str, weights: WeightMix) -> Option<SyntheticModel> {
        if let Some(family) = name.strip_suffix("-tiny") {
            return SyntheticModel::tiny(family).map(|m| SyntheticModel { weights, ..m });
        }
        let llama3 = SyntheticModel {
            layers: 32,
            dim: 4096,
            heads: 32,
            kv_heads: 8,
            ffn_dim: 14336,
            context_length: 8192,
            vocab_size: 128256,
            rope_base: 500000.0,
            separate_output: true,
            weights,
            ..Default::default()
        };
        Some(match name {
            "llama3-8b" => llama3,
            "llama3-1b" => SyntheticModel {
                layers: 16,
                dim: 2048,
                ffn_dim: 8192,
                separate_output: false,
                ..llama3
            },
            "qwen2-7b" => SyntheticModel {
                architecture: "qwen2",
                layers: 28,
                dim: 3584,
                heads: 28,
                kv_heads: 4,
                ffn_dim: 18944,
                context_length: 32768,
                vocab_size: 152064,
                rope_base: 1000000.0,
                ..llama3
            },
            _ => return None,
        })
    }

    /// A family's test model (`FAMILY-tiny`): two layers (smollm3: four), dim 256,
    /// vocabulary 264, the family's tensors and metadata.
    fn tiny(family: &str) -> Option<SyntheticModel> {
        let small = SyntheticModel {
            architecture: "",
            vocab_size: 264,
            ..Default::default()
        };
        // Layer 0 windowed (5 positions, fewer than a 12-token prompt), layer 1 global.
        let gemma3 = SyntheticModel {
            architecture: "gemma3",
            head_dim: Some(128),
            window: 5,
            window_period: 2,
            rope_base: 1_000_000.0,
            seed: 6,
            ..small
        };
        Some(match family {
            "qwen3" => SyntheticModel {
                architecture: "qwen3",
                separate_output: true,
                seed: 5,
                ..small
            },
            "gemma3" => gemma3,
            // Scores capped at 2, logits at 30.
            "gemma2" => SyntheticModel {
                architecture: "gemma2",
                seed: 8,
                ..gemma3
            },
            // Original context 256: contexts beyond it take the long RoPE factors.
            "phi3" => SyntheticModel {
                architecture: "phi3",
                heads: 4,
                kv_heads: 4,
                seed: 7,
                ..small
            },
            // Four layers, so that the last one attends without RoPE.
            "smollm3" => SyntheticModel {
                architecture: "smollm3",
                layers: 4,
                seed: 9,
                ..small
            },
            _ => return None,
        })
    }
}

/// Which type each weight matrix gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightMix {
    Uniform(GgmlType),
    /// llama.cpp's Q4_K_M: Q4_K, with Q6_K for the output and for `attn_v` and
    /// `ffn_down` in the first and last eighth of the layers and every third between.
    Q4KM,
    /// llama.cpp's Q5_K_M: Q4_K_M's rules over Q5_K.
    Q5KM,
    /// llama.cpp's Q3_K_M: Q3_K, with Q6_K for the output, Q4_K for `attn_output`,
    /// `attn_v` (Q5_K in the first two layers) and `ffn_down` (Q5_K in the first
    /// sixteenth of the layers).
    Q3KM,
}

/// The mixes by name, as `llama-quantize` calls them.
const MIXES: [(&str, WeightMix); 3] = [
    ("Q3_K_M", WeightMix::Q3KM),
    ("Q4_K_M", WeightMix::Q4KM),
    ("Q5_K_M", WeightMix::Q5KM),
];

impl std::fmt::Display for WeightMix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightMix::Uniform(ty) => write!(f, "{ty}"),
            mix => {
                let (name, _) = MIXES
                    .iter()
                    .find(|(_, m)| m == mix)
                    .expect("every mix is named");
                f.write_str(name)
            }
        }
    }
}

impl WeightMix {
    /// A mix's name (`Q4_K_M`, …), or a single type's name.
    pub fn parse(name: &str) -> Option<WeightMix> {
        if let Some((_, mix)) = MIXES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Some(*mix);
        }
        GgmlType::from_name(name).map(WeightMix::Uniform)
    }

    /// `type_for` a tensor whose rows hold `cols` values. Where a row is not a whole
    /// number of that type's blocks, llama-quantize's fallback: a 32-value type of about
    /// the same size (IQ4_XS and the codebook i-quants → IQ4_NL, Q2_K, Q3_K, TQ1_0 and
    /// TQ2_0 → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0), and F16 where even that does
    /// not fit.
    pub fn type_for_rows(&self, name: &str, layers: usize, tied: bool, cols: usize) -> GgmlType {
        use GgmlType::*;
        let fits = |ty: GgmlType| cols.is_multiple_of(ty.block_size());
        let ty = self.type_for(name, layers, tied);
        let fallback = match ty {
            _ if fits(ty) => return ty,
            IQ4_XS | IQ1_S | IQ1_M | IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S => IQ4_NL,
            Q2_K | Q3_K | TQ1_0 | TQ2_0 => Q4_0,
            Q4_K => Q5_0,
            Q5_K => Q5_1,
            Q6_K => Q8_0,
            other => other,
        };
        if fits(fallback) {
            fallback
        } else {
            F16
        }
    }

    /// The type of tensor `name` (`blk.N.…`, `output.weight`, …) in a model of `layers`;
    /// `tied`: the model has no `output.weight`, its `token_embd.weight` serving as the
    /// output too, so a mix gives it the output's type (as llama-quantize does).
    pub fn type_for(&self, name: &str, layers: usize, tied: bool) -> GgmlType {
        use GgmlType::*;
        let layer = name
            .strip_prefix("blk.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|n| n.parse::<usize>().ok());
        let role = |suffix: &str| name.ends_with(suffix) && layer.is_some();
        // llama.cpp's `use_more_bits`.
        let more_bits = || {
            layer
                .is_some_and(|i| i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2)
        };
        let first = |fraction: usize| layer.is_some_and(|i| i < layers / fraction);
        let output = name == "output.weight" || (tied && name == "token_embd.weight");
        match *self {
            WeightMix::Uniform(ty) => ty,
            WeightMix::Q4KM | WeightMix::Q5KM => {
                let wide =
                    output || ((role("attn_v.weight") || role("ffn_down.weight")) && more_bits());
                match (wide, *self) {
                    (true, _) => Q6_K,
                    (false, WeightMix::Q4KM) => Q4_K,
                    (false, _) => Q5_K,
                }
            }
            WeightMix::Q3KM => {
                if output {
                    Q6_K
                } else if role("attn_v.weight") {
                    if layer.is_some_and(|i| i < 2) {
                        Q5_K
                    } else {
                        Q4_K
                    }
                } else if role("ffn_down.weight") {
                    if first(16) {
                        Q5_K
                    } else {
                        Q4_K
                    }
                } else if role("attn_output.weight") {
                    Q4_K
                } else {
                    Q3_K
                }
            }
        }
    }
}

/// The byte-level vocabulary: the 256 GPT-2 byte characters, then control tokens.
pub const CONTROL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const BYTE_VOCAB: usize = 256 + CONTROL_TOKENS.len();

fn vocabulary(size: usize) -> Vec<String> {
    let mut tokens: Vec<String> = crate::tokenizer::byte_chars()
        .iter()
        .map(|c| c.to_string())
        .collect();
    tokens.extend(CONTROL_TOKENS.iter().map(|s| s.to_string()));
    tokens.extend((tokens.len()..size).map(|i| format!("<filler{i}>")));
    tokens
}

/// Values above which a tensor is tiled from a pool of quantized random blocks instead
/// of quantizing fresh values: billions of parameters in seconds, still random enough to
/// time kernels on.
const POOL_VALUES: usize = 1 << 20;

struct RandomWeights {
    rng: Random,
    /// Encoded random values per (type, scale bits).
    pools: HashMap<(GgmlType, u32), Vec<u8>>,
}

impl RandomWeights {
    /// `n` random values of magnitude `scale` in `ty`: quantized, or for the codebook
    /// i-quants, which we read but do not write, random codes.
    fn encoded(&mut self, ty: GgmlType, n: usize, scale: f32) -> Result<Vec<u8>> {
        if !quant::is_lattice(ty) {
            return Ok(quant::quantize(ty, &self.values(n, scale))?);
        }
        // Any bytes make a block once its step is set; the step that gives each block
        // the RMS of uniform values in [-scale, scale) is measured on the block itself.
        let mut out = Vec::with_capacity(n / ty.block_size() * ty.type_size() + 8);
        while out.len() < n / ty.block_size() * ty.type_size() {
            out.extend_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        out.truncate(n / ty.block_size() * ty.type_size());
        let mut values = vec![0.0f32; ty.block_size()];
        for block in out.chunks_exact_mut(ty.type_size()) {
            quant::set_lattice_step(ty, block, 1.0);
            quant::dequantize(ty, block, &mut values)?;
            let rms = (values.iter().map(|v| v * v).sum::<f32>() / values.len() as f32).sqrt();
            quant::set_lattice_step(ty, block, scale / 3f32.sqrt() / rms.max(1e-6));
        }
        Ok(out)
    }

    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.rng.next(scale)).collect()
    }

    /// `rows` × `cols` random values of magnitude `scale` (vectors: around 1), encoded.
    fn tensor(&mut self, ty: GgmlType, cols: usize, rows: usize, scale: f32) -> Result<Vec<u8>> {
        if rows == 1 {
            let values: Vec<f32> = self.values(cols, scale).iter().map(|v| 1.0 + v).collect();
            return Ok(quant::quantize(ty, &values)?);
        }
        if rows * cols <= POOL_VALUES {
            return self.encoded(ty, rows * cols, scale);
        }
        let pool = match self.pools.remove(&(ty, scale.to_bits())) {
            Some(pool) => pool,
            None => self.encoded(ty, POOL_VALUES, scale)?,
        };
        let row_bytes = cols / ty.block_size() * ty.type_size();
        let blocks_in_pool = pool.len() / ty.type_size();
        let mut out = Vec::with_capacity(rows * row_bytes);
        for _ in 0..rows {
            // Each row is a run of consecutive pool blocks from a random start.
            let mut left = row_bytes;
            while left > 0 {
                let start = (self.rng.next_u64() as usize % blocks_in_pool) * ty.type_size();
                let take = left.min(pool.len() - start);
                out.extend_from_slice(&pool[start..start + take]);
                left -= take;
            }
        }
        self.pools.insert((ty, scale.to_bits()), pool);
        Ok(out)
    }
}

struct Random(u64);

impl Random {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-scale, scale).
    fn next(&mut self, scale: f32) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }
}

impl SyntheticModel {
    pub fn vocab_size(&self) -> usize {
        self.vocab_size.max(BYTE_VOCAB)
    }

    pub fn to_writer(&self) -> Result<GgufWriter> {
        let mut w = GgufWriter::new();
        let u32v = |v: usize| Value::U32(v as u32);
        let head_dim = self.head_dim.unwrap_or(self.dim / self.heads);
        let arch = self.architecture;
        let mut family = vec![];
        if self.head_dim.is_some() {
            family.push(("attention.key_length", u32v(head_dim)));
            family.push(("attention.value_length", u32v(head_dim)));
        }
        let rope_dims = if arch == "phi3" {
            head_dim / 2
        } else {
            head_dim
        };
        if arch == "phi3" {
            family.push(("rope.scaling.attn_factor", Value::F32(1.1902381)));
            family.push((
                "rope.scaling.original_context_length",
                u32v(self.context_length),
            ));
        }
        if let Some((kind, factor)) = self.rope_scaling {
            family.push(("rope.scaling.type", Value::String(kind.into())));
            family.push(("rope.scaling.factor", Value::F32(factor)));
            family.push((
                "rope.scaling.original_context_length",
                u32v(self.context_length),
            ));
        }
        if arch == "gemma2" {
            // A cap small enough to bend random weights' scores (Gemma 2 uses 50).
            family.push(("attn_logit_softcapping", Value::F32(2.0)));
            family.push(("final_logit_softcapping", Value::F32(30.0)));
        }
        if arch == "gemma2" || arch == "gemma3" {
            family.push(("attention.sliding_window", u32v(self.window)));
            family.push(("attention.sliding_window_pattern", u32v(self.window_period)));
        }
        for (k, v) in family.into_iter().chain([
            ("general.architecture", Value::String(arch.into())),
            ("general.name", Value::String("synthetic".into())),
            ("block_count", u32v(self.layers)),
            ("context_length", u32v(self.context_length)),
            ("embedding_length", u32v(self.dim)),
            ("feed_forward_length", u32v(self.ffn_dim)),
            ("attention.head_count", u32v(self.heads)),
            ("attention.head_count_kv", u32v(self.kv_heads)),
            ("rope.freq_base", Value::F32(self.rope_base)),
            ("rope.dimension_count", u32v(rope_dims)),
            ("attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("default".into())),
            ("tokenizer.ggml.bos_token_id", u32v(257)),
            ("tokenizer.ggml.eos_token_id", u32v(258)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ]) {
            let key = if k.starts_with("general.") || k.starts_with("tokenizer.") {
                k.to_string()
            } else {
                format!("{arch}.{k}")
            };
            w.add_metadata(key, v);
        }
        let tokens = vocabulary(self.vocab_size());
        w.add_metadata("tokenizer.ggml.tokens", gguf::string_array(&tokens));
        let types = (0..tokens.len())
            .map(|i| Value::I32(if (256..BYTE_VOCAB).contains(&i) { 3 } else { 1 }))
            .collect();
        w.add_metadata(
            "tokenizer.ggml.token_type",
            Value::Array(Array {
                element_type: ValueType::I32,
                values: types,
            }),
        );
        w.add_metadata(
            "tokenizer.ggml.merges",
            gguf::string_array(Vec::<String>::new()),
        );

        let mut weights = RandomWeights {
            rng: Random(self.seed.max(1)),
            pools: HashMap::new(),
        };
        let (q, kv) = (self.heads * head_dim, self.kv_heads * head_dim);
        let layers = self.layers;
        let mix = self.weights;
        let mut tensor = |name: &str, cols: usize, rows: usize, scale: f32| -> Result<()> {
            let ty = if rows == 1 {
                GgmlType::F32
            } else {
                mix.type_for_rows(name, layers, !self.separate_output, cols)
            };
            let data = weights.tensor(ty, cols, rows, scale)?;
            let dims: Vec<u64> = if rows == 1 {
                vec![cols as u64]
            } else {
                vec![cols as u64, rows as u64]
            };
            w.add_tensor(name, &dims, ty, data)
                .map_err(|e| EngineError::Config(e.to_string()))?;
            Ok(())
        };
        let s = 1.0 / (self.dim as f32).sqrt();
        tensor("token_embd.weight", self.dim, self.vocab_size(), 1.0)?;
        if self.separate_output {
            tensor("output.weight", self.dim, self.vocab_size(), s)?;
        }
        tensor("output_norm.weight", self.dim, 1, 0.1)?;
        if arch == "phi3" {
            tensor("rope_factors_short.weight", rope_dims / 2, 1, 0.5)?;
            tensor("rope_factors_long.weight", rope_dims / 2, 1, 0.9)?;
        }
        for l in 0..self.layers {
            let n = |t: &str| format!("blk.{l}.{t}");
            tensor(&n("attn_norm.weight"), self.dim, 1, 0.1)?;
            if arch == "phi3" {
                tensor(&n("attn_qkv.weight"), self.dim, q + 2 * kv, s)?;
            } else {
                tensor(&n("attn_q.weight"), self.dim, q, s)?;
                tensor(&n("attn_k.weight"), self.dim, kv, s)?;
                tensor(&n("attn_v.weight"), self.dim, kv, s)?;
            }
            if arch == "qwen2" {
                tensor(&n("attn_q.bias"), q, 1, 0.1)?;
                tensor(&n("attn_k.bias"), kv, 1, 0.1)?;
                tensor(&n("attn_v.bias"), kv, 1, 0.1)?;
            }
            if arch == "qwen3" || arch == "gemma3" {
                tensor(&n("attn_q_norm.weight"), head_dim, 1, 0.1)?;
                tensor(&n("attn_k_norm.weight"), head_dim, 1, 0.1)?;
            }
            if arch == "gemma2" || arch == "gemma3" {
                tensor(&n("post_attention_norm.weight"), self.dim, 1, 0.1)?;
                tensor(&n("post_ffw_norm.weight"), self.dim, 1, 0.1)?;
            }
            tensor(&n("attn_output.weight"), q, self.dim, s)?;
            tensor(&n("ffn_norm.weight"), self.dim, 1, 0.1)?;
            if arch == "phi3" {
                tensor(&n("ffn_up.weight"), self.dim, 2 * self.ffn_dim, s)?;
            } else {
                tensor(&n("ffn_gate.weight"), self.dim, self.ffn_dim, s)?;
                tensor(&n("ffn_up.weight"), self.dim, self.ffn_dim, s)?;
            }
            tensor(
                &n("ffn_down.weight"),
                self.ffn_dim,
                self.dim,
                1.0 / (self.ffn_dim as f32).sqrt(),
            )?;
        }
        Ok(w)
    }

    pub fn write(&self, path: &std::path::Path) -> Result<()> {
        self.to_writer()?
            .write_file(path)
            .map_err(|e| EngineError::Config(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::WeightMix;
    use gguf::GgmlType::*;

    #[test]
    fn mixes_follow_llama_quantize_rules() {
        let types = |mix: &str, names: &[&str]| {
            let mix = WeightMix::parse(mix).unwrap();
            assert_eq!(WeightMix::parse(&mix.to_string()), Some(mix));
            names
                .iter()
                .map(|n| mix.type_for(n, 16, false))
                .collect::<Vec<_>>()
        };
        let q3 = types(
            "q3_k_m",
            &[
                "output.weight",
                "token_embd.weight",
                "blk.0.attn_v.weight",
                "blk.5.attn_v.weight",
                "blk.0.ffn_down.weight",
                "blk.1.ffn_down.weight",
                "blk.3.attn_output.weight",
                "blk.3.attn_q.weight",
            ],
        );
        assert_eq!(q3, [Q6_K, Q3_K, Q5_K, Q4_K, Q5_K, Q4_K, Q4_K, Q3_K]);
        let q5 = types(
            "Q5_K_M",
            &[
                "output.weight",
                "blk.0.ffn_down.weight",
                "blk.3.ffn_down.weight",
                "blk.4.attn_v.weight",
                "blk.4.attn_q.weight",
            ],
        );
        assert_eq!(q5, [Q6_K, Q6_K, Q5_K, Q6_K, Q5_K]);
        assert_eq!(WeightMix::parse("IQ4_XS"), Some(WeightMix::Uniform(IQ4_XS)));
        // Without an output.weight, the token embeddings are the output: they get its type.
        let embeddings = |mix: WeightMix, tied| mix.type_for("token_embd.weight", 16, tied);
        assert_eq!(embeddings(WeightMix::Q4KM, true), Q6_K);
        assert_eq!(embeddings(WeightMix::Q4KM, false), Q4_K);
        assert_eq!(embeddings(WeightMix::Q3KM, true), Q6_K);
        assert_eq!(embeddings(WeightMix::Uniform(Q4_0), true), Q4_0);
    }

    #[test]
    fn rows_that_do_not_fit_fall_back_as_llama_quantize_does() {
        let q4km = WeightMix::Q4KM;
        let types: Vec<_> = [
            ("blk.3.attn_q.weight", 576),
            ("blk.3.attn_q.weight", 512),
            ("output.weight", 576),
            ("blk.3.attn_q.weight", 100),
        ]
        .iter()
        .map(|&(name, cols)| q4km.type_for_rows(name, 16, false, cols))
        .collect();
        assert_eq!(types, [Q5_0, Q4_K, Q8_0, F16]);
        let fallback =
            |ty| WeightMix::Uniform(ty).type_for_rows("blk.0.ffn_up.weight", 16, false, 640);
        assert_eq!(
            [IQ4_XS, Q2_K, Q3_K, Q5_K, Q8_0, TQ1_0].map(fallback),
            [IQ4_NL, Q4_0, Q4_0, Q5_1, Q8_0, Q4_0]
        );
    }
}
