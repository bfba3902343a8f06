//! The GPU operations of the transformer: typed launches of the kernels in `kernels/`.
//! Every call is queued on the GPU's stream and returns at once.

use crate::gpu::Gpu;
use crate::kernels::{FLOAT_FORMATS, INT8_FORMATS};
use crate::repack::split_planes;
use crate::{CudaError, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use gguf::GgmlType;

/// A weight matrix on the device: float formats as GGUF stores them, quantized formats
/// as the payload and header planes of `repack`.
pub struct DeviceWeight {
    pub data: CudaSlice<u8>,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
}

impl DeviceWeight {
    fn is_int8(&self) -> bool {
        INT8_FORMATS.contains(&self.ty.name())
    }
}

/// How activations are prepared for a matmul: as the CPU backend (after GGML) quantizes
/// them for a weight of that type, so both devices compute the same function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationRounding {
    /// Plain f16 (float weights).
    F16,
    /// Q8_0/Q8_1 blocks of 32 (legacy quant weights).
    Q8Block32,
    /// Q8_K blocks of 256 (k-quant weights).
    Q8K,
}

/// Activations as the matmul kernels read them: f16 values, or int8 codes with, per 32
/// values, the scale and a sum (`ActMeta` in matmul_int8.cu).
pub enum DeviceActivations {
    F16(CudaSlice<u16>),
    Int8 {
        codes: CudaSlice<u8>,
        meta: CudaSlice<f32>,
    },
}

impl ActivationRounding {
    pub fn for_weights(ty: GgmlType) -> ActivationRounding {
        use GgmlType::*;
        match ty {
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => ActivationRounding::Q8Block32,
            Q4_K | Q5_K | Q6_K => ActivationRounding::Q8K,
            _ => ActivationRounding::F16,
        }
    }
}

/// Whether the GPU kernels read this weight format.
pub fn format_supported(ty: GgmlType) -> bool {
    FLOAT_FORMATS.contains(&ty.name()) || INT8_FORMATS.contains(&ty.name())
}

/// Per-row inputs of `attention`: each row's position, and where its sequence's block
/// table starts in `tables`.
pub struct AttentionRows<'a> {
    pub positions: &'a CudaSlice<u32>,
    pub table_offsets: &'a CudaSlice<u32>,
    pub tables: &'a CudaSlice<u32>,
}

fn elementwise(n: usize) -> LaunchConfig {
    const THREADS: u32 = 256;
    LaunchConfig {
        grid_dim: ((n as u64).div_ceil(THREADS as u64) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Rows of one `qgemm` block, and tokens of a `qgemv` and a `qgemm` block
/// (matmul_float.cu).
const QGEMM_ROWS: usize = 16;
const QGEMV_TOKENS: usize = 8;
const QGEMM_TOKENS: usize = 64;
const QGEMM_THREADS: u32 = 256;
/// Warps of a `matvec` block, and the tokens and rows per warp of `matvec1` and
/// `matvec8` (matmul_int8.cu).
const MATVEC_WARPS: usize = 4;
const MATVEC1_SHAPE: (usize, usize) = (1, 1);
const MATVEC8_SHAPE: (usize, usize) = (8, 4);
const ATTENTION_THREADS: u32 = 128;
const MAX_HEAD_DIM: usize = 256;

impl Gpu {
    pub fn upload_weight(
        &self,
        ty: GgmlType,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<DeviceWeight> {
        if !format_supported(ty) {
            return Err(CudaError::Unsupported(format!(
                "weights of type {} are not supported on CUDA (supported: {})",
                ty.name(),
                [FLOAT_FORMATS, INT8_FORMATS].concat().join(", ")
            )));
        }
        if !cols.is_multiple_of(32) {
            return Err(CudaError::Unsupported(format!(
                "rows of {cols} values are not a multiple of 32"
            )));
        }
        let data = match split_planes(ty, bytes) {
            Some(planes) => self.upload(&planes, "weights")?,
            None => self.upload(bytes, "weights")?,
        };
        Ok(DeviceWeight {
            data,
            ty,
            rows,
            cols,
        })
    }

    /// The first `ntok` rows of `k` values of `x`, prepared as `rounding` says, into
    /// `into` (reused when it is of that kind and large enough, so a step's matmuls do
    /// not allocate; the stream orders every use).
    pub fn prepare_activations(
        &self,
        x: &CudaSlice<f32>,
        ntok: usize,
        k: usize,
        rounding: ActivationRounding,
        into: &mut Option<DeviceActivations>,
    ) -> Result<()> {
        let n = ntok * k;
        if n == 0 {
            return Ok(());
        }
        let len = n as i64;
        let block: i32 = match rounding {
            ActivationRounding::F16 => 1,
            ActivationRounding::Q8Block32 => 32,
            ActivationRounding::Q8K => 256,
        };
        if !k.is_multiple_of(block as usize) {
            return Err(CudaError::Unsupported(format!(
                "rows of {k} values are not a multiple of the {block}-value activation blocks"
            )));
        }
        let fits = match into {
            Some(DeviceActivations::F16(x16)) => block == 1 && x16.len() >= n,
            Some(DeviceActivations::Int8 { codes, .. }) => block > 1 && codes.len() >= n,
            None => false,
        };
        if !fits {
            *into = Some(if block == 1 {
                DeviceActivations::F16(self.alloc_for_overwrite(n, "f16 activations")?)
            } else {
                DeviceActivations::Int8 {
                    codes: self.alloc_for_overwrite(n, "int8 activations")?,
                    meta: self.alloc_for_overwrite(n / 32 * 2, "activation scales")?,
                }
            });
        }
        match into.as_mut().expect("made above") {
            // SAFETY: the arguments match the kernel's signature in ops.cu.
            DeviceActivations::F16(out) => unsafe {
                self.stream
                    .launch_builder(self.function("to_f16")?)
                    .arg(x)
                    .arg(&len)
                    .arg(out)
                    .launch(elementwise(n))
            }?,
            // SAFETY: the arguments match the kernel's signature in matmul_int8.cu; one
            // warp per block of values.
            DeviceActivations::Int8 { codes, meta } => unsafe {
                self.stream
                    .launch_builder(self.function("quantize_q8")?)
                    .arg(x)
                    .arg(&len)
                    .arg(&block)
                    .arg(codes)
                    .arg(meta)
                    .launch(elementwise(n / block as usize * 32))
            }?,
        };
        Ok(())
    }

    /// `out[t] = w · x[t]` for `ntok` rows of activations prepared for `w` (with the
    /// rounding `ActivationRounding::for_weights` gives).
    pub fn matmul(
        &self,
        w: &DeviceWeight,
        x: &DeviceActivations,
        ntok: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        if ntok == 0 {
            return Ok(());
        }
        let (rows, k, n) = (w.rows as i32, w.cols as i32, ntok as i32);
        match x {
            DeviceActivations::Int8 { codes, meta } if w.is_int8() => {
                // Both instances give identical results for a token (matmul_int8.cu).
                let (kernel, (tokens, rows_per_warp)) = if ntok == 1 {
                    ("matvec1", MATVEC1_SHAPE)
                } else {
                    ("matvec8", MATVEC8_SHAPE)
                };
                let f = self.function(&format!("{kernel}_{}", w.ty.name()))?;
                let blocks = w.rows.div_ceil(MATVEC_WARPS * rows_per_warp) * ntok.div_ceil(tokens);
                let cfg = LaunchConfig {
                    grid_dim: (blocks as u32, 1, 1),
                    block_dim: ((MATVEC_WARPS * 32) as u32, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: the arguments match the kernels' signature in matmul_int8.cu.
                unsafe {
                    self.stream
                        .launch_builder(f)
                        .arg(&w.data)
                        .arg(&rows)
                        .arg(&k)
                        .arg(codes)
                        .arg(meta)
                        .arg(&n)
                        .arg(out)
                        .launch(cfg)
                }?;
            }
            DeviceActivations::F16(x16) if !w.is_int8() => {
                // Both instances give identical results for a token (matmul_float.cu):
                // the choice only changes how many tokens share a pass over the weights.
                let (kernel, per_block) = if ntok <= QGEMV_TOKENS {
                    ("qgemv", QGEMV_TOKENS)
                } else {
                    ("qgemm", QGEMM_TOKENS)
                };
                let f = self.function(&format!("{kernel}_{}", w.ty.name()))?;
                let cfg = LaunchConfig {
                    grid_dim: (
                        w.rows.div_ceil(QGEMM_ROWS) as u32,
                        ntok.div_ceil(per_block) as u32,
                        1,
                    ),
                    block_dim: (QGEMM_THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                let row_bytes = (w.cols * w.ty.type_size() / w.ty.block_size()) as i64;
                // SAFETY: the arguments match the kernels' signature in matmul_float.cu.
                unsafe {
                    self.stream
                        .launch_builder(f)
                        .arg(&w.data)
                        .arg(&rows)
                        .arg(&k)
                        .arg(&row_bytes)
                        .arg(x16)
                        .arg(&n)
                        .arg(out)
                        .launch(cfg)
                }?;
            }
            _ => {
                return Err(CudaError::Unsupported(format!(
                    "activations not prepared for {} weights",
                    w.ty.name()
                )))
            }
        }
        Ok(())
    }

    /// `out[t] = row tokens[t] of w`, as f32.
    pub fn embed(
        &self,
        w: &DeviceWeight,
        tokens: &CudaSlice<u32>,
        ntok: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let f = self.function(&format!("embed_{}", w.ty.name()))?;
        let (rows, k, n) = (w.rows as i32, w.cols as i32, ntok as i32);
        // SAFETY: the arguments match the kernels' signature in matmul_*.cu.
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(&w.data)
                .arg(&rows)
                .arg(&k)
                .arg(tokens)
                .arg(&n)
                .arg(out)
                .launch(elementwise(ntok * w.cols))
        }?;
        Ok(())
    }

    pub fn rms_norm(
        &self,
        x: &CudaSlice<f32>,
        weight: &CudaSlice<f32>,
        eps: f32,
        rows: usize,
        cols: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let cols = cols as i32;
        unsafe {
            self.stream
                .launch_builder(self.function("rms_norm")?)
                .arg(x)
                .arg(weight)
                .arg(&eps)
                .arg(&cols)
                .arg(out)
                .launch(cfg)
        }?;
        Ok(())
    }

    /// In place, each `head_dim` values of the first `n` of `x` RMS-normalised and
    /// multiplied by `weight` (QK-norm).
    pub fn rms_norm_heads(
        &self,
        x: &mut CudaSlice<f32>,
        weight: &CudaSlice<f32>,
        eps: f32,
        head_dim: usize,
        n: usize,
    ) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: ((n / head_dim) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let head_dim = head_dim as i32;
        // SAFETY: the arguments match the kernel's signature in ops.cu.
        unsafe {
            self.stream
                .launch_builder(self.function("rms_norm_heads")?)
                .arg(x)
                .arg(weight)
                .arg(&eps)
                .arg(&head_dim)
                .launch(cfg)
        }?;
        Ok(())
    }

    /// `x *= factor` over the first `n` values.
    pub fn scale(&self, x: &mut CudaSlice<f32>, factor: f32, n: usize) -> Result<()> {
        let len = n as i64;
        // SAFETY: the arguments match the kernel's signature in ops.cu.
        unsafe {
            self.stream
                .launch_builder(self.function("scale")?)
                .arg(x)
                .arg(&factor)
                .arg(&len)
                .launch(elementwise(n))
        }?;
        Ok(())
    }

    /// Rotates pair p of every head by freq_scale · θ_p / factors[p], θ_0 = position,
    /// θ_{p+1} = θ_p · theta_scale (one pair per entry of `factors`), with cos and sin
    /// multiplied by `mscale`; with `yarn` = (ext_factor, ramp low, ramp high), blended
    /// with θ_p / factors[p] as `quant::YarnRamp` says.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        x: &mut CudaSlice<f32>,
        positions: &CudaSlice<u32>,
        factors: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
        head_dim: usize,
        neox: bool,
        theta_scale: f32,
        freq_scale: f32,
        mscale: f32,
        yarn: [f32; 3],
    ) -> Result<()> {
        let pairs = factors.len();
        let n = rows * (cols / head_dim) * pairs;
        let (rows, cols, head_dim, pairs, neox) = (
            rows as i32,
            cols as i32,
            head_dim as i32,
            pairs as i32,
            neox as i32,
        );
        unsafe {
            self.stream
                .launch_builder(self.function("rope")?)
                .arg(x)
                .arg(positions)
                .arg(factors)
                .arg(&rows)
                .arg(&cols)
                .arg(&head_dim)
                .arg(&pairs)
                .arg(&neox)
                .arg(&theta_scale)
                .arg(&freq_scale)
                .arg(&mscale)
                .arg(&yarn[0])
                .arg(&yarn[1])
                .arg(&yarn[2])
                .launch(elementwise(n))
        }?;
        Ok(())
    }

    /// `gate = silu(gate) * up` over the first `n` values.
    pub fn silu_mul(&self, gate: &mut CudaSlice<f32>, up: &CudaSlice<f32>, n: usize) -> Result<()> {
        self.binary("silu_mul", gate, up, n)
    }

    /// `gate = gelu(gate) * up` (tanh approximation) over the first `n` values.
    pub fn gelu_mul(&self, gate: &mut CudaSlice<f32>, up: &CudaSlice<f32>, n: usize) -> Result<()> {
        self.binary("gelu_mul", gate, up, n)
    }

    /// `x += y` over the first `n` values.
    pub fn add(&self, x: &mut CudaSlice<f32>, y: &CudaSlice<f32>, n: usize) -> Result<()> {
        self.binary("add", x, y, n)
    }

    fn binary(
        &self,
        name: &str,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        let len = n as i64;
        unsafe {
            self.stream
                .launch_builder(self.function(name)?)
                .arg(x)
                .arg(y)
                .arg(&len)
                .launch(elementwise(n))
        }?;
        Ok(())
    }

    /// `x[r] += bias` for the `n / cols` rows of `x`.
    pub fn add_bias(
        &self,
        x: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        cols: usize,
        n: usize,
    ) -> Result<()> {
        let (cols, len) = (cols as i32, n as i64);
        unsafe {
            self.stream
                .launch_builder(self.function("add_bias")?)
                .arg(x)
                .arg(bias)
                .arg(&cols)
                .arg(&len)
                .launch(elementwise(n))
        }?;
        Ok(())
    }

    pub fn gather_rows(
        &self,
        x: &CudaSlice<f32>,
        rows: &CudaSlice<u32>,
        cols: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = rows.len() * cols;
        let (n_rows, cols) = (rows.len() as i32, cols as i32);
        unsafe {
            self.stream
                .launch_builder(self.function("gather_rows")?)
                .arg(x)
                .arg(rows)
                .arg(&n_rows)
                .arg(&cols)
                .arg(out)
                .launch(elementwise(n))
        }?;
        Ok(())
    }

    /// Stores row `t` of `k` and `v` (f32) at `slots[t]` of the f16 pools, from
    /// `layer_offset` (in values) on.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_store(
        &self,
        k_pool: &mut CudaSlice<u16>,
        v_pool: &mut CudaSlice<u16>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        slots: &CudaSlice<u32>,
        kv_dim: usize,
        layer_offset: usize,
    ) -> Result<()> {
        let n = slots.len() * kv_dim;
        let (rows, kv_dim, offset) = (slots.len() as i32, kv_dim as i32, layer_offset as i64);
        unsafe {
            self.stream
                .launch_builder(self.function("kv_store")?)
                .arg(k_pool)
                .arg(v_pool)
                .arg(k)
                .arg(v)
                .arg(slots)
                .arg(&rows)
                .arg(&kv_dim)
                .arg(&offset)
                .launch(elementwise(n))
        }?;
        Ok(())
    }

    /// Copies KV block `src` to `dst` in every layer.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_copy_block(
        &self,
        k_pool: &mut CudaSlice<u16>,
        v_pool: &mut CudaSlice<u16>,
        src: u32,
        dst: u32,
        layers: usize,
        slots: usize,
        kv_dim: usize,
        block_size: usize,
    ) -> Result<()> {
        let n = layers * block_size * kv_dim;
        let (src, dst, layers, slots, kv_dim) = (
            src as i32,
            dst as i32,
            layers as i32,
            slots as i64,
            kv_dim as i32,
        );
        unsafe {
            self.stream
                .launch_builder(self.function("kv_copy_block")?)
                .arg(k_pool)
                .arg(v_pool)
                .arg(&src)
                .arg(&dst)
                .arg(&layers)
                .arg(&slots)
                .arg(&kv_dim)
                .launch(elementwise(n))
        }?;
        Ok(())
    }

    /// Causal grouped-query attention of `rows` queries over the paged f16 cache: scores
    /// scaled by `scale` (and soft-capped by `softcap`), each row seeing its last `window`
    /// positions (all if `None`).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        q: &CudaSlice<f32>,
        k_pool: &CudaSlice<u16>,
        v_pool: &CudaSlice<u16>,
        layer_offset: usize,
        seqs: &AttentionRows<'_>,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        scale: f32,
        window: Option<usize>,
        softcap: Option<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        if !head_dim.is_multiple_of(32) || head_dim > MAX_HEAD_DIM {
            return Err(CudaError::Unsupported(format!(
                "attention heads of {head_dim} dimensions (CUDA needs a multiple of 32, at most {MAX_HEAD_DIM})"
            )));
        }
        let rows = seqs.positions.len();
        let cfg = LaunchConfig {
            grid_dim: ((rows * n_heads) as u32, 1, 1),
            block_dim: (ATTENTION_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let window = window.map_or(0, |w| w.min(i32::MAX as usize) as i32);
        let (offset, n_heads, n_kv_heads, head_dim) = (
            layer_offset as i64,
            n_heads as i32,
            n_kv_heads as i32,
            head_dim as i32,
        );
        unsafe {
            self.stream
                .launch_builder(self.function("attention")?)
                .arg(q)
                .arg(k_pool)
                .arg(v_pool)
                .arg(&offset)
                .arg(seqs.positions)
                .arg(seqs.table_offsets)
                .arg(seqs.tables)
                .arg(&n_heads)
                .arg(&n_kv_heads)
                .arg(&head_dim)
                .arg(&scale)
                .arg(&window)
                .arg(&softcap.unwrap_or(0.0))
                .arg(out)
                .launch(cfg)
        }?;
        Ok(())
    }
}
