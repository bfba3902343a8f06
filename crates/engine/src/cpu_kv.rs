//! The CPU backend's KV cache, in blocks of `KV_BLOCK_SIZE` positions. An f16 side keeps
//! keys position by position and each block's values transposed (a column's 16 positions
//! side by side), the layout `quant::KvHead` reads; a quantized side keeps each position's
//! row of GGML blocks, the layout `quant::QuantizedKvHead` reads (`cpu_attention`).

use crate::backend::{KvCacheType, KvShape, KvTypes, KV_BLOCK_SIZE};
use crate::cpu::CpuBuffer;
use crate::error::{EngineError, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;
use quant::KvQuant;

// The kernels read a block's values as one vector of positions.
const _: () = assert!(KV_BLOCK_SIZE == quant::KV_BLOCK);

pub struct CpuKvPool {
    slots: usize,
    kv_dim: usize,
    layers: usize,
    k: Side,
    v: Side,
}

/// The keys or the values of every layer.
enum Side {
    /// f16 bits: keys [layer][slot][kv_dim], values [layer][block][kv_dim][position in
    /// block] (the layout `quant::KvHead` reads).
    F16(Vec<u16>),
    /// GGML blocks of 32 values, [layer][slot][row of `kv_dim`].
    Quantized {
        quant: KvQuant,
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
        Ok(match ty.quantized() {
            None => Side::F16(huge_pages(vec![0; bytes / 2])),
            Some(quant) => Side::Quantized {
                quant,
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
            layers: shape.layers,
            k: Side::new(types.k, shape.layers, slots, shape.kv_dim)?,
            v: Side::new(types.v, shape.layers, slots, shape.kv_dim)?,
        })
    }

    /// Where slot `slot` of `layer` starts in an f16 side (its key; for values, the
    /// block's start).
    fn offset(&self, layer: usize, slot: usize) -> usize {
        (layer * self.slots + slot) * self.kv_dim
    }

    /// Maps every page of the pool now. Left to the first writes, the pages come in the
    /// middle of serving: a side is [layer][slot], so the first position written maps a
    /// 2 MiB page in every layer, and a server's first 57-token prompt took 651 ms
    /// instead of 115 (the next thousands of positions then cost nothing more).
    pub fn commit(&mut self) {
        for side in [&mut self.k, &mut self.v] {
            match side {
                Side::F16(data) => touch_pages(data),
                Side::Quantized { data, .. } => touch_pages(data),
            }
        }
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
                Side::Quantized { quant, row, data } => {
                    quantize_into(*quant, k.row(t), &mut data[pool_slot * *row..][..*row])
                }
            }
            match &mut self.v {
                Side::F16(values) => {
                    let lane = slot % KV_BLOCK_SIZE;
                    for (c, &x) in v.row(t)[..n].iter().enumerate() {
                        values[block + c * KV_BLOCK_SIZE + lane] = f16::from_f32(x).to_bits();
                    }
                }
                Side::Quantized { quant, row, data } => {
                    quantize_into(*quant, v.row(t), &mut data[pool_slot * *row..][..*row])
                }
            }
        }
    }

    /// Values per position and layer: every KV head's keys (or values).
    pub(crate) fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// `layer`'s keys.
    pub(crate) fn keys(&self, layer: usize) -> LayerSide<'_> {
        self.layer_side(&self.k, layer)
    }

    /// `layer`'s values.
    pub(crate) fn values(&self, layer: usize) -> LayerSide<'_> {
        self.layer_side(&self.v, layer)
    }

    fn layer_side<'a>(&self, side: &'a Side, layer: usize) -> LayerSide<'a> {
        let slots = layer * self.slots..(layer + 1) * self.slots;
        match side {
            Side::F16(data) => {
                LayerSide::F16(&data[slots.start * self.kv_dim..slots.end * self.kv_dim])
            }
            Side::Quantized { quant, row, data } => LayerSide::Quantized {
                quant: *quant,
                data: &data[slots.start * row..slots.end * row],
                row_bytes: *row,
            },
        }
    }
}

/// One layer's keys or values, as stored.
#[derive(Clone, Copy)]
pub(crate) enum LayerSide<'a> {
    /// f16 bits in `quant::KvHead`'s layout.
    F16(&'a [u16]),
    /// Rows of GGML blocks, `row_bytes` per pool slot.
    Quantized {
        quant: KvQuant,
        data: &'a [u8],
        row_bytes: usize,
    },
}

/// Quantizes `x` into `out` (whole blocks).
fn quantize_into(quant: KvQuant, x: &[f32], out: &mut [u8]) {
    // The pool only holds the types `quant` quantizes, in whole blocks.
    let bytes = quant::quantize(quant.ggml(), x).expect("a KV cache type quant writes");
    out.copy_from_slice(&bytes);
}

/// Writes one value of every 4 KiB page of `memory` (as it was), so that the kernel
/// maps them all; on every thread of the current pool.
fn touch_pages<T: Copy + Send>(memory: &mut [T]) {
    use rayon::prelude::*;
    let page = 4096 / std::mem::size_of::<T>();
    memory.par_chunks_mut(512 * page).for_each(|pages| {
        for first in pages.chunks_mut(page).map(|p| p.as_mut_ptr()) {
            // SAFETY: `first` points at an element of `pages`, held exclusively here;
            // volatile, so that rewriting a value with itself is not optimised away.
            unsafe { std::ptr::write_volatile(first, std::ptr::read_volatile(first)) }
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sides(pool: &CpuKvPool, layer: usize) -> (Vec<u8>, Vec<u8>) {
        let bytes = |side: LayerSide| match side {
            LayerSide::F16(bits) => bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
            LayerSide::Quantized { data, .. } => data.to_vec(),
        };
        (bytes(pool.keys(layer)), bytes(pool.values(layer)))
    }

    #[test]
    fn committing_a_pool_keeps_what_it_holds() {
        let shape = KvShape {
            layers: 3,
            kv_dim: 64,
            head_dim: 32,
        };
        let types = KvTypes {
            k: KvCacheType::F16,
            v: KvCacheType::Q8_0,
        };
        // Enough blocks for several pages per layer.
        let mut pool = CpuKvPool::new(shape, 300, types).unwrap();
        // No value is zero, and most slots start a 4 KiB page of keys (32 positions of
        // 64 f16 values), where committing writes: rewriting with anything but the value
        // there would show.
        let rows = |seed: f32| CpuBuffer {
            data: (0..5 * 64).map(|i| 1.5 + (i as f32 * seed).sin()).collect(),
            rows: 5,
            cols: 64,
        };
        let slots = [0, 17, 1024, 2048, 4768];
        for layer in 0..3 {
            pool.store(layer, &rows(0.1 + layer as f32), &rows(0.7), &slots);
        }
        let before: Vec<_> = (0..3).map(|l| sides(&pool, l)).collect();
        assert!(before
            .iter()
            .all(|(k, v)| k.iter().any(|&b| b != 0) && v.iter().any(|&b| b != 0)));
        pool.commit();
        let after: Vec<_> = (0..3).map(|l| sides(&pool, l)).collect();
        assert!(before == after, "committing changed the pool's contents");
    }
}
