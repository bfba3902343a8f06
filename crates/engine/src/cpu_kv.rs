//! The CPU backend's KV cache. It is f16 (or a quantized type, widened to f16 for each
//! attention call), in blocks of `KV_BLOCK_SIZE` positions: keys position by position,
//! each block's values transposed (a column's 16 positions side by side), the layout
//! `quant::KvHead` reads (`cpu_attention`).

use crate::backend::{AttentionSpec, KvCacheType, KvShape, KvTypes, SeqRows, KV_BLOCK_SIZE};
use crate::cpu::CpuBuffer;
use crate::error::{EngineError, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;
use quant::KvHead;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

// The kernels read a block's values as one vector of positions.
const _: () = assert!(KV_BLOCK_SIZE == quant::KV_BLOCK);

pub struct CpuKvPool {
    slots: usize,
    kv_dim: usize,
    head_dim: usize,
    layers: usize,
    k: Side,
    v: Side,
    /// A quantized cache's keys and values of one layer widened to f16, per sequence and
    /// KV head of the current `attention` call (kept so that no call reallocates).
    staged: Mutex<Vec<Staging>>,
}

/// The keys or the values of every layer.
enum Side {
    /// f16 bits: keys [layer][slot][kv_dim], values [layer][block][kv_dim][position in
    /// block] (the layout `quant::KvHead` reads).
    F16(Vec<u16>),
    /// GGML blocks of 32 values, [layer][slot][row of `kv_dim`]: attention widens the
    /// blocks it reads to f16 first (`stage`).
    Quantized {
        ty: KvCacheType,
        row: usize,
        data: Vec<u8>,
    },
}

impl Side {
    fn new(ty: KvCacheType, layers: usize, slots: usize, kv_dim: usize) -> Result<Side> {
        let bytes = layers
            .checked_mul(slots)
            .and_then(|n| n.checked_mul(ty.bytes(kv_dim)))
            .ok_or(EngineError::OutOfMemory {
                what: "KV cache",
                bytes: usize::MAX,
            })?;
        // `vec!` of zeros maps fresh pages lazily: memory is only taken as positions
        // are written, so a large budget costs what is used.
        Ok(match ty {
            KvCacheType::F16 => Side::F16(huge_pages(vec![0; bytes / 2])),
            _ => Side::Quantized {
                ty,
                row: ty.bytes(kv_dim),
                data: huge_pages(vec![0; bytes]),
            },
        })
    }
}

impl CpuKvPool {
    pub fn new(shape: KvShape, blocks: usize, types: KvTypes) -> Result<CpuKvPool> {
        let quantized = [types.k, types.v]
            .into_iter()
            .find(|t| *t != KvCacheType::F16);
        if let Some(ty) = quantized {
            if !shape.head_dim.is_multiple_of(32) {
                return Err(EngineError::Config(format!(
                    "a {} KV cache needs a head size that is a multiple of 32 (this model's is {})",
                    ty.name(),
                    shape.head_dim
                )));
            }
        }
        let slots = blocks * KV_BLOCK_SIZE;
        Ok(CpuKvPool {
            slots,
            kv_dim: shape.kv_dim,
            head_dim: shape.head_dim,
            layers: shape.layers,
            k: Side::new(types.k, shape.layers, slots, shape.kv_dim)?,
            v: Side::new(types.v, shape.layers, slots, shape.kv_dim)?,
            staged: Mutex::new(Vec::new()),
        })
    }

    /// Where slot `slot` of `layer` starts in an f16 side (its key; for values, the
    /// block's start).
    fn offset(&self, layer: usize, slot: usize) -> usize {
        (layer * self.slots + slot) * self.kv_dim
    }

    /// Copies every layer of block `src` into block `dst`.
    pub fn copy_block(&mut self, src: u32, dst: u32) {
        let (slots, kv_dim, layers) = (self.slots, self.kv_dim, self.layers);
        for side in [&mut self.k, &mut self.v] {
            for layer in 0..layers {
                let slot = |block: u32| layer * slots + block as usize * KV_BLOCK_SIZE;
                match side {
                    Side::F16(data) => {
                        let n = KV_BLOCK_SIZE * kv_dim;
                        let from = slot(src) * kv_dim;
                        data.copy_within(from..from + n, slot(dst) * kv_dim);
                    }
                    Side::Quantized { row, data, .. } => {
                        let from = slot(src) * *row;
                        data.copy_within(from..from + KV_BLOCK_SIZE * *row, slot(dst) * *row);
                    }
                }
            }
        }
    }

    /// Stores row t of `k` and `v` in slot `slots[t]` of `layer`.
    pub fn store(&mut self, layer: usize, k: &CpuBuffer, v: &CpuBuffer, slots: &[usize]) {
        let n = self.kv_dim;
        for (t, &slot) in slots.iter().enumerate() {
            let at = self.offset(layer, slot);
            let block = self.offset(layer, slot / KV_BLOCK_SIZE * KV_BLOCK_SIZE);
            let pool_slot = layer * self.slots + slot;
            match &mut self.k {
                Side::F16(keys) => {
                    let key: &mut [f16] = bytemuck_f16(&mut keys[at..at + n]);
                    key.convert_from_f32_slice(&k.row(t)[..n]);
                }
                Side::Quantized { ty, row, data } => {
                    quantize_into(*ty, k.row(t), &mut data[pool_slot * *row..][..*row])
                }
            }
            match &mut self.v {
                Side::F16(values) => {
                    let lane = slot % KV_BLOCK_SIZE;
                    for (c, &x) in v.row(t)[..n].iter().enumerate() {
                        values[block + c * KV_BLOCK_SIZE + lane] = f16::from_f32(x).to_bits();
                    }
                }
                Side::Quantized { ty, row, data } => {
                    quantize_into(*ty, v.row(t), &mut data[pool_slot * *row..][..*row])
                }
            }
        }
    }

    /// Values per position and layer: every KV head's keys (or values).
    pub(crate) fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// For a quantized cache, each sequence's blocks that `layer`'s attention sees, widened
    /// to f16 per KV head (sequence s's KV head g at `s · n_kv_heads + g`); nothing for an
    /// f16 cache, which the kernels read as it is.
    pub(crate) fn stage_layer(
        &self,
        layer: usize,
        seqs: &[SeqRows],
        spec: &AttentionSpec,
    ) -> MutexGuard<'_, Vec<Staging>> {
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        if self.f16_layer(layer).is_some() {
            staged.clear();
            return staged;
        }
        let heads = seqs.len() * spec.n_kv_heads;
        let kept = heads.max(staged.len());
        staged.resize_with(kept, Staging::default);
        staged[..heads]
            .par_iter_mut()
            .enumerate()
            .for_each(|(i, staging)| {
                let (seq, g) = (&seqs[i / spec.n_kv_heads], i % spec.n_kv_heads);
                let first = spec.first_visible(seq.start) / KV_BLOCK_SIZE;
                let end = (seq.start + seq.rows.len()).div_ceil(KV_BLOCK_SIZE);
                self.stage(layer, seq.blocks, first..end, g * self.head_dim, staging);
            });
        staged
    }

    /// The f16 keys and values of `layer`, if both sides are f16.
    pub(crate) fn f16_layer(&self, layer: usize) -> Option<(&[u16], &[u16])> {
        let range = self.offset(layer, 0)..self.offset(layer + 1, 0);
        match (&self.k, &self.v) {
            (Side::F16(k), Side::F16(v)) => Some((&k[range.clone()], &v[range])),
            _ => None,
        }
    }

    /// Blocks `range` of one KV head (first column `offset`) of a sequence (table
    /// `blocks`), widened to f16 into `staging`.
    fn stage(
        &self,
        layer: usize,
        blocks: &[u32],
        range: Range<usize>,
        offset: usize,
        staging: &mut Staging,
    ) {
        let width = self.head_dim;
        let n = KV_BLOCK_SIZE * width;
        staging.width = width;
        staging.table.clear();
        staging
            .table
            .extend((0..range.end).map(|b| b.saturating_sub(range.start) as u32));
        staging.keys.resize(range.len() * n, 0);
        staging.values.resize(range.len() * n, 0);
        for (local, b) in range.enumerate() {
            let block = blocks[b] as usize;
            let keys = &mut staging.keys[local * n..][..n];
            self.read_block(
                &self.k,
                false,
                layer,
                block,
                offset,
                keys,
                &mut staging.bits,
            );
            let values = &mut staging.values[local * n..][..n];
            self.read_block(
                &self.v,
                true,
                layer,
                block,
                offset,
                values,
                &mut staging.bits,
            );
        }
    }

    /// One KV head's (first column `offset`) 16 positions of pool block `block` from
    /// `side`, as f16 bits in `quant::KvHead`'s layout: position by position, or
    /// (`transposed`, the values) column by column. `bits`: scratch.
    #[allow(clippy::too_many_arguments)]
    fn read_block(
        &self,
        side: &Side,
        transposed: bool,
        layer: usize,
        block: usize,
        offset: usize,
        out: &mut [u16],
        bits: &mut Vec<u16>,
    ) {
        let width = self.head_dim;
        let first_slot = layer * self.slots + block * KV_BLOCK_SIZE;
        match side {
            Side::F16(data) if !transposed => {
                for (j, key) in out.chunks_exact_mut(width).enumerate() {
                    let at = (first_slot + j) * self.kv_dim + offset;
                    key.copy_from_slice(&data[at..at + width]);
                }
            }
            Side::F16(data) => {
                let at = first_slot * self.kv_dim + offset * KV_BLOCK_SIZE;
                out.copy_from_slice(&data[at..at + width * KV_BLOCK_SIZE]);
            }
            Side::Quantized { ty, row, data } => {
                // Position by position; the values are then transposed from `bits`.
                bits.resize(KV_BLOCK_SIZE * width, 0);
                let target: &mut [u16] = if transposed { bits } else { out };
                for (j, position) in target.chunks_exact_mut(width).enumerate() {
                    let start = (first_slot + j) * row + ty.bytes(offset);
                    let bytes = &data[start..start + ty.bytes(width)];
                    // The pool only holds the types `quant` dequantizes.
                    quant::widen_to_f16(ty.ggml(), bytes, position)
                        .expect("a KV cache type quant reads");
                }
                if !transposed {
                    return;
                }
                for (c, column) in out.chunks_exact_mut(KV_BLOCK_SIZE).enumerate() {
                    for (j, v) in column.iter_mut().enumerate() {
                        *v = bits[j * width + c];
                    }
                }
            }
        }
    }
}

/// Quantizes `x` into `out` (`ty.bytes(x.len())` bytes).
fn quantize_into(ty: KvCacheType, x: &[f32], out: &mut [u8]) {
    // The pool only holds the types `quant` quantizes, in whole blocks.
    let bytes = quant::quantize(ty.ggml(), x).expect("a KV cache type quant writes");
    out.copy_from_slice(&bytes);
}

/// One KV head of a sequence's quantized keys and values widened to f16
/// (`CpuKvPool::stage`), in the layout `quant::KvHead` reads, with a block table of its
/// own.
#[derive(Default)]
pub(crate) struct Staging {
    keys: Vec<u16>,
    values: Vec<u16>,
    table: Vec<u32>,
    bits: Vec<u16>,
    width: usize,
}

impl Staging {
    pub(crate) fn head(&self) -> KvHead<'_> {
        KvHead {
            keys: &self.keys,
            values: &self.values,
            blocks: &self.table,
            kv_dim: self.width,
            offset: 0,
            head_dim: self.width,
        }
    }
}

/// Asks the kernel to back `memory` with 2 MiB pages where it can (Linux's transparent
/// huge pages, which default to opt-in): attention reads a long context's blocks all over
/// the pool, and with 4 KiB pages nearly every block read is a TLB miss.
fn huge_pages<T>(memory: Vec<T>) -> Vec<T> {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (memory.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (memory.as_ptr() as usize + std::mem::size_of_val(&memory[..])) / HUGE * HUGE;
        if end > start {
            // SAFETY: advice only, on whole pages inside `memory`'s allocation.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    memory
}

fn bytemuck_f16(bits: &mut [u16]) -> &mut [f16] {
    use half::slice::HalfBitsSliceExt;
    bits.reinterpret_cast_mut::<f16>()
}
