//! The two products of attention over an f16 KV cache — a query against each cached key,
//! and the weighted sum of cached values — summed in the orders llama.cpp's CPU backend
//! uses, so that our logits match its logits bit for bit.
//!
//! Keys and values arrive widened to f32 (the caller widens each once per layer, not once
//! per query head and row); the query and the attention weights are f16 values too (GGML
//! rounds them to f16; the caller rounds the query, `attend` the weights). So every product
//! is exact in f32 and the summation order alone decides the rounding. llama.cpp has two
//! orders, picked by the size of the batch:
//! - `Batched` (its tinyBLAS kernel, used when a batch has several tokens — every prompt):
//!   term i goes into accumulator i % 16, each accumulator adds its terms in order, and
//!   the 16 are summed as a halving tree (+8, +4, +2, +1).
//! - `OneToken` (`ggml_vec_dot_f16`, used for a single token — every generated one, AVX-512
//!   build): the terms before the last multiple of 64 go into 64 accumulators (term i into
//!   i % 64), summed as a halving tree (+32 … +1); the rest are added one by one in f64.
//!   For the values, the terms are the keys padded with zero weights to a multiple of 32.

use crate::dot::{dot_lanes, LANES};
use crate::isa::isa_dispatch;

/// Which of llama.cpp's summation orders to reproduce (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F16Order {
    Batched,
    OneToken,
}

impl F16Order {
    /// Accumulators of the vector part, and how many of the `terms` go through them (the
    /// rest are the f64 tail). `padded`: the terms count as padded to a multiple of 32,
    /// as the weighted values' are.
    fn vector_part(self, terms: usize, padded: bool) -> (usize, usize) {
        match self {
            F16Order::Batched => (LANES, terms),
            F16Order::OneToken => {
                let counted = if padded {
                    terms.next_multiple_of(32)
                } else {
                    terms
                };
                (SLOTS, (counted / SLOTS * SLOTS).min(terms))
            }
        }
    }
}

/// Accumulators of `ggml_vec_dot_f16`'s vector part.
const SLOTS: usize = 64;

/// Adds `src` into `dst` elementwise.
#[inline(always)]
fn add_into(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// Sums `count` accumulators of `width` values each (accumulator i at `acc[i·width..]`)
/// as a halving tree over `slots` accumulators, the missing ones being zero; the result
/// is left in the first.
#[inline(always)]
fn halving_tree(acc: &mut [f32], width: usize, slots: usize, count: usize) {
    let mut live = count;
    let mut stride = slots / 2;
    while stride > 0 {
        for i in 0..stride.min(live.saturating_sub(stride)) {
            let (low, high) = acc.split_at_mut((i + stride) * width);
            add_into(&mut low[i * width..(i + 1) * width], &high[..width]);
        }
        live = live.min(stride);
        stride /= 2;
    }
}

#[inline(always)]
fn dot_with(order: F16Order, k: &[f32], q: &[f32]) -> f32 {
    let n = k.len().min(q.len());
    let (k, q) = (&k[..n], &q[..n]);
    match order {
        F16Order::Batched => dot_lanes(k, q),
        F16Order::OneToken => {
            let (_, slotted) = order.vector_part(n, false);
            // Fixed-size arrays and strides, so that the compiler keeps all of it in
            // vector registers.
            let mut acc = [0.0f32; SLOTS];
            for (x, y) in k[..slotted]
                .chunks_exact(SLOTS)
                .zip(q[..slotted].chunks_exact(SLOTS))
            {
                let (x, y): (&[f32; SLOTS], &[f32; SLOTS]) =
                    (x.try_into().unwrap(), y.try_into().unwrap());
                for i in 0..SLOTS {
                    acc[i] += x[i] * y[i];
                }
            }
            for stride in [32, 16, 8, 4, 2, 1] {
                for i in 0..stride {
                    acc[i] += acc[i + stride];
                }
            }
            let tail = k[slotted..].iter().zip(&q[slotted..]);
            tail.fold(acc[0] as f64, |s, (x, y)| s + (x * y) as f64) as f32
        }
    }
}

#[inline(always)]
fn scores_with<'a>(
    order: F16Order,
    q: &[f32],
    keys: usize,
    key: impl Fn(usize) -> &'a [f32],
    scale: f32,
    scores: &mut Vec<f32>,
) {
    // A plain loop, not an iterator adaptor: its closure would be compiled outside the
    // caller's target features.
    scores.clear();
    for p in 0..keys {
        scores.push(dot_with(order, key(p), q) * scale);
    }
}

/// Scratch space of `attend`, kept between calls so that no call allocates.
#[derive(Default)]
pub struct AttendScratch {
    acc: Vec<f32>,
    weights: Vec<f32>,
    wide: Vec<f64>,
}

/// Columns `c..c + N` of accumulators `j..j + K` (`out` holds their `width` columns each):
/// accumulator j sums `weights[p] · value(p)` over p = j, j + slots, … below `end` (at
/// least one term), in that order, the first product stored rather than added to 0. Two
/// accumulators at once give eight independent chains of adds.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn column_sums<'a, const N: usize, const K: usize>(
    out: &mut [f32],
    width: usize,
    c: usize,
    j: usize,
    slots: usize,
    end: usize,
    weights: &[f32],
    value: &impl Fn(usize) -> &'a [f32],
) {
    let counts: [usize; K] = std::array::from_fn(|k| (end - j - k).div_ceil(slots));
    let mut sums = [[0.0f32; N]; K];
    for (k, sum) in sums.iter_mut().enumerate() {
        let (w, v) = (weights[j + k], &value(j + k)[c..c + N]);
        for i in 0..N {
            sum[i] = w * v[i];
        }
    }
    for t in 1..counts[0] {
        for (k, sum) in sums.iter_mut().enumerate() {
            if t < counts[k] {
                let p = j + k + t * slots;
                let (w, v) = (weights[p], &value(p)[c..c + N]);
                for i in 0..N {
                    // Fused: the product of two f16 values is exact, so this is the add.
                    sum[i] = w.mul_add(v[i], sum[i]);
                }
            }
        }
    }
    for (k, sum) in sums.iter().enumerate() {
        out[k * width + c..][..N].copy_from_slice(sum);
    }
}

/// `column_sums` of accumulators `j..j + K` over their columns in multiples of 16.
#[inline(always)]
fn vector_columns<'a, const K: usize>(
    out: &mut [f32],
    width: usize,
    j: usize,
    slots: usize,
    end: usize,
    weights: &[f32],
    value: &impl Fn(usize) -> &'a [f32],
) {
    let whole = width / 16 * 16;
    let mut c = 0;
    while c + 64 <= whole {
        column_sums::<64, K>(out, width, c, j, slots, end, weights, value);
        c += 64;
    }
    for c in (c..whole).step_by(16) {
        column_sums::<16, K>(out, width, c, j, slots, end, weights, value);
    }
}

#[inline(always)]
fn attend_with<'a>(
    order: F16Order,
    out: &mut [f32],
    weights: &[f32],
    value: impl Fn(usize) -> &'a [f32],
    scratch: &mut AttendScratch,
) {
    let width = out.len();
    let (slots, vector_terms) = order.vector_part(weights.len(), true);
    let rounded = &mut scratch.weights;
    rounded.clear();
    rounded.extend_from_slice(weights);
    crate::round_to_f16(rounded);
    // Accumulator j holds the terms j, j + slots, j + 2·slots, … in that order; pairs of
    // accumulators are built up to 64 columns at a time in registers, each starting from
    // its first term.
    let used = vector_terms.min(slots);
    let acc = &mut scratch.acc;
    acc.resize(used * width, 0.0);
    let whole = width / 16 * 16;
    for j in (0..used).step_by(2) {
        let out = &mut acc[j * width..];
        if j + 1 < used {
            vector_columns::<2>(out, width, j, slots, vector_terms, rounded, &value);
        } else {
            vector_columns::<1>(out, width, j, slots, vector_terms, rounded, &value);
        }
        for k in j..(j + 2).min(used) {
            for c in whole..width {
                let mut sum = rounded[k] * value(k)[c];
                for p in (k + slots..vector_terms).step_by(slots) {
                    sum += rounded[p] * value(p)[c];
                }
                acc[k * width + c] = sum;
            }
        }
    }
    halving_tree(acc, width, slots, used);
    if vector_terms == weights.len() {
        match used {
            0 => out.fill(0.0),
            _ => out.copy_from_slice(&acc[..width]),
        }
        return;
    }
    let wide = &mut scratch.wide;
    wide.clear();
    match used {
        0 => wide.resize(width, 0.0),
        _ => wide.extend(acc[..width].iter().map(|&a| a as f64)),
    }
    for (p, &w) in rounded.iter().enumerate().skip(vector_terms) {
        for (s, &x) in wide.iter_mut().zip(value(p)) {
            *s += (w * x) as f64;
        }
    }
    for (o, &s) in out.iter_mut().zip(wide.iter()) {
        *o = s as f32;
    }
}

isa_dispatch! {
    /// Σ k[i]·q[i] in `order`'s summation order: `k` a cached key (f16 values widened),
    /// `q` holding f16-representable values (the query rounded to f16).
    pub fn dot_f16(order: F16Order, k: &[f32], q: &[f32]) -> f32 => dot_with
}

isa_dispatch! {
    /// `attention_scores` for any order and width, compiled for the selected ISA.
    fn scores_any<'a>(
        order: F16Order,
        q: &[f32],
        keys: usize,
        key: impl Fn(usize) -> &'a [f32],
        scale: f32,
        scores: &mut Vec<f32>,
    ) => scores_with
}

/// One query's attention scores: `scores[p] = dot_f16(order, key(p), q) · scale` for the
/// `keys` positions (one call for all of them keeps dispatch out of the loop).
pub fn attention_scores<'a>(
    order: F16Order,
    q: &[f32],
    keys: usize,
    key: impl Fn(usize) -> &'a [f32],
    scale: f32,
    scores: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::selected_isa() == crate::Isa::Avx512
        && crate::attention_avx512::scores_avx512(order, q, keys, &key, scale, scores)
    {
        return;
    }
    scores_any(order, q, keys, key, scale, scores)
}

isa_dispatch! {
    /// One head's attention output: out = Σₚ f16(weights[p]) · value(p), `value(p)` being
    /// position p's cached values (f16 values widened). Each column equals `dot_f16` of
    /// that column of values with the f16-rounded weights.
    pub fn attend<'a>(
        order: F16Order,
        out: &mut [f32],
        weights: &[f32],
        value: impl Fn(usize) -> &'a [f32],
        scratch: &mut AttendScratch,
    ) => attend_with
}

/// `acc[i] = f16(fma(v[i], w, acc[i]))`.
fn mad_f16_portable(acc: &mut [f32], v: &[f32], w: f32) {
    for (a, &x) in acc.iter_mut().zip(v) {
        *a = crate::round_f16(x.mul_add(w, *a));
    }
}

/// The flash order's accumulator update: `acc[i] = f16(fma(v[i], w, acc[i]))`, as
/// `ggml_vec_mad_f16` computes it.
fn mad_f16(acc: &mut [f32], v: &[f32], w: f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::selected_isa() == crate::Isa::Avx512 {
        return crate::attention_avx512::mad_f16_avx512(acc, v, w);
    }
    mad_f16_portable(acc, v, w)
}

/// One query's attention in the order of llama.cpp's CPU flash attention (its
/// `one_chunk` kernel, f16 cache): positions one at a time with a running maximum, the
/// weighted values summed into an accumulator kept in f16 (each update rounded to f16),
/// the scores by `dot_f16`'s one-token order (soft-capped when `softcap` is set:
/// cap·tanh(score · (scale / cap))), the exponentials by the C library's `expf`.
/// `q` holds f16 values (the query rounded); positions `first..keys` are visible.
#[allow(clippy::too_many_arguments)]
pub fn flash_attend<'a>(
    q: &[f32],
    first: usize,
    keys: usize,
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    scale: f32,
    softcap: Option<f32>,
    out: &mut [f32],
) {
    let (mut sum, mut max) = (0.0f32, f32::NEG_INFINITY);
    let scale = softcap.map_or(scale, |cap| scale / cap);
    out.fill(0.0);
    for p in first..keys {
        let mut s = dot_f16(F16Order::OneToken, key(p), q) * scale;
        if let Some(cap) = softcap {
            s = cap * s.tanh();
        }
        let (mut ms, mut vs) = (1.0f32, 1.0f32);
        if s > max {
            ms = (max - s).exp();
            max = s;
            // `ggml_vec_scale_f16`: each value times ms, rounded to f16.
            out.iter_mut().for_each(|o| *o *= ms);
            crate::round_to_f16(out);
        } else {
            vs = (s - max).exp();
        }
        mad_f16(out, value(p), vs);
        // Fused, as GCC contracts GGML's `S = S*ms + vs`.
        sum = sum.mul_add(ms, vs);
    }
    let inverse = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for o in out.iter_mut() {
        *o *= inverse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: [F16Order; 2] = [F16Order::Batched, F16Order::OneToken];

    /// `n` f16 values, widened.
    fn f16_values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| half::f16::from_f32(((i * seed) as f32 * 0.37).sin() * 3.0).to_f32())
            .collect()
    }

    #[test]
    fn the_f16_accumulator_update_matches_its_portable_twin() {
        for n in [1, 15, 16, 100, 256] {
            let v = f16_values(n, 3);
            let mut fast = f16_values(n, 5);
            let mut slow = fast.clone();
            for w in [0.37f32, 1.0, 1e-3, 0.9999] {
                mad_f16(&mut fast, &v, w);
                mad_f16_portable(&mut slow, &v, w);
                assert!(fast
                    .iter()
                    .zip(&slow)
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }

    #[test]
    fn flash_attention_is_softmax_attention_within_f16_rounding() {
        let (dim, keys) = (64, 37);
        let k: Vec<Vec<f32>> = (0..keys).map(|p| f16_values(dim, p + 2)).collect();
        let v: Vec<Vec<f32>> = (0..keys).map(|p| f16_values(dim, p + 11)).collect();
        let q = f16_values(dim, 7);
        let scale = 0.125;
        for first in [0, 5, 36] {
            let mut out = vec![0.0; dim];
            flash_attend(&q, first, keys, |p| &k[p], |p| &v[p], scale, None, &mut out);
            // Exact softmax attention over the visible positions, in f64.
            let scores: Vec<f64> = (first..keys)
                .map(|p| {
                    k[p].iter()
                        .zip(&q)
                        .map(|(a, b)| (a * b) as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for (d, &o) in out.iter().enumerate() {
                let exact: f64 = weights
                    .iter()
                    .enumerate()
                    .map(|(i, w)| w * v[first + i][d] as f64)
                    .sum::<f64>()
                    / total;
                assert!(
                    (o as f64 - exact).abs() < 2e-2 * exact.abs().max(1.0),
                    "{o} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn dots_match_their_portable_twins_and_the_exact_sum() {
        for order in ORDERS {
            for n in [1, 15, 16, 64, 100, 128, 200] {
                let k = f16_values(n, 1);
                let q = f16_values(n, 7);
                let got = dot_f16(order, &k, &q);
                assert_eq!(got.to_bits(), dot_with(order, &k, &q).to_bits());
                let exact: f64 = k.iter().zip(&q).map(|(a, b)| *a as f64 * *b as f64).sum();
                assert!(
                    (got as f64 - exact).abs() < 1e-4 * exact.abs().max(1.0),
                    "{order:?} n={n}"
                );
            }
        }
    }

    #[test]
    fn scores_match_their_portable_twin() {
        for width in [16, 40, 64, 128, 256] {
            let q = f16_values(width, 5);
            for keys in [1, 15, 16, 17, 33, 100] {
                let k: Vec<Vec<f32>> = (0..keys).map(|p| f16_values(width, p + 2)).collect();
                for order in ORDERS {
                    let (mut got, mut want) = (Vec::new(), Vec::new());
                    attention_scores(order, &q, keys, |p| &k[p], 0.125, &mut got);
                    scores_with(order, &q, keys, |p| &k[p], 0.125, &mut want);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{order:?} width {width} keys {keys}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_two_orders_are_the_documented_ones() {
        // 200 terms of which a few dominate, so that the order shows in the last bits.
        let n = 200;
        let k = f16_values(n, 3);
        let q: Vec<f32> = (0..n)
            .map(|i| if i % 37 == 0 { 1024.0 } else { 819.0 / 8192.0 })
            .collect();
        let terms: Vec<f32> = k.iter().zip(&q).map(|(a, b)| a * b).collect();

        let mut lanes = [0.0f32; 16];
        for (i, t) in terms.iter().enumerate() {
            lanes[i % 16] += t;
        }
        assert_eq!(
            dot_f16(F16Order::Batched, &k, &q),
            crate::dot::tree_sum(lanes)
        );

        let mut slots = [0.0f32; 64];
        for (i, t) in terms[..192].iter().enumerate() {
            slots[i % 64] += t;
        }
        for stride in [32, 16, 8, 4, 2, 1] {
            for i in 0..stride {
                slots[i] += slots[i + stride];
            }
        }
        let tail: f64 = terms[192..]
            .iter()
            .fold(slots[0] as f64, |s, &t| s + t as f64);
        assert_eq!(dot_f16(F16Order::OneToken, &k, &q), tail as f32);
    }

    #[test]
    fn each_output_column_is_the_dot_of_that_column_of_values() {
        for order in ORDERS {
            let mut scratch = AttendScratch::default();
            for width in [5, 16, 37, 64] {
                for positions in [1, 3, 16, 17, 32, 33, 64, 65, 96, 97, 130, 300] {
                    let values: Vec<Vec<f32>> =
                        (0..positions).map(|p| f16_values(width, p + 3)).collect();
                    let weights: Vec<f32> = (0..positions)
                        .map(|p| ((p * 13 % 7) as f32 + 0.3) / (3.0 * positions as f32))
                        .collect();
                    let mut out = vec![f32::NAN; width];
                    attend(order, &mut out, &weights, |p| &values[p], &mut scratch);
                    let mut twin = vec![f32::NAN; width];
                    attend_with(order, &mut twin, &weights, |p| &values[p], &mut scratch);
                    assert_eq!(out, twin, "{order:?}, {positions} positions");

                    // The values' order pads the keys with zero weights to a multiple of 32.
                    let padded = match order {
                        F16Order::Batched => positions,
                        F16Order::OneToken => positions.next_multiple_of(32),
                    };
                    let rounded: Vec<f32> = (0..padded)
                        .map(|p| {
                            weights
                                .get(p)
                                .map_or(0.0, |&w| half::f16::from_f32(w).to_f32())
                        })
                        .collect();
                    for (d, &o) in out.iter().enumerate() {
                        let column: Vec<f32> = (0..padded)
                            .map(|p| values.get(p).map_or(0.0, |v| v[d]))
                            .collect();
                        let want = dot_f16(order, &column, &rounded);
                        assert_eq!(
                            o.to_bits(),
                            want.to_bits(),
                            "{order:?}, {positions} positions, width {width}, column {d}"
                        );
                    }
                }
            }
        }
    }
}
