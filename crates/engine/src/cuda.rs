//! The CUDA backend: quantized weights live on the device as planes of codes and scales
//! (multiplied by int8 activations, quantized as the CPU quantizes them), float weights
//! as GGUF stores them (multiplied on the tensor cores in f16); activations are f32
//! between matmuls; the KV cache is a pool of f16 blocks. Operations are queued on one
//! stream and only `to_host` waits.
//!
//! Trait operations do not return errors (so the model reads plainly); the first device
//! error is kept and reported by `finish`, which the model calls at the end of each step.

use crate::backend::{
    read_matrix_rows, read_tensor, AttentionSpec, Backend, HostTensor, KvShape, KvTypes, Rope,
    SeqRows, KV_BLOCK_SIZE,
};
use crate::error::{EngineError, Result};
use cuda::{
    ActivationRounding, AttentionRows, CudaSlice, DeviceActivations, DeviceRepr, DeviceWeight, Gpu,
    KernelCache,
};
use gguf::GgufFile;
use quant::TokenOrder;
use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub struct CudaBackend {
    gpu: Gpu,
    name: String,
    first_error: Mutex<Option<cuda::CudaError>>,
    /// Small index arrays (positions, slots, block tables) by purpose: each layer asks
    /// for the same ones, so they are uploaded once per step.
    indices: Mutex<HashMap<&'static str, Option<Mirror<u32>>>>,
    rope_factors: Mutex<Option<Mirror<f32>>>,
    /// The prepared activations of the last matmuls, one buffer per rounding, reused.
    prepared: Mutex<[Option<DeviceActivations>; 3]>,
}

/// A host array and its device copy, reused while the host values stay the same.
type Mirror<T> = (Vec<T>, Arc<CudaSlice<T>>);

fn mirror<T: DeviceRepr + PartialEq + Clone>(
    gpu: &Gpu,
    slot: &mut Option<Mirror<T>>,
    values: &[T],
    what: &str,
) -> cuda::Result<Arc<CudaSlice<T>>> {
    if let Some((host, device)) = slot.as_ref() {
        if host == values {
            return Ok(device.clone());
        }
    }
    let device = Arc::new(gpu.upload(values, what)?);
    *slot = Some((values.to_vec(), device.clone()));
    Ok(device)
}

pub struct CudaBuffer {
    data: CudaSlice<f32>,
    rows: usize,
    cols: usize,
}

pub enum CudaWeight {
    Matrix(DeviceWeight),
    /// Norm weights and biases, decoded to f32.
    Vector(CudaSlice<f32>),
}

pub struct CudaKvPool {
    k: CudaSlice<u16>,
    v: CudaSlice<u16>,
    layers: usize,
    slots: usize,
    kv_dim: usize,
}

impl CudaBackend {
    /// Opens GPU `ordinal`; kernels are compiled into (or loaded from) `kernel_cache`.
    pub fn new(ordinal: usize, kernel_cache: Option<PathBuf>) -> Result<CudaBackend> {
        let gpu = Gpu::new(ordinal, &KernelCache { dir: kernel_cache })?;
        let name = format!("cuda:{ordinal} ({})", gpu.info.name);
        Ok(CudaBackend {
            gpu,
            name,
            first_error: Mutex::new(None),
            indices: Mutex::new(HashMap::new()),
            rope_factors: Mutex::new(None),
            prepared: Mutex::new([None, None, None]),
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// A buffer holding `data` (`rows` × `cols`, row-major).
    pub fn buffer_from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<CudaBuffer> {
        assert_eq!(data.len(), rows * cols, "buffer shape");
        Ok(CudaBuffer {
            data: self.gpu.upload(data, "activations")?,
            rows,
            cols,
        })
    }

    /// Keeps the first error of a queued operation for `finish`.
    fn check(&self, result: cuda::Result<()>) {
        if let Err(e) = result {
            let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                tracing::error!("CUDA operation failed: {e}");
                *first = Some(e);
            }
        }
    }

    fn indices(
        &self,
        purpose: &'static str,
        values: Vec<u32>,
    ) -> cuda::Result<Arc<CudaSlice<u32>>> {
        let mut cache = self.indices.lock().unwrap_or_else(|p| p.into_inner());
        mirror(
            &self.gpu,
            cache.entry(purpose).or_default(),
            &values,
            purpose,
        )
    }

    fn rope_factors(&self, rope: &Rope) -> cuda::Result<Arc<CudaSlice<f32>>> {
        let mut cached = self.rope_factors.lock().unwrap_or_else(|p| p.into_inner());
        mirror(&self.gpu, &mut cached, &rope.factors, "RoPE factors")
    }

    /// Each matrix's product with `x`; `x` is prepared (quantized or rounded) once per
    /// rounding its weights need.
    fn matmuls(
        &self,
        ws: &[&CudaWeight],
        x: &CudaBuffer,
        outs: &mut [&mut CudaBuffer],
    ) -> cuda::Result<()> {
        let mut prepared = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        let mut done = [false; 3];
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            let w = matrix(w);
            let rounding = ActivationRounding::for_weights(w.ty);
            let slot = rounding as usize;
            if !done[slot] {
                self.gpu.prepare_activations(
                    &x.data,
                    x.rows,
                    x.cols,
                    rounding,
                    &mut prepared[slot],
                )?;
                done[slot] = true;
            }
            let acts = prepared[slot].as_ref().expect("prepared above");
            self.gpu.matmul(w, acts, x.rows, &mut out.data)?;
        }
        Ok(())
    }

    /// Each row's position and block-table offset, and the tables, on the device.
    fn attention_rows(
        &self,
        seqs: &[SeqRows],
        rows: usize,
    ) -> cuda::Result<[Arc<CudaSlice<u32>>; 3]> {
        let mut positions = vec![0u32; rows];
        let mut offsets = vec![0u32; rows];
        let mut tables = Vec::new();
        for s in seqs {
            let offset = tables.len() as u32;
            tables.extend_from_slice(s.blocks);
            for r in s.rows.clone() {
                positions[r] = (s.start + r - s.rows.start) as u32;
                offsets[r] = offset;
            }
        }
        Ok([
            self.indices("attention positions", positions)?,
            self.indices("attention table offsets", offsets)?,
            self.indices("attention block tables", tables)?,
        ])
    }
}

fn matrix(w: &CudaWeight) -> &DeviceWeight {
    match w {
        CudaWeight::Matrix(m) => m,
        CudaWeight::Vector(_) => unreachable!("the model multiplies only by matrices"),
    }
}

fn vector(w: &CudaWeight) -> &CudaSlice<f32> {
    match w {
        CudaWeight::Vector(v) => v,
        CudaWeight::Matrix(_) => unreachable!("norms and biases are vectors"),
    }
}

impl Backend for CudaBackend {
    type Buffer = CudaBuffer;
    type Weight = CudaWeight;
    type KvPool = CudaKvPool;

    fn name(&self) -> &str {
        &self.name
    }

    fn upload_weight(&self, file: &Arc<GgufFile>, name: &str) -> Result<CudaWeight> {
        match read_tensor(file, name)? {
            HostTensor::Vector(values) => Ok(CudaWeight::Vector(self.gpu.upload(&values, name)?)),
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
    ) -> Result<CudaWeight> {
        let m = read_matrix_rows(file, name, rows)?;
        let ty = m.view.info.ty;
        if !cuda::format_supported(ty) {
            return Err(EngineError::UnsupportedTensor {
                name: name.into(),
                reason: format!("type {} has no CUDA kernel", ty.name()),
            });
        }
        Ok(CudaWeight::Matrix(
            self.gpu.upload_weight(ty, m.data, m.rows, m.cols)?,
        ))
    }

    fn alloc(&self, rows: usize, cols: usize) -> Result<CudaBuffer> {
        Ok(CudaBuffer {
            data: self.gpu.alloc_zeros::<f32>(rows * cols, "activations")?,
            rows,
            cols,
        })
    }

    fn new_kv_pool(&self, shape: KvShape, blocks: usize, types: KvTypes) -> Result<CudaKvPool> {
        if types != KvTypes::default() {
            return Err(EngineError::Config(format!(
                "the CUDA backend keeps its KV cache in f16 (asked for keys {}, values {}); \
                 quantized caches run on the CPU (--device cpu)",
                types.k.name(),
                types.v.name()
            )));
        }
        let (layers, kv_dim) = (shape.layers, shape.kv_dim);
        let slots = blocks * KV_BLOCK_SIZE;
        let n = layers * slots * kv_dim;
        Ok(CudaKvPool {
            k: self.gpu.alloc_zeros::<u16>(n, "KV cache (keys)")?,
            v: self.gpu.alloc_zeros::<u16>(n, "KV cache (values)")?,
            layers,
            slots,
            kv_dim,
        })
    }

    fn kv_copy_block(&self, pool: &mut CudaKvPool, src: u32, dst: u32) {
        self.check(self.gpu.kv_copy_block(
            &mut pool.k,
            &mut pool.v,
            src,
            dst,
            pool.layers,
            pool.slots,
            pool.kv_dim,
            KV_BLOCK_SIZE,
        ));
    }

    /// Device memory is the pool's from its allocation on.
    fn commit_kv_pool(&self, _pool: &mut CudaKvPool) {}

    fn embed(&self, table: &CudaWeight, tokens: &[u32], out: &mut CudaBuffer) -> Result<()> {
        let table = matrix(table);
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= table.rows) {
            return Err(EngineError::BadToken {
                id,
                vocab: table.rows,
            });
        }
        let ids = self.indices("tokens", tokens.to_vec())?;
        self.gpu.embed(table, &ids, tokens.len(), &mut out.data)?;
        Ok(())
    }

    fn rms_norm(&self, x: &CudaBuffer, weight: &CudaWeight, eps: f32, out: &mut CudaBuffer) {
        self.check(
            self.gpu
                .rms_norm(&x.data, vector(weight), eps, x.rows, x.cols, &mut out.data),
        );
    }

    fn rms_norm_heads(&self, x: &mut CudaBuffer, weight: &CudaWeight, eps: f32) {
        let (w, n) = (vector(weight), x.rows * x.cols);
        self.check(self.gpu.rms_norm_heads(&mut x.data, w, eps, w.len(), n));
    }

    fn scale(&self, x: &mut CudaBuffer, factor: f32) {
        let n = x.rows * x.cols;
        self.check(self.gpu.scale(&mut x.data, factor, n));
    }

    // The GPU kernels have one order for every token: `orders` does not apply.
    fn matmul(&self, w: &CudaWeight, x: &CudaBuffer, out: &mut CudaBuffer, _: &[TokenOrder]) {
        self.check(self.matmuls(&[w], x, &mut [out]));
    }

    fn matmul_many(
        &self,
        ws: &[&CudaWeight],
        x: &CudaBuffer,
        outs: &mut [&mut CudaBuffer],
        _: &[TokenOrder],
    ) {
        self.check(self.matmuls(ws, x, outs));
    }

    fn add_bias(&self, x: &mut CudaBuffer, bias: &CudaWeight) {
        let n = x.rows * x.cols;
        self.check(self.gpu.add_bias(&mut x.data, vector(bias), x.cols, n));
    }

    fn rope(&self, x: &mut CudaBuffer, positions: &[usize], rope: &Rope) {
        let result = (|| {
            let pos = self.indices("positions", positions.iter().map(|&p| p as u32).collect())?;
            let factors = self.rope_factors(rope)?;
            self.gpu.rope(
                &mut x.data,
                &pos,
                &factors,
                x.rows,
                x.cols,
                rope.head_dim,
                rope.neox,
                rope.theta_scale,
                rope.freq_scale,
                rope.mscale,
                rope.yarn
                    .map_or([0.0; 3], |r| [r.ext_factor, r.low, r.high]),
            )
        })();
        self.check(result);
    }

    fn kv_store(
        &self,
        pool: &mut CudaKvPool,
        layer: usize,
        k: &CudaBuffer,
        v: &CudaBuffer,
        slots: &[usize],
    ) {
        let result = (|| {
            let slots = self.indices("slots", slots.iter().map(|&s| s as u32).collect())?;
            self.gpu.kv_store(
                &mut pool.k,
                &mut pool.v,
                &k.data,
                &v.data,
                &slots,
                pool.kv_dim,
                layer * pool.slots * pool.kv_dim,
            )
        })();
        self.check(result);
    }

    fn attention(
        &self,
        q: &CudaBuffer,
        pool: &CudaKvPool,
        layer: usize,
        seqs: &[SeqRows],
        spec: &AttentionSpec,
        out: &mut CudaBuffer,
    ) {
        let head_dim = pool.kv_dim / spec.n_kv_heads;
        let result = (|| {
            let [positions, table_offsets, tables] = self.attention_rows(seqs, q.rows)?;
            let rows = AttentionRows {
                positions: &positions,
                table_offsets: &table_offsets,
                tables: &tables,
            };
            self.gpu.attention(
                &q.data,
                &pool.k,
                &pool.v,
                layer * pool.slots * pool.kv_dim,
                &rows,
                q.cols / head_dim,
                spec.n_kv_heads,
                head_dim,
                spec.scale,
                spec.window,
                spec.softcap,
                &mut out.data,
            )
        })();
        self.check(result);
    }

    fn silu_mul(&self, gate: &mut CudaBuffer, up: &CudaBuffer) {
        let n = gate.rows * gate.cols;
        self.check(self.gpu.silu_mul(&mut gate.data, &up.data, n));
    }

    fn gelu_mul(&self, gate: &mut CudaBuffer, up: &CudaBuffer) {
        let n = gate.rows * gate.cols;
        self.check(self.gpu.gelu_mul(&mut gate.data, &up.data, n));
    }

    fn add(&self, x: &mut CudaBuffer, y: &CudaBuffer) {
        let n = x.rows * x.cols;
        self.check(self.gpu.add(&mut x.data, &y.data, n));
    }

    fn gather_rows(&self, x: &CudaBuffer, rows: &[usize]) -> Result<CudaBuffer> {
        let mut out = self.alloc(rows.len(), x.cols)?;
        let idx = self.indices("gathered rows", rows.iter().map(|&r| r as u32).collect())?;
        self.gpu.gather_rows(&x.data, &idx, x.cols, &mut out.data)?;
        Ok(out)
    }

    fn to_host(&self, x: &CudaBuffer, rows: std::ops::Range<usize>) -> Vec<f32> {
        let n = rows.len() * x.cols;
        match self.gpu.download(&x.data, rows.start * x.cols, n) {
            Ok(v) => v,
            Err(e) => {
                self.check(Err(e));
                vec![0.0; n]
            }
        }
    }

    fn finish(&self) -> Result<()> {
        self.check(self.gpu.synchronize());
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        match first.take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
