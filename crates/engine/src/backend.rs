//! The operations the model graph needs from a device. `Llama<B>` calls only these, so
//! a new device is a new implementation of this trait, not a new model.

use crate::error::Result;
use gguf::GgufFile;
use std::sync::Arc;

/// RoPE inputs shared by every layer: the rotation frequencies of each pair of dimensions.
#[derive(Clone, Debug)]
pub struct Rope {
    /// `inv_freq[i]` is the angle per position of pair `i` (length `rope_dims / 2`).
    pub inv_freq: Vec<f32>,
    /// Multiplies positions (1 / linear scaling factor).
    pub position_scale: f32,
    pub neox: bool,
    pub head_dim: usize,
}

pub trait Backend: Send + Sync {
    /// Activations: `rows` × `cols` f32 values, row-major, one row per token.
    type Buffer: Send;
    /// A weight tensor in its GGUF format.
    type Weight: Send + Sync;
    /// Keys and values of one sequence, for every layer.
    type KvCache: Send;

    fn name(&self) -> &str;

    /// Makes a tensor of `file` usable by this device, keeping its quantized format.
    fn upload_weight(&self, file: &Arc<GgufFile>, name: &str) -> Result<Self::Weight>;
    /// A zeroed buffer of `rows` × `cols`.
    fn alloc(&self, rows: usize, cols: usize) -> Self::Buffer;
    fn new_kv_cache(&self, layers: usize, context: usize, kv_dim: usize) -> Self::KvCache;

    /// `out[t] = table[tokens[t]]`.
    fn embed(&self, table: &Self::Weight, tokens: &[u32], out: &mut Self::Buffer) -> Result<()>;
    /// Row-wise RMS normalisation times `weight`.
    fn rms_norm(&self, x: &Self::Buffer, weight: &Self::Weight, eps: f32, out: &mut Self::Buffer);
    /// `out[t] = w · x[t]` for every row `t` of `x`.
    fn matmul(&self, w: &Self::Weight, x: &Self::Buffer, out: &mut Self::Buffer);
    /// Several matmuls of the same activations (Q/K/V, gate/up) in one pass; the same
    /// results as separate `matmul` calls.
    fn matmul_many(&self, ws: &[&Self::Weight], x: &Self::Buffer, outs: &mut [&mut Self::Buffer]);
    /// `x[t] += bias` for every row.
    fn add_bias(&self, x: &mut Self::Buffer, bias: &Self::Weight);
    /// Rotates each head of `x` by its token's position.
    fn rope(&self, x: &mut Self::Buffer, positions: &[usize], rope: &Rope);
    /// Stores the keys and values of the given positions in `layer` of the cache.
    fn kv_store(
        &self,
        cache: &mut Self::KvCache,
        layer: usize,
        k: &Self::Buffer,
        v: &Self::Buffer,
        positions: &[usize],
    );
    /// Causal grouped-query attention of queries `q` (one row per token at
    /// `positions`) over the cache.
    fn attention(
        &self,
        q: &Self::Buffer,
        cache: &Self::KvCache,
        layer: usize,
        positions: &[usize],
        n_kv_heads: usize,
        out: &mut Self::Buffer,
    );
    /// `gate = silu(gate) * up`.
    fn silu_mul(&self, gate: &mut Self::Buffer, up: &Self::Buffer);
    /// `x += y`.
    fn add(&self, x: &mut Self::Buffer, y: &Self::Buffer);
    /// A new buffer holding `rows` of `x`.
    fn rows(&self, x: &Self::Buffer, rows: std::ops::Range<usize>) -> Self::Buffer;
    /// Copies rows of a buffer to the host.
    fn to_host(&self, x: &Self::Buffer, rows: std::ops::Range<usize>) -> Vec<f32>;
}
