//! Causal grouped-query attention over the CPU backend's KV pool (`cpu_kv`): over an f16
//! cache in llama.cpp's summation orders (`quant::attention`), over a quantized side in
//! ours (`quant::attention_quantized`), reading the blocks as stored.
//!
//! The unit of work is a tile: the query heads of one KV head of one sequence, for up to
//! `ROWS_PER_TASK` of its rows, so that each block of keys and values read serves all of
//! them. When tiles are plenty (prompts, many sequences), each is a task. When they are
//! too few to keep the threads busy (decoding one or two sequences), a long tile is
//! split instead, in a way that changes no bit of the result: its scores by stretches of
//! positions (each score is a dot product of its own), then its weighted values by
//! columns (each column sums its positions on its own). Every block is still read once.

use crate::backend::{AttentionOrder, AttentionSpec, SeqRows};
use crate::cpu::CpuBuffer;
use crate::cpu_kv::{CpuKvPool, LayerSide};
use quant::{
    for_each_mut, map_indices, AttendScratch, F16Order, KvHead, QuantizedKvHead, Query, KV_BLOCK,
};
use std::ops::Range;

/// Query rows per tile: enough to share each block of keys and values among many queries,
/// few enough that a prompt splits into tiles for every thread.
const ROWS_PER_TASK: usize = 16;

/// Positions a tile must see before splitting it pays for the two extra hand-offs
/// between threads (a choice of speed only: split or not, the bits are the same).
const SPLIT_FROM_POSITIONS: usize = 512;

/// Columns of a split tile's values per task: a multiple of the f16 kernels' 16, and of
/// the quantized blocks' 32. Wider is better where the head allows: a task reads its
/// columns' part of every block of values, and from memory (a decoding step at depth)
/// 16 columns' 512 bytes per block came 1.4× slower than 32 columns' 1,024
/// (`cargo bench -p quant --bench attention`, `decode_from_memory`).
fn split_columns(values: &LayerSide, width: usize) -> usize {
    match values {
        LayerSide::F16(_) if !width.is_multiple_of(32) => 16,
        _ => 32,
    }
}

/// The query heads `heads` of one KV head of sequence `seq`, for its batch rows `rows`.
#[derive(Clone, Debug)]
struct Tile {
    seq: usize,
    heads: Range<usize>,
    rows: Range<usize>,
}

/// One task's reusable buffers.
#[derive(Default)]
struct Scratch {
    queries: Vec<f32>,
    scores: Vec<Vec<f32>>,
    attend: AttendScratch,
    quantized_queries: Vec<u8>,
}

/// What one attention call reads: the query rows, the pool's layer, the sequences.
struct Call<'a> {
    q: &'a CpuBuffer,
    keys: LayerSide<'a>,
    values: LayerSide<'a>,
    kv_dim: usize,
    seqs: &'a [SeqRows<'a>],
    spec: &'a AttentionSpec,
    /// Columns per head, and query heads per KV head.
    width: usize,
    group: usize,
    /// llama.cpp's flash-attention order: asked for, and both sides f16.
    flash: bool,
}

impl<'a> Call<'a> {
    /// The tile's queries, row by row, rounded to f16 as GGML rounds the query for an f16
    /// cache; their values go into `values`.
    fn queries<'v>(&self, tile: &Tile, values: &'v mut Vec<f32>) -> Vec<Query<'v>> {
        let seq = &self.seqs[tile.seq];
        let columns = tile.heads.start * self.width..tile.heads.end * self.width;
        values.clear();
        for r in tile.rows.clone() {
            values.extend_from_slice(&self.q.row(r)[columns.clone()]);
        }
        quant::round_to_f16(values);
        values
            .chunks_exact(self.width)
            .enumerate()
            .map(|(i, q)| {
                let pos = seq.start + tile.rows.start + i / tile.heads.len() - seq.rows.start;
                Query {
                    q,
                    first: self.spec.first_visible(pos),
                    end: pos + 1,
                    order: match pos >= seq.generated_from {
                        true => F16Order::OneToken,
                        false => F16Order::Batched,
                    },
                }
            })
            .collect()
    }

    /// The f16 sides of the KV head `kv_head` of sequence `seq` (a quantized side is
    /// left empty: only the kernels of the f16 side read it).
    fn f16_head(&self, seq: usize, kv_head: usize) -> KvHead<'_> {
        let f16 = |side: &LayerSide<'a>| match *side {
            LayerSide::F16(bits) => bits,
            LayerSide::Quantized { .. } => &[],
        };
        KvHead {
            keys: f16(&self.keys),
            values: f16(&self.values),
            blocks: self.seqs[seq].blocks,
            kv_dim: self.kv_dim,
            offset: kv_head * self.width,
            head_dim: self.width,
        }
    }

    /// Columns `columns` of KV head `kv_head` of sequence `seq` on a quantized side.
    fn quantized_head(
        &self,
        side: &LayerSide<'a>,
        seq: usize,
        kv_head: usize,
        columns: Range<usize>,
    ) -> Option<QuantizedKvHead<'a>> {
        match *side {
            LayerSide::F16(_) => None,
            LayerSide::Quantized {
                quant,
                data,
                row_bytes,
            } => Some(QuantizedKvHead {
                quant,
                data,
                row_bytes,
                blocks: self.seqs[seq].blocks,
                offset: kv_head * self.width + columns.start,
                head_dim: columns.len(),
            }),
        }
    }

    /// The queries' scores against KV head `kv_head` of sequence `seq`.
    fn scores(
        &self,
        seq: usize,
        kv_head: usize,
        queries: &[Query],
        scores: &mut [Vec<f32>],
        quantized_queries: &mut Vec<u8>,
    ) {
        let scale = self.spec.scale;
        match self.quantized_head(&self.keys, seq, kv_head, 0..self.width) {
            Some(keys) => quant::quantized_scores(queries, &keys, scale, scores, quantized_queries),
            None => quant::attention_scores(queries, &self.f16_head(seq, kv_head), scale, scores),
        }
    }

    /// The queries' weighted values of KV head `kv_head` of sequence `seq`, its columns
    /// `columns` only.
    fn attend(
        &self,
        (seq, kv_head, columns): (usize, usize, Range<usize>),
        queries: &[Query],
        weights: &[Vec<f32>],
        out: &mut [f32],
        scratch: &mut AttendScratch,
    ) {
        match self.quantized_head(&self.values, seq, kv_head, columns.clone()) {
            Some(values) => quant::quantized_attend(queries, weights, &values, out),
            None => {
                let whole = self.f16_head(seq, kv_head);
                let kv = KvHead {
                    offset: whole.offset + columns.start,
                    head_dim: columns.len(),
                    ..whole
                };
                quant::attend(queries, weights, &kv, out, scratch)
            }
        }
    }

    /// Turns scores into attention weights, in place: soft-capped where the model says,
    /// softmax, rounded to f16 as GGML rounds them for an f16 cache.
    fn weigh(&self, query: &Query, scores: &mut [f32]) {
        if let Some(cap) = self.spec.softcap {
            quant::softcap(&mut scores[query.first - query.base()..], cap);
        }
        quant::softmax(scores);
        quant::round_to_f16(scores);
    }

    /// The whole attention of one tile, on one thread.
    fn tile(&self, tile: &Tile, scratch: &mut Scratch) -> Vec<f32> {
        let Scratch {
            queries: query_values,
            scores,
            attend,
            quantized_queries,
        } = scratch;
        let queries = self.queries(tile, query_values);
        let kv_head = tile.heads.start / self.group;
        let mut result = vec![0.0; queries.len() * self.width];
        if self.flash {
            let kv = self.f16_head(tile.seq, kv_head);
            for (query, out) in queries.iter().zip(result.chunks_exact_mut(self.width)) {
                quant::flash_attend(query, &kv, self.spec.scale, self.spec.softcap, out);
            }
            return result;
        }
        scores.resize_with(queries.len().max(scores.len()), Vec::new);
        let scores = &mut scores[..queries.len()];
        self.scores(tile.seq, kv_head, &queries, scores, quantized_queries);
        for (query, scores) in queries.iter().zip(scores.iter_mut()) {
            self.weigh(query, scores);
        }
        let head = (tile.seq, kv_head, 0..self.width);
        self.attend(head, &queries, scores, &mut result, attend);
        result
    }

    /// The attention of a few long tiles, each split across the threads: scores by
    /// stretches of positions cut at multiples of 16, then weighted values by columns.
    fn split_tiles(&self, tiles: &[Tile]) -> Vec<Vec<f32>> {
        let parts = (2 * rayon::current_num_threads()).div_ceil(tiles.len());
        let mut query_values: Vec<Vec<f32>> = vec![Vec::new(); tiles.len()];
        let queries: Vec<Vec<Query>> = tiles
            .iter()
            .zip(query_values.iter_mut())
            .map(|(tile, values)| self.queries(tile, values))
            .collect();
        // Scores: (tile, stretch of positions) tasks; each gives its queries' scores there.
        let stretches: Vec<(usize, Range<usize>)> = queries
            .iter()
            .enumerate()
            .flat_map(|(t, queries)| {
                let start = queries.iter().map(Query::base).min().unwrap_or(0);
                let end = queries.iter().map(|q| q.end).max().unwrap_or(0);
                let step = (end - start)
                    .div_ceil(parts)
                    .next_multiple_of(KV_BLOCK)
                    .max(KV_BLOCK);
                (start..end)
                    .step_by(step)
                    .map(move |s| (t, s..(s + step).min(end)))
            })
            .collect();
        let pieces: Vec<Vec<Vec<f32>>> = map_indices(
            stretches.len(),
            || (),
            |_, i| {
                let (t, stretch) = &stretches[i];
                let part: Vec<Query> = queries[*t]
                    .iter()
                    .map(|q| Query {
                        first: q.first.max(stretch.start),
                        end: q.end.min(stretch.end),
                        ..*q
                    })
                    .collect();
                // A query that sees none of the stretch gets no scores from it.
                let seen: Vec<Query> = part.into_iter().filter(|q| q.first < q.end).collect();
                let mut scores = vec![Vec::new(); seen.len()];
                let kv_head = tiles[*t].heads.start / self.group;
                self.scores(tiles[*t].seq, kv_head, &seen, &mut scores, &mut Vec::new());
                scores
            },
        );
        // Each query's scores in `attention_scores`' layout: its stretches in order (the
        // first starts at its base; the others at multiples of 16, so with no -∞ prefix).
        let mut weights: Vec<Vec<Vec<f32>>> = queries
            .iter()
            .map(|queries| vec![Vec::new(); queries.len()])
            .collect();
        for ((t, stretch), piece) in stretches.iter().zip(pieces) {
            let seeing = queries[*t]
                .iter()
                .zip(weights[*t].iter_mut())
                .filter(|(q, _)| q.first.max(stretch.start) < q.end.min(stretch.end));
            for ((_, w), scores) in seeing.zip(piece) {
                w.extend_from_slice(&scores);
            }
        }
        let mut weighed: Vec<(&mut Vec<f32>, &Query)> = weights
            .iter_mut()
            .zip(&queries)
            .flat_map(|(w, q)| w.iter_mut().zip(q))
            .collect();
        for_each_mut(&mut weighed, |(w, query)| self.weigh(query, w));
        drop(weighed);
        // Weighted values: (tile, columns) tasks, each over every position.
        let split = split_columns(&self.values, self.width);
        let columns: Vec<(usize, Range<usize>)> = (0..tiles.len())
            .flat_map(|t| {
                (0..self.width)
                    .step_by(split)
                    .map(move |c| (t, c..(c + split).min(self.width)))
            })
            .collect();
        let outputs: Vec<Vec<f32>> =
            map_indices(columns.len(), AttendScratch::default, |scratch, i| {
                let (t, columns) = &columns[i];
                let tile = &tiles[*t];
                let head = (tile.seq, tile.heads.start / self.group, columns.clone());
                let mut out = vec![0.0; queries[*t].len() * columns.len()];
                self.attend(head, &queries[*t], &weights[*t], &mut out, scratch);
                out
            });
        let mut results: Vec<Vec<f32>> = queries
            .iter()
            .map(|q| vec![0.0; q.len() * self.width])
            .collect();
        for ((t, columns), out) in columns.iter().zip(outputs) {
            for (result, part) in results[*t]
                .chunks_exact_mut(self.width)
                .zip(out.chunks_exact(columns.len()))
            {
                result[columns.clone()].copy_from_slice(part);
            }
        }
        results
    }
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
    let width = pool.kv_dim() / spec.n_kv_heads;
    let group = q.cols / width / spec.n_kv_heads;
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
    let (keys, values) = (pool.keys(layer), pool.values(layer));
    let f16 = |side: &LayerSide| matches!(side, LayerSide::F16(_));
    let call = Call {
        q,
        keys,
        values,
        kv_dim: pool.kv_dim(),
        seqs,
        spec,
        width,
        group,
        flash: spec.order == AttentionOrder::Flash && f16(&keys) && f16(&values),
    };
    let tiles_of = |heads_per_tile: usize| -> Vec<Tile> {
        row_tiles
            .iter()
            .flat_map(|(s, rows)| {
                (0..group * spec.n_kv_heads)
                    .step_by(heads_per_tile)
                    .map(move |h| Tile {
                        seq: *s,
                        heads: h..h + heads_per_tile,
                        rows: rows.clone(),
                    })
            })
            .collect()
    };
    let few = row_tiles.len() * spec.n_kv_heads < 2 * rayon::current_num_threads();
    let longest = seqs.iter().map(|s| s.start + s.rows.len()).max();
    let split = few
        && !call.flash
        && width.is_multiple_of(split_columns(&values, width))
        && longest.is_some_and(|n| n >= SPLIT_FROM_POSITIONS);
    // Few short tiles: one task per query head (each re-reads its KV head, which is small).
    let tiles = tiles_of(if few && !split { 1 } else { group });
    let results = match split {
        true => call.split_tiles(&tiles),
        false => map_indices(tiles.len(), Scratch::default, |scratch, i| {
            call.tile(&tiles[i], scratch)
        }),
    };
    for (tile, result) in tiles.iter().zip(results) {
        let n = tile.heads.len() * width;
        for (r, values) in tile.rows.clone().zip(result.chunks_exact(n)) {
            out.data[r * q.cols + tile.heads.start * width..][..n].copy_from_slice(values);
        }
    }
}
