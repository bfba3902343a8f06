//! The operations the model graph needs from a device. `Llama<B>` calls only these, so
//! a new device is a new implementation of this trait, not a new model.

use crate::error::{EngineError, Result};
use gguf::{GgufFile, TensorView};
use quant::TokenOrder;
use std::ops::Range;
use std::sync::Arc;

/// Token positions per KV-cache block. The cache is a pool of such blocks; a sequence
/// owns a list of them (its block table), so sequences of any length share one budget.
pub const KV_BLOCK_SIZE: usize = 16;

/// How a KV cache stores keys or values (llama.cpp's `--cache-type-k/v` names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvCacheType {
    #[default]
    F16,
    /// GGML's 8-bit blocks of 32 values (34 bytes): 53 % of f16's bytes.
    Q8_0,
    /// GGML's 4-bit blocks of 32 values (18 bytes): 28 % of f16's bytes.
    Q4_0,
}

impl KvCacheType {
    pub const NAMES: &'static str = "f16, q8_0, q4_0";

    pub fn name(self) -> &'static str {
        match self {
            KvCacheType::F16 => "f16",
            KvCacheType::Q8_0 => "q8_0",
            KvCacheType::Q4_0 => "q4_0",
        }
    }

    /// The block format of a quantized type.
    pub fn quantized(self) -> Option<quant::KvQuant> {
        match self {
            KvCacheType::F16 => None,
            KvCacheType::Q8_0 => Some(quant::KvQuant::Q8_0),
            KvCacheType::Q4_0 => Some(quant::KvQuant::Q4_0),
        }
    }

    /// Bytes of `n` values (a multiple of 32 for the block types).
    pub fn bytes(self, n: usize) -> usize {
        match self {
            KvCacheType::F16 => 2 * n,
            KvCacheType::Q8_0 => n / 32 * 34,
            KvCacheType::Q4_0 => n / 32 * 18,
        }
    }
}

impl std::str::FromStr for KvCacheType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        [KvCacheType::F16, KvCacheType::Q8_0, KvCacheType::Q4_0]
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown KV cache type {s:?} (known: {})",
                    KvCacheType::NAMES
                )
            })
    }
}

/// The dimensions of a model's KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    pub kv_dim: usize,
    pub head_dim: usize,
}

/// The storage of a KV cache's keys and of its values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvTypes {
    pub k: KvCacheType,
    pub v: KvCacheType,
}

/// The rows of a batch that belong to one sequence, and where its keys and values live.
#[derive(Clone, Debug)]
pub struct SeqRows<'a> {
    /// Consecutive rows of the batch's activations.
    pub rows: Range<usize>,
    /// Position of the first row in its sequence.
    pub start: usize,
    /// The sequence's KV blocks in position order: position `p` is slot
    /// `blocks[p / KV_BLOCK_SIZE] * KV_BLOCK_SIZE + p % KV_BLOCK_SIZE`.
    pub blocks: &'a [u32],
    /// The first position the CPU backend attends in llama.cpp's one-token order
    /// (`quant::F16Order::OneToken`); earlier ones get its batched order. See
    /// `model::first_one_token_position`.
    pub generated_from: usize,
}

/// The pool slot holding position `pos` of a sequence with block table `blocks`.
pub fn kv_slot(blocks: &[u32], pos: usize) -> usize {
    blocks[pos / KV_BLOCK_SIZE] as usize * KV_BLOCK_SIZE + pos % KV_BLOCK_SIZE
}

/// A model tensor as every backend's `upload_weight` starts from it: vectors (norms,
/// biases) decoded to f32, matrices still in their GGUF format.
pub enum HostTensor<'a> {
    Vector(Vec<f32>),
    Matrix(TensorView<'a>),
}

/// Reads tensor `name` of `file`; a missing tensor is an error naming it.
pub fn read_tensor<'a>(file: &'a GgufFile, name: &str) -> Result<HostTensor<'a>> {
    let view = file
        .tensor(name)
        .map_err(|_| EngineError::MissingTensor(name.into()))?;
    if view.info.dims.len() > 1 {
        return Ok(HostTensor::Matrix(view));
    }
    let mut values = vec![0.0; view.info.row_len() as usize];
    quant::dequantize(view.info.ty, view.data, &mut values)?;
    Ok(HostTensor::Vector(values))
}

/// Rows `rows` of matrix `name` of `file` (a part of a fused tensor, such as phi3's Q/K/V
/// in one `attn_qkv`): their type, bytes, shape, and offset in the file's tensor data.
pub struct MatrixRows<'a> {
    pub view: TensorView<'a>,
    pub data: &'a [u8],
    pub offset: u64,
    pub rows: usize,
    pub cols: usize,
}

/// Reads rows `rows` of matrix `name`; a missing tensor or rows beyond it are errors.
pub fn read_matrix_rows<'a>(
    file: &'a GgufFile,
    name: &str,
    rows: Range<usize>,
) -> Result<MatrixRows<'a>> {
    let view = file
        .tensor(name)
        .map_err(|_| EngineError::MissingTensor(name.into()))?;
    let (n_rows, cols) = (view.info.n_rows() as usize, view.info.row_len() as usize);
    if view.info.dims.len() < 2 || rows.start > rows.end || rows.end > n_rows {
        return Err(EngineError::TensorShape {
            name: name.into(),
            expected: vec![cols as u64, rows.end as u64],
            actual: view.info.dims.clone(),
        });
    }
    let row_bytes = view.data.len() / n_rows.max(1);
    let data = &view.data[rows.start * row_bytes..rows.end * row_bytes];
    Ok(MatrixRows {
        offset: view.info.offset + (rows.start * row_bytes) as u64,
        data,
        view,
        rows: rows.len(),
        cols,
    })
}

/// RoPE inputs shared by every layer. Pair i of a head at position p is rotated by
/// freq_scale · θᵢ / factors[i], where θ₀ = p and θᵢ₊₁ = θᵢ · theta_scale in f32 — GGML's
/// running product, whose rounding we keep (see `quant::rope_angles`) — or, with YaRN,
/// by a blend of that angle and θᵢ / factors[i].
#[derive(Clone, Debug)]
pub struct Rope {
    /// freq_base^(-2 / rope_dims).
    pub theta_scale: f32,
    /// Multiplies cos and sin (`rope.scaling.attn_factor`, phi3's LongRoPE, YaRN's
    /// magnitude correction), 1.0 without.
    pub mscale: f32,
    /// Per-pair divisors (Llama 3.1-style scaling), 1.0 without; one per pair.
    pub factors: Vec<f32>,
    /// 1 / the scaling factor (linear or YaRN).
    pub freq_scale: f32,
    /// YaRN's blend of interpolated and extrapolated angles, when on.
    pub yarn: Option<quant::YarnRamp>,
    pub neox: bool,
    pub head_dim: usize,
}

/// Which of llama.cpp's CPU attention algorithms the CPU backend reproduces, bit for bit
/// where it can (other devices have one order of their own and ignore this).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionOrder {
    /// Scores, softmax and weighted values as matrix products (llama.cpp with flash
    /// attention off), accumulated in f32.
    #[default]
    Matmul,
    /// llama.cpp's flash attention (`-fa on`, its default on the CPU since 2025): one
    /// position at a time, the weighted values summed in f16. Followed exactly where
    /// llama.cpp takes its one-row kernel: prompts under 64 tokens and generation under
    /// 512 positions.
    Flash,
}

/// What one layer's attention needs besides the queries and the cache.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionSpec {
    pub n_kv_heads: usize,
    /// Multiplies each score before the softmax.
    pub scale: f32,
    /// A row at position p sees only positions `p + 1 - window ..= p` (sliding-window
    /// layers); without it, every earlier position.
    pub window: Option<usize>,
    /// Scores become cap·tanh(score / cap) before the softmax (gemma2).
    pub softcap: Option<f32>,
    pub order: AttentionOrder,
}

impl AttentionSpec {
    /// The first position a row at `pos` attends to.
    pub fn first_visible(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }
}

pub trait Backend: Send + Sync {
    /// Activations: `rows` × `cols` f32 values, row-major, one row per token.
    type Buffer: Send;
    /// A weight tensor in its GGUF format.
    type Weight: Send + Sync;
    /// Keys and values of every layer, in blocks of `KV_BLOCK_SIZE` positions.
    type KvPool: Send;

    fn name(&self) -> &str;

    /// Makes a tensor of `file` usable by this device, keeping its quantized format.
    fn upload_weight(&self, file: &Arc<GgufFile>, name: &str) -> Result<Self::Weight>;
    /// Rows `rows` of matrix `name`, as a matrix of their own (a part of a fused tensor).
    fn upload_weight_rows(
        &self,
        file: &Arc<GgufFile>,
        name: &str,
        rows: Range<usize>,
    ) -> Result<Self::Weight>;
    /// A zeroed buffer of `rows` × `cols`; an error when the device is full.
    fn alloc(&self, rows: usize, cols: usize) -> Result<Self::Buffer>;
    /// A pool of `blocks` KV blocks stored as `types` (`head_dim` values per KV head);
    /// an error when the device cannot hold it or does not store that type.
    fn new_kv_pool(&self, shape: KvShape, blocks: usize, types: KvTypes) -> Result<Self::KvPool>;
    /// Copies every layer of block `src` into block `dst` (copy-on-write of a shared block).
    fn kv_copy_block(&self, pool: &mut Self::KvPool, src: u32, dst: u32);
    /// Takes all of `pool`'s memory now, where the device would otherwise take it as
    /// it is first written (a server's pools, so that no step pays for it).
    fn commit_kv_pool(&self, pool: &mut Self::KvPool);

    /// `out[t] = table[tokens[t]]`.
    fn embed(&self, table: &Self::Weight, tokens: &[u32], out: &mut Self::Buffer) -> Result<()>;
    /// Row-wise RMS normalisation times `weight`.
    fn rms_norm(&self, x: &Self::Buffer, weight: &Self::Weight, eps: f32, out: &mut Self::Buffer);
    /// In place, each head of `x` (every `weight.len()` values of a row) RMS-normalised
    /// and multiplied by `weight` (QK-norm).
    fn rms_norm_heads(&self, x: &mut Self::Buffer, weight: &Self::Weight, eps: f32);
    /// `x *= factor`.
    fn scale(&self, x: &mut Self::Buffer, factor: f32);
    /// `out[t] = w · x[t]` for every row `t` of `x`, in `orders[t]` where the backend
    /// sums some weight types in two orders (the CPU backend: `quant::TokenOrder`, picked
    /// by `model::matmul_order`); empty means `TokenOrder::OneToken` for every row.
    fn matmul(
        &self,
        w: &Self::Weight,
        x: &Self::Buffer,
        out: &mut Self::Buffer,
        orders: &[TokenOrder],
    );
    /// Several matmuls of the same activations (Q/K/V, gate/up) in one pass; the same
    /// results as separate `matmul` calls.
    fn matmul_many(
        &self,
        ws: &[&Self::Weight],
        x: &Self::Buffer,
        outs: &mut [&mut Self::Buffer],
        orders: &[TokenOrder],
    );
    /// `x[t] += bias` for every row.
    fn add_bias(&self, x: &mut Self::Buffer, bias: &Self::Weight);
    /// Rotates each head of `x` by its token's position.
    fn rope(&self, x: &mut Self::Buffer, positions: &[usize], rope: &Rope);
    /// Stores row `t` of `k` and `v` in pool slot `slots[t]` of `layer`.
    fn kv_store(
        &self,
        pool: &mut Self::KvPool,
        layer: usize,
        k: &Self::Buffer,
        v: &Self::Buffer,
        slots: &[usize],
    );
    /// Causal grouped-query attention of queries `q` over the pool: each row attends to
    /// positions `spec.first_visible(its own)..=its own` of its sequence, read through
    /// the sequence's block table.
    fn attention(
        &self,
        q: &Self::Buffer,
        pool: &Self::KvPool,
        layer: usize,
        seqs: &[SeqRows],
        spec: &AttentionSpec,
        out: &mut Self::Buffer,
    );
    /// `gate = silu(gate) * up`.
    fn silu_mul(&self, gate: &mut Self::Buffer, up: &Self::Buffer);
    /// `gate = gelu(gate) * up`, GELU's tanh approximation.
    fn gelu_mul(&self, gate: &mut Self::Buffer, up: &Self::Buffer);
    /// `x += y`.
    fn add(&self, x: &mut Self::Buffer, y: &Self::Buffer);
    /// A new buffer holding the given rows of `x`, in that order.
    fn gather_rows(&self, x: &Self::Buffer, rows: &[usize]) -> Result<Self::Buffer>;
    /// Copies rows of a buffer to the host.
    fn to_host(&self, x: &Self::Buffer, rows: std::ops::Range<usize>) -> Vec<f32>;
    /// Held through a forward pass: the CPU backend keeps its other worker threads
    /// polling for the pass's parallel loops instead of sleeping between them.
    fn begin_pass(&self) -> Option<quant::PollingWorkers> {
        None
    }
    /// Waits for the queued work of the step and reports the first error any operation
    /// met since the last call. Devices that run operations synchronously and report
    /// their errors directly have nothing to do here.
    fn finish(&self) -> Result<()> {
        Ok(())
    }
}
