//! Writes small LLaMA-architecture GGUF files with random weights in any quant type,
//! with a byte-level vocabulary, so tests (and benchmarks) can run models that need
//! no download.

use crate::error::{EngineError, Result};
use gguf::{Array, GgmlType, GgufWriter, Value, ValueType};

#[derive(Clone, Debug)]
pub struct SyntheticModel {
    pub layers: usize,
    pub dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn_dim: usize,
    pub context_length: usize,
    /// Type of the 2-D weight matrices (norms stay F32).
    pub weight_type: GgmlType,
    pub seed: u64,
}

impl Default for SyntheticModel {
    fn default() -> Self {
        SyntheticModel {
            layers: 2,
            dim: 256,
            heads: 4,
            kv_heads: 2,
            ffn_dim: 512,
            context_length: 256,
            weight_type: GgmlType::Q8_0,
            seed: 1,
        }
    }
}

/// The byte-level vocabulary: the 256 GPT-2 byte characters, then control tokens.
pub const CONTROL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

fn vocabulary() -> Vec<String> {
    let mut tokens: Vec<String> = crate::tokenizer::byte_chars()
        .iter()
        .map(|c| c.to_string())
        .collect();
    tokens.extend(CONTROL_TOKENS.iter().map(|s| s.to_string()));
    tokens
}

struct Random(u64);

impl Random {
    /// Uniform in [-scale, scale).
    fn next(&mut self, scale: f32) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }
}

impl SyntheticModel {
    pub fn vocab_size(&self) -> usize {
        256 + CONTROL_TOKENS.len()
    }

    pub fn to_writer(&self) -> Result<GgufWriter> {
        let mut w = GgufWriter::new();
        let u32v = |v: usize| Value::U32(v as u32);
        let head_dim = self.dim / self.heads;
        for (k, v) in [
            ("general.architecture", Value::String("llama".into())),
            ("general.name", Value::String("synthetic".into())),
            ("llama.block_count", u32v(self.layers)),
            ("llama.context_length", u32v(self.context_length)),
            ("llama.embedding_length", u32v(self.dim)),
            ("llama.feed_forward_length", u32v(self.ffn_dim)),
            ("llama.attention.head_count", u32v(self.heads)),
            ("llama.attention.head_count_kv", u32v(self.kv_heads)),
            ("llama.rope.freq_base", Value::F32(10000.0)),
            ("llama.rope.dimension_count", u32v(head_dim)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("default".into())),
            ("tokenizer.ggml.bos_token_id", u32v(257)),
            ("tokenizer.ggml.eos_token_id", u32v(258)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ] {
            w.add_metadata(k, v);
        }
        let tokens = vocabulary();
        w.add_metadata("tokenizer.ggml.tokens", gguf::string_array(&tokens));
        let types = (0..tokens.len())
            .map(|i| Value::I32(if i < 256 { 1 } else { 3 }))
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

        let mut rng = Random(self.seed.max(1));
        let kv = self.kv_heads * head_dim;
        let mut tensor =
            |name: &str, cols: usize, rows: usize, ty: GgmlType, scale: f32| -> Result<()> {
                let values: Vec<f32> = (0..cols * rows).map(|_| rng.next(scale)).collect();
                let values = if rows == 1 {
                    values.iter().map(|v| 1.0 + v).collect()
                } else {
                    values
                };
                let data = quant::quantize(ty, &values)?;
                let dims: Vec<u64> = if rows == 1 {
                    vec![cols as u64]
                } else {
                    vec![cols as u64, rows as u64]
                };
                w.add_tensor(name, &dims, ty, data)
                    .map_err(|e| EngineError::Config(e.to_string()))?;
                Ok(())
            };
        let wt = self.weight_type;
        let s = 1.0 / (self.dim as f32).sqrt();
        tensor("token_embd.weight", self.dim, self.vocab_size(), wt, 1.0)?;
        tensor("output_norm.weight", self.dim, 1, GgmlType::F32, 0.1)?;
        for l in 0..self.layers {
            let n = |t: &str| format!("blk.{l}.{t}");
            tensor(&n("attn_norm.weight"), self.dim, 1, GgmlType::F32, 0.1)?;
            tensor(&n("attn_q.weight"), self.dim, self.dim, wt, s)?;
            tensor(&n("attn_k.weight"), self.dim, kv, wt, s)?;
            tensor(&n("attn_v.weight"), self.dim, kv, wt, s)?;
            tensor(&n("attn_output.weight"), self.dim, self.dim, wt, s)?;
            tensor(&n("ffn_norm.weight"), self.dim, 1, GgmlType::F32, 0.1)?;
            tensor(&n("ffn_gate.weight"), self.dim, self.ffn_dim, wt, s)?;
            tensor(&n("ffn_up.weight"), self.dim, self.ffn_dim, wt, s)?;
            tensor(
                &n("ffn_down.weight"),
                self.ffn_dim,
                self.dim,
                wt,
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
