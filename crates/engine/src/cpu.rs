//! The CPU backend: weights stay quantized in the memory-mapped file, or, for the AVX-512
//! kernels, are repacked once into row groups (`quant::pack`); activations are f32
//! (quantized to 8 bits inside the matmul kernels); the KV cache is f16 (`cpu_kv`). Work
//! is split across threads by rows or heads.

use crate::backend::{
    read_matrix_rows, read_tensor, AttentionSpec, Backend, HostTensor, KvShape, KvTypes, Rope,
    SeqRows,
};
pub use crate::cpu_kv::CpuKvPool;
use crate::error::{EngineError, Result};
use gguf::{GgmlType, GgufFile};
use quant::{Layout, QMatrix, TokenOrder};
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
    pub(crate) fn row(&self, r: usize) -> &[f32] {
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

/// A tensor's identity: its file's address, its offset in the file, and its length (the
/// leading rows of a tensor are packed apart from the whole).
type TensorKey = (usize, u64, usize);

#[derive(Default)]
pub struct CpuBackend {
    /// Repacked matrices by (file, tensor offset): a tensor used twice (a tied
    /// embedding and output) is packed once.
    packed: Mutex<HashMap<TensorKey, Arc<Vec<u8>>>>,
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

    fn begin_pass(&self) -> Option<quant::PollingWorkers> {
        Some(quant::PollingWorkers::start())
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
        if quant::packable(ty, quant::selected_isa()) {
            let key = (Arc::as_ptr(file) as usize, m.offset, m.data.len());
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

    fn new_kv_pool(&self, shape: KvShape, blocks: usize, types: KvTypes) -> Result<CpuKvPool> {
        CpuKvPool::new(shape, blocks, types)
    }

    fn kv_copy_block(&self, pool: &mut CpuKvPool, src: u32, dst: u32) {
        pool.copy_block(src, dst);
    }

    fn commit_kv_pool(&self, pool: &mut CpuKvPool) {
        pool.commit();
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

    fn matmul(&self, w: &CpuWeight, x: &CpuBuffer, out: &mut CpuBuffer, orders: &[TokenOrder]) {
        quant::matmul_many(&[w.matrix()], &x.data, &mut [&mut out.data], orders);
    }

    fn matmul_many(
        &self,
        ws: &[&CpuWeight],
        x: &CpuBuffer,
        outs: &mut [&mut CpuBuffer],
        orders: &[TokenOrder],
    ) {
        let matrices: Vec<QMatrix> = ws.iter().map(|w| w.matrix()).collect();
        let mut slices: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.data.as_mut_slice()).collect();
        quant::matmul_many(&matrices, &x.data, &mut slices, orders);
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
                rope.yarn.as_ref(),
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
        pool.store(layer, k, v, slots);
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
        crate::cpu_attention::attention(q, pool, layer, seqs, spec, out);
    }

    fn silu_mul(&self, gate: &mut CpuBuffer, up: &CpuBuffer) {
        gated(gate, up, quant::silu_mul);
    }

    fn gelu_mul(&self, gate: &mut CpuBuffer, up: &CpuBuffer) {
        gated(gate, up, quant::gelu_mul);
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

/// Values per task of `gated`: a multiple of the vector kernels' 16.
const GATED_RUN: usize = 512;

/// `activation(gate row, up row)` for every row, on all threads: with a batch this is
/// the largest element-wise step, and a decoding step's one row is split too (runs of
/// `GATED_RUN` from the row's start, so each value goes through the same lanes, or the
/// same scalar tail, as in one call over the row).
fn gated(gate: &mut CpuBuffer, up: &CpuBuffer, activation: fn(&mut [f32], &[f32])) {
    let mut runs: Vec<(&mut [f32], &[f32])> = gate
        .data
        .chunks_exact_mut(gate.cols)
        .zip(up.data.chunks_exact(up.cols))
        .flat_map(|(g, u)| g.chunks_mut(GATED_RUN).zip(u.chunks(GATED_RUN)))
        .collect();
    quant::for_each_mut(&mut runs, |(g, u)| activation(g, u));
}
