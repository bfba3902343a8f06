//! The CPU backend's KV cache and the attention over it. The cache is f16, in blocks of
//! `KV_BLOCK_SIZE` positions: keys position by position, each block's values transposed
//! (a column's 16 positions side by side), the layout `quant::KvHead` reads. Attention is
//! split into tasks of the query heads of one KV head of one sequence, for up to
//! `ROWS_PER_TASK` of its rows, so that each block read serves all of them.

use crate::backend::{AttentionOrder, AttentionSpec, SeqRows, KV_BLOCK_SIZE};
use crate::cpu::CpuBuffer;
use crate::error::{EngineError, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;
use quant::{AttendScratch, F16Order, KvHead, Query};
use rayon::prelude::*;
use std::ops::Range;

// The kernels read a block's values as one vector of positions.
const _: () = assert!(KV_BLOCK_SIZE == quant::KV_BLOCK);

/// Query rows per attention task: enough to share each block of keys and values among
/// many queries, few enough that a prompt splits into tasks for every thread.
const ROWS_PER_TASK: usize = 16;

pub struct CpuKvPool {
    slots: usize,
    kv_dim: usize,
    /// [layer][slot][kv_dim], f16 bits.
    k: Vec<u16>,
    /// [layer][block][kv_dim][position in block], f16 bits.
    v: Vec<u16>,
}

impl CpuKvPool {
    pub fn new(layers: usize, blocks: usize, kv_dim: usize) -> Result<CpuKvPool> {
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
        let (k, v) = (vec![0; n], vec![0; n]);
        huge_pages(&k);
        huge_pages(&v);
        Ok(CpuKvPool {
            slots,
            kv_dim,
            k,
            v,
        })
    }

    /// Where slot `slot` of `layer` starts (its key; for values, the block's start).
    fn offset(&self, layer: usize, slot: usize) -> usize {
        (layer * self.slots + slot) * self.kv_dim
    }

    fn layers(&self) -> usize {
        self.k.len() / (self.slots * self.kv_dim).max(1)
    }

    /// Copies every layer of block `src` into block `dst`.
    pub fn copy_block(&mut self, src: u32, dst: u32) {
        let n = KV_BLOCK_SIZE * self.kv_dim;
        for layer in 0..self.layers() {
            let from = self.offset(layer, src as usize * KV_BLOCK_SIZE);
            let to = self.offset(layer, dst as usize * KV_BLOCK_SIZE);
            self.k.copy_within(from..from + n, to);
            self.v.copy_within(from..from + n, to);
        }
    }

    /// Stores row t of `k` and `v` in slot `slots[t]` of `layer`.
    pub fn store(&mut self, layer: usize, k: &CpuBuffer, v: &CpuBuffer, slots: &[usize]) {
        let n = self.kv_dim;
        for (t, &slot) in slots.iter().enumerate() {
            let at = self.offset(layer, slot);
            let key: &mut [f16] = bytemuck_f16(&mut self.k[at..at + n]);
            key.convert_from_f32_slice(&v_row(k, t)[..n]);
            let block = self.offset(layer, slot / KV_BLOCK_SIZE * KV_BLOCK_SIZE);
            let lane = slot % KV_BLOCK_SIZE;
            for (c, &x) in v_row(v, t)[..n].iter().enumerate() {
                self.v[block + c * KV_BLOCK_SIZE + lane] = f16::from_f32(x).to_bits();
            }
        }
    }

    /// The keys and values of `layer`.
    fn layer(&self, layer: usize) -> (&[u16], &[u16]) {
        let range = self.offset(layer, 0)..self.offset(layer + 1, 0);
        (&self.k[range.clone()], &self.v[range])
    }
}

/// Asks the kernel to back `memory` with 2 MiB pages where it can (Linux's transparent
/// huge pages, which default to opt-in): attention reads a long context's blocks all over
/// the pool, and with 4 KiB pages nearly every block read is a TLB miss.
fn huge_pages(memory: &[u16]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (memory.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (memory.as_ptr() as usize + std::mem::size_of_val(memory)) / HUGE * HUGE;
        if end > start {
            // SAFETY: advice only, on whole pages inside `memory`'s allocation.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
}

fn v_row(x: &CpuBuffer, t: usize) -> &[f32] {
    &x.data[t * x.cols..(t + 1) * x.cols]
}

fn bytemuck_f16(bits: &mut [u16]) -> &mut [f16] {
    use half::slice::HalfBitsSliceExt;
    bits.reinterpret_cast_mut::<f16>()
}

/// One task's reusable buffers.
#[derive(Default)]
struct Scratch {
    queries: Vec<f32>,
    scores: Vec<Vec<f32>>,
    attend: AttendScratch,
}

/// Causal grouped-query attention of `q` over the pool (see `Backend::attention`).
pub fn attention(
    q: &CpuBuffer,
    pool: &CpuKvPool,
    layer: usize,
    seqs: &[SeqRows],
    spec: &AttentionSpec,
    out: &mut CpuBuffer,
) {
    let width = pool.kv_dim / spec.n_kv_heads;
    let group = q.cols / width / spec.n_kv_heads;
    let (keys, values) = pool.layer(layer);
    // Tasks: (sequence, query heads of one KV group, rows).
    let row_tiles: Vec<(usize, Range<usize>)> = seqs
        .iter()
        .enumerate()
        .flat_map(|(s, seq)| {
            seq.rows
                .clone()
                .step_by(ROWS_PER_TASK)
                .map(move |start| (s, start..(start + ROWS_PER_TASK).min(seq.rows.end)))
        })
        .collect();
    // A group's heads share one task, unless that leaves threads idle (decoding few
    // sequences): then each head is a task, and the group's blocks are read once per head.
    let heads_per_task = match row_tiles.len() * spec.n_kv_heads < 2 * rayon::current_num_threads()
    {
        true => 1,
        false => group,
    };
    let tasks: Vec<(usize, Range<usize>, Range<usize>)> = row_tiles
        .into_iter()
        .flat_map(|(s, rows)| {
            (0..group * spec.n_kv_heads)
                .step_by(heads_per_task)
                .map(move |h| (s, h..h + heads_per_task, rows.clone()))
        })
        .collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map_init(Scratch::default, |scratch, (s, heads, rows)| {
            let seq = &seqs[*s];
            let kv = KvHead {
                keys,
                values,
                blocks: seq.blocks,
                kv_dim: pool.kv_dim,
                offset: heads.start / group * width,
                head_dim: width,
            };
            // The rows' query heads, row by row, rounded to f16 as GGML rounds the query
            // for an f16 cache.
            let columns = heads.start * width..heads.end * width;
            scratch.queries.clear();
            for r in rows.clone() {
                scratch
                    .queries
                    .extend_from_slice(&v_row(q, r)[columns.clone()]);
            }
            quant::round_to_f16(&mut scratch.queries);
            let queries: Vec<Query> = scratch
                .queries
                .chunks_exact(width)
                .enumerate()
                .map(|(i, q)| {
                    let pos = seq.start + rows.start + i / heads.len() - seq.rows.start;
                    Query {
                        q,
                        first: spec.first_visible(pos),
                        end: pos + 1,
                        order: match pos >= seq.generated_from {
                            true => F16Order::OneToken,
                            false => F16Order::Batched,
                        },
                    }
                })
                .collect();
            let mut result = vec![0.0; queries.len() * width];
            if spec.order == AttentionOrder::Flash {
                for (query, out) in queries.iter().zip(result.chunks_exact_mut(width)) {
                    quant::flash_attend(query, &kv, spec.scale, spec.softcap, out);
                }
                return result;
            }
            let scores = &mut scratch.scores;
            scores.resize_with(queries.len().max(scores.len()), Vec::new);
            let scores = &mut scores[..queries.len()];
            quant::attention_scores(&queries, &kv, spec.scale, scores);
            for (query, scores) in queries.iter().zip(scores.iter_mut()) {
                if let Some(cap) = spec.softcap {
                    quant::softcap(&mut scores[query.first - query.base()..], cap);
                }
                quant::softmax(scores);
            }
            quant::attend(&queries, scores, &kv, &mut result, &mut scratch.attend);
            result
        })
        .collect();
    for ((_, heads, rows), result) in tasks.iter().zip(results) {
        let n = heads.len() * width;
        for (r, values) in rows.clone().zip(result.chunks_exact(n)) {
            out.data[r * q.cols + heads.start * width..][..n].copy_from_slice(values);
        }
    }
}
