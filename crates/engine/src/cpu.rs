//! The CPU backend: weights stay quantized in the memory-mapped file, or, for the AVX-512
//! kernels, are repacked once into row groups (`quant::pack`); activations are f32
//! (quantized to 8 bits inside the matmul kernels); the KV cache is f16, widened to f32
//! once per layer for attention. Work is split across threads by rows or heads.

use crate::backend::{
    read_matrix_rows, read_tensor, AttentionOrder, AttentionSpec, Backend, HostTensor, Rope,
    SeqRows, KV_BLOCK_SIZE,
};
use crate::error::{EngineError, Result};
use gguf::{GgmlType, GgufFile};
use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use quant::{AttendScratch, F16Order, Isa, Layout, QMatrix};
use rayon::prelude::*;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// f32 activations, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuBuffer {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl CpuBuffer {
    fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// A tensor borrowed from the mapped file or repacked (matrices), or decoded to f32
/// (vectors).
pub enum CpuWeight {
    Packed {
        data: Arc<Vec<u8>>,
        ty: GgmlType,
        rows: usize,
        cols: usize,
    },
    Quantized {
        file: Arc<GgufFile>,
        start: usize,
        len: usize,
        ty: GgmlType,
        rows: usize,
        cols: usize,
    },
    Dense(Vec<f32>),
}

impl CpuWeight {
    fn matrix(&self) -> QMatrix<'_> {
        match self {
            CpuWeight::Packed {
                data,
                ty,
                rows,
                cols,
            } => QMatrix {
                ty: *ty,
                data,
                rows: *rows,
                cols: *cols,
                layout: Layout::Packed,
            },
            CpuWeight::Quantized {
                file,
                start,
                len,
                ty,
                rows,
                cols,
            } => QMatrix {
                ty: *ty,
                data: &file.tensor_bytes()[*start..*start + *len],
                rows: *rows,
                cols: *cols,
                layout: Layout::RowMajor,
            },
            CpuWeight::Dense(v) => QMatrix {
                ty: GgmlType::F32,
                data: bytemuck_f32(v),
                rows: 1,
                cols: v.len(),
                layout: Layout::RowMajor,
            },
        }
    }

    fn dense(&self) -> &[f32] {
        match self {
            CpuWeight::Dense(v) => v,
            CpuWeight::Quantized { .. } | CpuWeight::Packed { .. } => &[],
        }
    }
}

fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns as bytes; the length is exact.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

pub struct CpuKvPool {
    slots: usize,
    kv_dim: usize,
    /// [layer][slot][kv_dim], f16 bits
    k: Vec<u16>,
    v: Vec<u16>,
}

impl CpuKvPool {
    fn offset(&self, layer: usize, slot: usize) -> usize {
        (layer * self.slots + slot) * self.kv_dim
    }
}

/// A tensor's identity: its file's address and its offset in the file.
type TensorKey = (usize, u64);

#[derive(Default)]
pub struct CpuBackend {
    /// Repacked matrices by (file, tensor offset): a tensor used twice (a tied
    /// embedding and output) is packed once.
    packed: Mutex<HashMap<TensorKey, Arc<Vec<u8>>>>,
    /// `attention`'s per-sequence f32 keys and values, kept so that no step reallocates
    /// (they grow to the largest batch's contexts: 8 bytes per position and KV value).
    widened: Mutex<Vec<WidenedKv>>,
}

/// One sequence's keys and values of one layer as f32, [position][kv_dim].
#[derive(Default)]
struct WidenedKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

impl WidenedKv {
    /// Fills `k` and `v` with positions `from..len` of the sequence with block table
    /// `blocks` (whole blocks: from the one holding `from`). Positions before `from`, out
    /// of a sliding window's sight, are left as they are: nothing reads them.
    fn widen(&mut self, pool: &CpuKvPool, layer: usize, blocks: &[u32], from: usize, len: usize) {
        let n = len * pool.kv_dim;
        let block = KV_BLOCK_SIZE * pool.kv_dim;
        let first_block = from / KV_BLOCK_SIZE;
        for (dst, src) in [(&mut self.k, &pool.k), (&mut self.v, &pool.v)] {
            dst.resize(n, 0.0);
            // Whole stretches of blocks per task: a block is too little work to share.
            dst[(first_block * block).min(n)..]
                .par_chunks_mut(block)
                .enumerate()
                .with_min_len(16)
                .for_each(|(b, dst)| {
                    let b = first_block + b;
                    let at = pool.offset(layer, blocks[b] as usize * KV_BLOCK_SIZE);
                    src[at..at + dst.len()]
                        .reinterpret_cast::<f16>()
                        .convert_to_f32_slice(dst);
                });
        }
    }
}

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend::default()
    }
}

impl Backend for CpuBackend {
    type Buffer = CpuBuffer;
    type Weight = CpuWeight;
    type KvPool = CpuKvPool;

    fn name(&self) -> &str {
        "cpu"
    }

    fn upload_weight(&self, file: &Arc<GgufFile>, name: &str) -> Result<CpuWeight> {
        match read_tensor(file, name)? {
            HostTensor::Vector(values) => Ok(CpuWeight::Dense(values)),
            HostTensor::Matrix(view) => {
                let rows = view.info.n_rows() as usize;
                self.upload_weight_rows(file, name, 0..rows)
            }
        }
    }

    fn upload_weight_rows(
        &self,
        file: &Arc<GgufFile>,
        name: &str,
        rows: Range<usize>,
    ) -> Result<CpuWeight> {
        let m = read_matrix_rows(file, name, rows)?;
        let (ty, rows, cols) = (m.view.info.ty, m.rows, m.cols);
        QMatrix::new(ty, m.data, rows, cols)?;
        if quant::packable(ty) && quant::selected_isa() == Isa::Avx512 {
            let key = (Arc::as_ptr(file) as usize, m.offset);
            let mut cache = self.packed.lock().unwrap_or_else(|e| e.into_inner());
            let data = cache
                .entry(key)
                .or_insert_with(|| {
                    let packed = quant::pack(ty, m.data, rows, cols);
                    if m.data.len() as u64 == m.view.info.size {
                        file.release(m.view.info);
                    }
                    Arc::new(packed)
                })
                .clone();
            return Ok(CpuWeight::Packed {
                data,
                ty,
                rows,
                cols,
            });
        }
        Ok(CpuWeight::Quantized {
            file: file.clone(),
            start: m.offset as usize,
            len: m.data.len(),
            ty,
            rows,
            cols,
        })
    }

    fn alloc(&self, rows: usize, cols: usize) -> Result<CpuBuffer> {
        Ok(CpuBuffer {
            data: vec![0.0; rows * cols],
            rows,
            cols,
        })
    }

    fn new_kv_pool(&self, layers: usize, blocks: usize, kv_dim: usize) -> Result<CpuKvPool> {
        let slots = blocks * KV_BLOCK_SIZE;
        let n = layers
            .checked_mul(slots)
            .and_then(|n| n.checked_mul(kv_dim))
            .ok_or(EngineError::OutOfMemory {
                what: "KV cache",
                bytes: usize::MAX,
            })?;
        // `vec!` of zeros maps fresh pages lazily: memory is only taken as positions
        // are written, so a large budget costs what is used.
        Ok(CpuKvPool {
            slots,
            kv_dim,
            k: vec![0; n],
            v: vec![0; n],
        })
    }

    fn kv_copy_block(&self, pool: &mut CpuKvPool, src: u32, dst: u32) {
        let n = KV_BLOCK_SIZE * pool.kv_dim;
        for layer in 0..pool.k.len() / (pool.slots * pool.kv_dim) {
            let from = pool.offset(layer, src as usize * KV_BLOCK_SIZE);
            let to = pool.offset(layer, dst as usize * KV_BLOCK_SIZE);
            pool.k.copy_within(from..from + n, to);
            pool.v.copy_within(from..from + n, to);
        }
    }

    fn embed(&self, table: &CpuWeight, tokens: &[u32], out: &mut CpuBuffer) -> Result<()> {
        let m = table.matrix();
        for (t, &id) in tokens.iter().enumerate() {
            if id as usize >= m.rows {
                return Err(EngineError::BadToken { id, vocab: m.rows });
            }
            m.dequantize_row(id as usize, &mut out.data[t * m.cols..(t + 1) * m.cols]);
        }
        Ok(())
    }

    fn rms_norm(&self, x: &CpuBuffer, weight: &CpuWeight, eps: f32, out: &mut CpuBuffer) {
        let w = weight.dense();
        for (xr, or) in x
            .data
            .chunks_exact(x.cols)
            .zip(out.data.chunks_exact_mut(x.cols))
        {
            or.copy_from_slice(xr);
            rms_norm_in_place(or, w, eps);
        }
    }

    fn rms_norm_heads(&self, x: &mut CpuBuffer, weight: &CpuWeight, eps: f32) {
        let w = weight.dense();
        for head in x.data.chunks_exact_mut(w.len()) {
            rms_norm_in_place(head, w, eps);
        }
    }

    fn scale(&self, x: &mut CpuBuffer, factor: f32) {
        for v in &mut x.data {
            *v *= factor;
        }
    }

    fn matmul(&self, w: &CpuWeight, x: &CpuBuffer, out: &mut CpuBuffer) {
        quant::matmul(&w.matrix(), &x.data, &mut out.data);
    }

    fn matmul_many(&self, ws: &[&CpuWeight], x: &CpuBuffer, outs: &mut [&mut CpuBuffer]) {
        let matrices: Vec<QMatrix> = ws.iter().map(|w| w.matrix()).collect();
        let mut slices: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.data.as_mut_slice()).collect();
        quant::matmul_many(&matrices, &x.data, &mut slices);
    }

    fn add_bias(&self, x: &mut CpuBuffer, bias: &CpuWeight) {
        let b = bias.dense();
        for row in x.data.chunks_exact_mut(x.cols) {
            for (v, &bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }

    fn rope(&self, x: &mut CpuBuffer, positions: &[usize], rope: &Rope) {
        let pairs = rope.factors.len();
        let (mut cos, mut sin) = (vec![0.0; pairs], vec![0.0; pairs]);
        for (row, &pos) in x.data.chunks_exact_mut(x.cols).zip(positions) {
            quant::rope_angles(
                pos,
                rope.theta_scale,
                &rope.factors,
                rope.freq_scale,
                &mut cos,
                &mut sin,
            );
            if rope.mscale != 1.0 {
                cos.iter_mut()
                    .chain(sin.iter_mut())
                    .for_each(|v| *v *= rope.mscale);
            }
            for head in row.chunks_exact_mut(rope.head_dim) {
                quant::rope_rotate(head, &cos, &sin, rope.neox);
            }
        }
    }

    fn kv_store(
        &self,
        pool: &mut CpuKvPool,
        layer: usize,
        k: &CpuBuffer,
        v: &CpuBuffer,
        slots: &[usize],
    ) {
        for (t, &slot) in slots.iter().enumerate() {
            let at = pool.offset(layer, slot);
            let n = pool.kv_dim;
            for (dst, src) in [(&mut pool.k, k), (&mut pool.v, v)] {
                dst[at..at + n]
                    .reinterpret_cast_mut::<f16>()
                    .convert_from_f32_slice(src.row(t));
            }
        }
    }

    fn attention(
        &self,
        q: &CpuBuffer,
        pool: &CpuKvPool,
        layer: usize,
        seqs: &[SeqRows],
        spec: &AttentionSpec,
        out: &mut CpuBuffer,
    ) {
        let head_dim = pool.kv_dim / spec.n_kv_heads;
        let n_heads = q.cols / head_dim;
        let group = n_heads / spec.n_kv_heads;
        let cols = q.cols;
        // Each sequence's keys and values, widened to f32 once here rather than once per
        // query head and row inside the kernels.
        let mut widened = self.widened.lock().unwrap_or_else(|e| e.into_inner());
        if widened.len() < seqs.len() {
            widened.resize_with(seqs.len(), Default::default);
        }
        widened.par_iter_mut().zip(seqs).for_each(|(kv, s)| {
            // Positions a sliding window no longer shows are not widened.
            let from = spec.first_visible(s.start);
            kv.widen(pool, layer, s.blocks, from, s.start + s.rows.len())
        });
        // For each row: its sequence, its position and its summation order.
        let mut row_of: Vec<(usize, usize, F16Order)> = vec![(0, 0, F16Order::Batched); q.rows];
        for (i, s) in seqs.iter().enumerate() {
            for r in s.rows.clone() {
                let pos = s.start + r - s.rows.start;
                let order = if pos >= s.generated_from {
                    F16Order::OneToken
                } else {
                    F16Order::Batched
                };
                row_of[r] = (i, pos, order);
            }
        }
        let kv_dim = pool.kv_dim;
        let widened = &widened;
        let zeros = vec![0.0f32; head_dim];
        out.data.par_chunks_mut(head_dim).enumerate().for_each_init(
            || (Vec::new(), Vec::new(), AttendScratch::default()),
            |(qh, scores, scratch), (i, out_head)| {
                let (t, h) = (i / n_heads, i % n_heads);
                let (s, pos, order) = row_of[t];
                // With an f16 cache GGML multiplies in f16: the query is rounded to f16
                // too (and `attend` rounds the weights).
                qh.clear();
                qh.extend_from_slice(&q.data[t * cols + h * head_dim..][..head_dim]);
                quant::round_to_f16(qh);
                let at = |p: usize| p * kv_dim + (h / group) * head_dim;
                let key = |p: usize| &widened[s].k[at(p)..at(p) + head_dim];
                // Positions before the window keep their places as zero weights (and zero
                // values): llama.cpp masks them rather than leaving them out, and a term's
                // place decides its accumulator.
                let first = spec.first_visible(pos);
                if spec.order == AttentionOrder::Flash {
                    let value = |p: usize| &widened[s].v[at(p)..at(p) + head_dim];
                    let (scale, cap) = (spec.scale, spec.softcap);
                    quant::flash_attend(qh, first, pos + 1, key, value, scale, cap, out_head);
                    return;
                }
                quant::attention_scores(
                    order,
                    qh,
                    pos + 1 - first,
                    |p| key(first + p),
                    spec.scale,
                    scores,
                );
                if let Some(cap) = spec.softcap {
                    quant::softcap(scores, cap);
                }
                scores.splice(0..0, std::iter::repeat_n(f32::NEG_INFINITY, first));
                quant::softmax(scores);
                let value = |p: usize| match p < first {
                    true => &zeros[..],
                    false => &widened[s].v[at(p)..at(p) + head_dim],
                };
                quant::attend(order, out_head, scores, value, scratch);
            },
        );
    }

    fn silu_mul(&self, gate: &mut CpuBuffer, up: &CpuBuffer) {
        // Rows on all threads: with a batch, this is the largest element-wise step.
        gate.data
            .par_chunks_exact_mut(gate.cols)
            .zip(up.data.par_chunks_exact(up.cols))
            .for_each(|(g, u)| quant::silu_mul(g, u));
    }

    fn gelu_mul(&self, gate: &mut CpuBuffer, up: &CpuBuffer) {
        gate.data
            .par_chunks_exact_mut(gate.cols)
            .zip(up.data.par_chunks_exact(up.cols))
            .for_each(|(g, u)| quant::gelu_mul(g, u));
    }

    fn add(&self, x: &mut CpuBuffer, y: &CpuBuffer) {
        for (a, &b) in x.data.iter_mut().zip(&y.data) {
            *a += b;
        }
    }

    fn gather_rows(&self, x: &CpuBuffer, rows: &[usize]) -> Result<CpuBuffer> {
        Ok(CpuBuffer {
            data: rows.iter().flat_map(|&r| x.row(r)).copied().collect(),
            rows: rows.len(),
            cols: x.cols,
        })
    }

    fn to_host(&self, x: &CpuBuffer, rows: std::ops::Range<usize>) -> Vec<f32> {
        x.data[rows.start * x.cols..rows.end * x.cols].to_vec()
    }
}

/// `x = x / rms(x) · weight`, rounded as GGML's RMSNorm followed by its multiply.
fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let scale = quant::rms_norm_scale(x, eps);
    for (v, &g) in x.iter_mut().zip(weight) {
        *v = *v * scale * g;
    }
}
