//! Causal grouped-query attention over the CPU backend's KV pool (`cpu_kv`), in llama.cpp's
//! summation orders (`quant::attention`).
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
use crate::cpu_kv::{CpuKvPool, Staging};
use quant::{AttendScratch, F16Order, KvHead, Query, KV_BLOCK};
use rayon::prelude::*;
use std::ops::Range;

/// Query rows per tile: enough to share each block of keys and values among many queries,
/// few enough that a prompt splits into tiles for every thread.
const ROWS_PER_TASK: usize = 16;

/// Positions a tile must see before splitting it pays for the two extra hand-offs
/// between threads (a choice of speed only: split or not, the bits are the same).
const SPLIT_FROM_POSITIONS: usize = 512;

/// Columns of a split tile's values per task: a multiple of the kernels' 16.
const SPLIT_COLUMNS: usize = 16;

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
}

/// What one attention call reads: the query rows, the pool's layer, the sequences.
struct Call<'a> {
    q: &'a CpuBuffer,
    pool: &'a CpuKvPool,
    layer: usize,
    seqs: &'a [SeqRows<'a>],
    spec: &'a AttentionSpec,
    /// Columns per head, and query heads per KV head.
    width: usize,
    group: usize,
    /// A quantized cache's blocks in sight, widened to f16, per sequence and KV head.
    staged: &'a [Staging],
}

impl Call<'_> {
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

    /// The KV head the tile's queries read.
    fn kv(&self, tile: &Tile) -> KvHead<'_> {
        let kv_head = tile.heads.start / self.group;
        match self.pool.f16_layer(self.layer) {
            Some((keys, values)) => KvHead {
                keys,
                values,
                blocks: self.seqs[tile.seq].blocks,
                kv_dim: self.pool.kv_dim(),
                offset: kv_head * self.width,
                head_dim: self.width,
            },
            None => self.staged[tile.seq * self.spec.n_kv_heads + kv_head].head(),
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
        } = scratch;
        let queries = self.queries(tile, query_values);
        let kv = self.kv(tile);
        let mut result = vec![0.0; queries.len() * self.width];
        if self.spec.order == AttentionOrder::Flash {
            for (query, out) in queries.iter().zip(result.chunks_exact_mut(self.width)) {
                quant::flash_attend(query, &kv, self.spec.scale, self.spec.softcap, out);
            }
            return result;
        }
        scores.resize_with(queries.len().max(scores.len()), Vec::new);
        let scores = &mut scores[..queries.len()];
        quant::attention_scores(&queries, &kv, self.spec.scale, scores);
        for (query, scores) in queries.iter().zip(scores.iter_mut()) {
            self.weigh(query, scores);
        }
        quant::attend(&queries, scores, &kv, &mut result, attend);
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
        let pieces: Vec<Vec<Vec<f32>>> = stretches
            .par_iter()
            .map(|(t, stretch)| {
                let kv = self.kv(&tiles[*t]);
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
                quant::attention_scores(&seen, &kv, self.spec.scale, &mut scores);
                scores
            })
            .collect();
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
        weights
            .par_iter_mut()
            .zip(queries.par_iter())
            .flat_map(|(w, q)| w.par_iter_mut().zip(q.par_iter()))
            .for_each(|(w, query)| self.weigh(query, w));
        // Weighted values: (tile, columns) tasks, each over every position.
        let columns: Vec<(usize, Range<usize>)> = (0..tiles.len())
            .flat_map(|t| {
                (0..self.width)
                    .step_by(SPLIT_COLUMNS)
                    .map(move |c| (t, c..(c + SPLIT_COLUMNS).min(self.width)))
            })
            .collect();
        let outputs: Vec<Vec<f32>> = columns
            .par_iter()
            .map_init(AttendScratch::default, |scratch, (t, columns)| {
                let whole = self.kv(&tiles[*t]);
                let kv = KvHead {
                    offset: whole.offset + columns.start,
                    head_dim: columns.len(),
                    ..whole
                };
                let mut out = vec![0.0; queries[*t].len() * columns.len()];
                quant::attend(&queries[*t], &weights[*t], &kv, &mut out, scratch);
                out
            })
            .collect();
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
    let staged = pool.stage_layer(layer, seqs, spec);
    let call = Call {
        q,
        pool,
        layer,
        seqs,
        spec,
        width,
        group,
        staged: &staged[..],
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
        && spec.order != AttentionOrder::Flash
        && width.is_multiple_of(SPLIT_COLUMNS)
        && longest.is_some_and(|n| n >= SPLIT_FROM_POSITIONS);
    // Few short tiles: one task per query head (each re-reads its KV head, which is small).
    let tiles = tiles_of(if few && !split { 1 } else { group });
    let results = match split {
        true => call.split_tiles(&tiles),
        false => tiles
            .par_iter()
            .map_init(Scratch::default, |scratch, tile| call.tile(tile, scratch))
            .collect(),
    };
    for (tile, result) in tiles.iter().zip(results) {
        let n = tile.heads.len() * width;
        for (r, values) in tile.rows.clone().zip(result.chunks_exact(n)) {
            out.data[r * q.cols + tile.heads.start * width..][..n].copy_from_slice(values);
        }
    }
}
