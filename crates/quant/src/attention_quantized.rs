//! Attention over a quantized KV cache — GGML's Q8_0 or Q4_0 blocks of 32 values, each
//! position's row of `kv_dim` values — read as stored, with no widening pass.
//!
//! llama.cpp has no order to follow here (its CPU backend reads a quantized V only in
//! flash attention, converting what it reads), so the order is ours, the same for every
//! batch shape and so batch-invariant by construction:
//! - a score: the query quantized to Q8_0 (as GGML quantizes a matmul's activations),
//!   then per block of 32 columns the exact integer dot product `isum` with the key's
//!   codes, accumulated block by block as `acc = (d_k · d_q) · isum + acc` (one fused
//!   multiply-add), times the scale;
//! - an output column: position by position from `first`, `acc = (w_p · d_p) · x_p + acc`
//!   (one fused multiply-add), where `x_p` is the position's code and `d_p` its block's
//!   scale.
//!
//! Vector kernels (`attention_quantized_avx2`) give these bits: the integer sums are exact
//! in any order, and every float operation is the portable twin's, lane by lane.

use crate::attention::{Query, KV_BLOCK};
use crate::legacy::{quantize_q8_0, QK};

/// The block formats a quantized cache stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvQuant {
    Q8_0,
    Q4_0,
}

impl KvQuant {
    /// Bytes of one block of 32 values.
    pub const fn block_bytes(self) -> usize {
        match self {
            KvQuant::Q8_0 => 34,
            KvQuant::Q4_0 => 18,
        }
    }

    pub const fn ggml(self) -> gguf::GgmlType {
        match self {
            KvQuant::Q8_0 => gguf::GgmlType::Q8_0,
            KvQuant::Q4_0 => gguf::GgmlType::Q4_0,
        }
    }
}

/// One KV head of one side (keys or values) of a layer of a quantized cache: pool slot
/// s's row of `kv_dim` values at `s · row_bytes`, position p in pool block
/// `blocks[p / 16]`.
#[derive(Clone, Copy)]
pub struct QuantizedKvHead<'a> {
    pub quant: KvQuant,
    pub data: &'a [u8],
    pub row_bytes: usize,
    pub blocks: &'a [u32],
    /// The head's first column in the row: a multiple of 32.
    pub offset: usize,
    /// The head's columns: a multiple of 32.
    pub head_dim: usize,
}

impl<'a> QuantizedKvHead<'a> {
    /// Position p's blocks of this head.
    #[inline(always)]
    pub fn position(&self, p: usize) -> &'a [u8] {
        let slot = self.blocks[p / KV_BLOCK] as usize * KV_BLOCK + p % KV_BLOCK;
        let size = self.quant.block_bytes();
        let at = slot * self.row_bytes + self.offset / QK * size;
        &self.data[at..at + self.head_dim / QK * size]
    }
}

/// A block's scale and its 32 codes, in column order.
#[inline(always)]
pub(crate) fn codes(quant: KvQuant, block: &[u8]) -> (f32, [i8; QK]) {
    let d = crate::f16_at(block, 0);
    let x = match quant {
        KvQuant::Q8_0 => std::array::from_fn(|j| block[2 + j] as i8),
        KvQuant::Q4_0 => std::array::from_fn(|j| {
            let byte = block[2 + j % 16];
            let nibble = if j < 16 { byte & 0xf } else { byte >> 4 };
            nibble as i8 - 8
        }),
    };
    (d, x)
}

/// The queries quantized to Q8_0 blocks, one after the other (`width / 32` blocks each).
pub(crate) fn quantize_queries(queries: &[Query], width: usize, out: &mut Vec<u8>) {
    let per_query = width / QK * 34;
    out.resize(queries.len() * per_query, 0);
    for (query, blocks) in queries.iter().zip(out.chunks_exact_mut(per_query)) {
        for (x, block) in query.q[..width]
            .chunks_exact(QK)
            .zip(blocks.chunks_exact_mut(34))
        {
            quantize_q8_0(x, block);
        }
    }
}

/// Sizes each query's score list (-∞ for the positions of `base..first`, see
/// `Query::base`), and returns the positions any query sees.
pub(crate) fn start_scores(queries: &[Query], scores: &mut [Vec<f32>]) -> std::ops::Range<usize> {
    for (query, scores) in queries.iter().zip(scores.iter_mut()) {
        scores.clear();
        scores.resize(query.end - query.base(), f32::NEG_INFINITY);
    }
    let first = queries.iter().map(|q| q.first).min().unwrap_or(0);
    let end = queries.iter().map(|q| q.end).max().unwrap_or(0);
    first..end
}

/// The score of the key at `key` (the head's blocks) against a Q8_0 query, before scaling.
#[inline(always)]
fn score(quant: KvQuant, key: &[u8], query: &[u8]) -> f32 {
    let mut acc = 0.0f32;
    for (k, q) in key
        .chunks_exact(quant.block_bytes())
        .zip(query.chunks_exact(34))
    {
        let (dk, xk) = codes(quant, k);
        let (dq, xq) = codes(KvQuant::Q8_0, q);
        let isum: i32 = xk.iter().zip(&xq).map(|(&a, &b)| a as i32 * b as i32).sum();
        acc = (dk * dq).mul_add(isum as f32, acc);
    }
    acc
}

fn scores_portable(
    queries: &[Query],
    kv: &QuantizedKvHead,
    scale: f32,
    scores: &mut [Vec<f32>],
    quantized: &mut Vec<u8>,
) {
    let positions = start_scores(queries, scores);
    quantize_queries(queries, kv.head_dim, quantized);
    let per_query = kv.head_dim / QK * 34;
    for p in positions {
        let key = kv.position(p);
        for (i, (query, scores)) in queries.iter().zip(scores.iter_mut()).enumerate() {
            if (query.first..query.end).contains(&p) {
                let q = &quantized[i * per_query..][..per_query];
                scores[p - query.base()] = score(kv.quant, key, q) * scale;
            }
        }
    }
}

/// Each query's attention scores over a quantized cache, laid out as
/// `attention::attention_scores` lays them out (`scores[i][p - base]`, -∞ before
/// `first`), in the order of the module documentation. `scratch` holds the quantized
/// queries between calls.
pub fn quantized_scores(
    queries: &[Query],
    kv: &QuantizedKvHead,
    scale: f32,
    scores: &mut [Vec<f32>],
    scratch: &mut Vec<u8>,
) {
    assert_eq!(queries.len(), scores.len(), "one score list per query");
    assert!(kv.head_dim.is_multiple_of(QK), "whole blocks of 32 columns");
    #[cfg(target_arch = "x86_64")]
    if crate::selected_isa() != crate::Isa::Scalar {
        return crate::attention_quantized_avx2::scores_avx2(queries, kv, scale, scores, scratch);
    }
    scores_portable(queries, kv, scale, scores, scratch)
}

fn attend_portable(queries: &[Query], weights: &[Vec<f32>], kv: &QuantizedKvHead, out: &mut [f32]) {
    let width = kv.head_dim;
    let size = kv.quant.block_bytes();
    for ((query, weights), out) in queries.iter().zip(weights).zip(out.chunks_exact_mut(width)) {
        out.fill(0.0);
        for p in query.first..query.end {
            let w = weights[p - query.base()];
            for (block, out) in kv
                .position(p)
                .chunks_exact(size)
                .zip(out.chunks_exact_mut(QK))
            {
                let (d, x) = codes(kv.quant, block);
                let s = w * d;
                for (o, &x) in out.iter_mut().zip(&x) {
                    *o = s.mul_add(x as f32, *o);
                }
            }
        }
    }
}

/// Each query's attention output over a quantized cache, `out[i · head_dim..]` =
/// Σₚ weights[i][p - base] · value(p) over its positions `first..end`, in the order of the
/// module documentation. A `kv` narrowed to some of a head's blocks of columns (its
/// `offset` and `head_dim`) gives those columns' outputs, the same bits as the whole
/// head's.
pub fn quantized_attend(
    queries: &[Query],
    weights: &[Vec<f32>],
    kv: &QuantizedKvHead,
    out: &mut [f32],
) {
    assert_eq!(queries.len(), weights.len(), "one weight list per query");
    assert_eq!(
        out.len(),
        queries.len() * kv.head_dim,
        "one output per query"
    );
    assert!(kv.head_dim.is_multiple_of(QK), "whole blocks of 32 columns");
    #[cfg(target_arch = "x86_64")]
    if crate::selected_isa() != crate::Isa::Scalar {
        return crate::attention_quantized_avx2::attend_avx2(queries, weights, kv, out);
    }
    attend_portable(queries, weights, kv, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::F16Order;

    /// A pool holding one sequence of `written` positions of `heads` heads of `width`
    /// in a shuffled block table, quantized; other slots hold codes no kernel may read
    /// (NaN scales).
    struct TestCache {
        data: Vec<u8>,
        row_bytes: usize,
        blocks: Vec<u32>,
        /// Each written position's values, dequantized.
        values: Vec<Vec<f32>>,
    }

    impl TestCache {
        fn new(quant: KvQuant, heads: usize, width: usize, written: usize, seed: usize) -> Self {
            let kv_dim = heads * width;
            let used = written.div_ceil(KV_BLOCK);
            let pool = used + 3 + usize::from((used + 3).is_multiple_of(7));
            let blocks: Vec<u32> = (0..used).map(|b| ((7 * b + 2) % pool) as u32).collect();
            let size = quant.block_bytes();
            let row_bytes = kv_dim / QK * size;
            let mut data = vec![0xff; pool * KV_BLOCK * row_bytes];
            let ty = quant.ggml();
            let mut values = Vec::new();
            for p in 0..written {
                let x: Vec<f32> = (0..kv_dim)
                    .map(|i| (((p * 31 + i * 7 + seed) % 97) as f32 / 48.0 - 1.0) * 2.5)
                    .collect();
                let bytes = crate::quantize(ty, &x).unwrap();
                let slot = blocks[p / KV_BLOCK] as usize * KV_BLOCK + p % KV_BLOCK;
                data[slot * row_bytes..][..row_bytes].copy_from_slice(&bytes);
                let mut back = vec![0.0; kv_dim];
                crate::dequantize(ty, &bytes, &mut back).unwrap();
                values.push(back);
            }
            TestCache {
                data,
                row_bytes,
                blocks,
                values,
            }
        }

        fn head(&self, quant: KvQuant, offset: usize, width: usize) -> QuantizedKvHead<'_> {
            QuantizedKvHead {
                quant,
                data: &self.data,
                row_bytes: self.row_bytes,
                blocks: &self.blocks,
                offset,
                head_dim: width,
            }
        }
    }

    /// A query over each of `attention`'s test spans.
    fn queries(qs: &[Vec<f32>], written: usize) -> Vec<Query<'_>> {
        crate::attention::tests::test_spans(written)
            .iter()
            .enumerate()
            .map(|(i, &(first, end))| {
                let end = end.max(first + 1).min(written);
                Query {
                    q: &qs[i % qs.len()],
                    first: first.min(end - 1),
                    end,
                    order: [F16Order::Batched, F16Order::OneToken][i % 2],
                }
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    const QUANTS: [KvQuant; 2] = [KvQuant::Q8_0, KvQuant::Q4_0];

    #[test]
    fn scores_are_the_dots_of_the_keys_and_match_their_portable_twin() {
        for quant in QUANTS {
            for width in [32, 64, 128, 256] {
                for written in [1, 15, 16, 17, 33, 100, 300] {
                    let cache = TestCache::new(quant, 2, width, written, width + written);
                    let kv = cache.head(quant, width, width);
                    let qs: Vec<Vec<f32>> = (0..3)
                        .map(|s| {
                            (0..width)
                                .map(|i| ((i * (s + 3)) as f32 * 0.37).sin())
                                .collect()
                        })
                        .collect();
                    let queries = queries(&qs, written);
                    let mut got = vec![Vec::new(); queries.len()];
                    let mut want = vec![Vec::new(); queries.len()];
                    let mut scratch = Vec::new();
                    quantized_scores(&queries, &kv, 0.125, &mut got, &mut scratch);
                    scores_portable(&queries, &kv, 0.125, &mut want, &mut scratch);
                    for (i, query) in queries.iter().enumerate() {
                        let what = format!("{quant:?} width {width} {query:?}");
                        assert_eq!(bits(&got[i]), bits(&want[i]), "{what}");
                        assert_eq!(got[i].len(), query.end - query.base(), "{what}");
                        for (j, &s) in got[i].iter().enumerate() {
                            let p = query.base() + j;
                            if p < query.first {
                                assert_eq!(s, f32::NEG_INFINITY, "{what}");
                                continue;
                            }
                            let key = &cache.values[p][width..2 * width];
                            let exact: f64 = key
                                .iter()
                                .zip(query.q)
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum();
                            // The query's Q8_0 rounding: at most half a step per column.
                            let bound: f64 = key.iter().map(|k| k.abs() as f64).sum::<f64>()
                                * (query.q.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64)
                                / 127.0;
                            assert!(
                                (s as f64 / 0.125 - exact).abs() <= bound,
                                "{what} position {p}: {s} vs {}",
                                exact * 0.125
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn each_output_column_weighs_the_values_in_order_and_matches_its_portable_twin() {
        for quant in QUANTS {
            for width in [32, 64, 128] {
                for written in [1, 3, 16, 17, 33, 97, 300] {
                    let cache = TestCache::new(quant, 2, width, written, 2 * width + written);
                    let kv = cache.head(quant, width, width);
                    let qs = vec![vec![0.0; width]];
                    let queries = queries(&qs, written);
                    let weights: Vec<Vec<f32>> = queries
                        .iter()
                        .map(|q| {
                            (q.base()..q.end)
                                .map(|p| ((p * 13 % 7) as f32 + 0.3) / (3.0 * q.end as f32))
                                .collect()
                        })
                        .collect();
                    let mut out = vec![f32::NAN; queries.len() * width];
                    quantized_attend(&queries, &weights, &kv, &mut out);
                    let mut twin = vec![f32::NAN; queries.len() * width];
                    attend_portable(&queries, &weights, &kv, &mut twin);
                    assert_eq!(bits(&out), bits(&twin), "{quant:?} width {width} {written}");
                    for (i, query) in queries.iter().enumerate() {
                        for c in 0..width {
                            let mut acc = 0.0f32;
                            for p in query.first..query.end {
                                let w = weights[i][p - query.base()];
                                let v = cache.values[p][width + c];
                                let block = &kv.position(p)[c / QK * quant.block_bytes()..];
                                let (d, x) = codes(quant, block);
                                assert_eq!(d * x[c % QK] as f32, v);
                                acc = (w * d).mul_add(x[c % QK] as f32, acc);
                            }
                            assert_eq!(out[i * width + c].to_bits(), acc.to_bits(), "{query:?}");
                        }
                    }
                    // The second block of columns on its own: the same bits as in the whole.
                    if width > 32 {
                        let narrow = cache.head(quant, width + 32, width - 32);
                        let mut part = vec![f32::NAN; queries.len() * (width - 32)];
                        quantized_attend(&queries, &weights, &narrow, &mut part);
                        let whole: Vec<f32> = out
                            .chunks_exact(width)
                            .flat_map(|o| o[32..].to_vec())
                            .collect();
                        assert_eq!(bits(&part), bits(&whole), "{quant:?} columns 32..");
                    }
                }
            }
        }
    }
}
