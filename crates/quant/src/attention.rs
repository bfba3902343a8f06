//! The two f16 products of attention over an f16 KV cache — a query against each cached
//! key, and the weighted sum of cached values — summed in the orders llama.cpp's CPU
//! backend uses, so that our logits match its logits bit for bit.
//!
//! Both operands are f16 values (the query and the attention weights are rounded to f16,
//! as GGML rounds them), so every product is exact in f32 and the summation order alone
//! decides the rounding. llama.cpp has two orders, picked by the size of the batch:
//! - `Batched` (its tinyBLAS kernel, used when a batch has several tokens — every prompt):
//!   term i goes into accumulator i % 16, each accumulator adds its terms in order, and
//!   the 16 are summed as a halving tree (+8, +4, +2, +1).
//! - `OneToken` (`ggml_vec_dot_f16`, used for a single token — every generated one, AVX-512
//!   build): the terms before the last multiple of 64 go into 64 accumulators (term i into
//!   i % 64), summed as a halving tree (+32 … +1); the rest are added one by one in f64.
//!   For the values, the terms are the keys padded with zero weights to a multiple of 32.

use crate::dot::{tree_sum, LANES};
use crate::f16_bits_to_f32;
use crate::isa::isa_dispatch;

/// Which of llama.cpp's summation orders to reproduce (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F16Order {
    Batched,
    OneToken,
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

/// Exact widening of 16 f16 values (bits) to f32.
trait Widen {
    fn widen16(src: &[u16]) -> [f32; 16];
}

/// By bit manipulation: any CPU.
struct Bits;
impl Widen for Bits {
    #[inline(always)]
    fn widen16(src: &[u16]) -> [f32; 16] {
        std::array::from_fn(|i| f16_bits_to_f32(src[i]))
    }
}

/// By the F16C instruction: only inside code compiled with F16C (`isa_dispatch`'s x86
/// copies).
#[cfg(target_arch = "x86_64")]
struct F16c;
#[cfg(target_arch = "x86_64")]
impl Widen for F16c {
    #[inline(always)]
    fn widen16(src: &[u16]) -> [f32; 16] {
        use core::arch::x86_64::*;
        assert!(src.len() >= 16);
        // SAFETY: 16 values are readable (asserted); F16C is enabled where this inlines.
        unsafe {
            let p = src.as_ptr() as *const __m128i;
            let halves = [
                _mm256_cvtph_ps(_mm_loadu_si128(p)),
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(1))),
            ];
            std::mem::transmute::<[__m256; 2], [f32; 16]>(halves)
        }
    }
}

/// Adds term i of k·q into accumulator i % N for the first `n / N · N` terms, in order.
#[inline(always)]
fn accumulate<W: Widen, const N: usize>(k: &[u16], q: &[f32]) -> [f32; N] {
    let mut acc = [0.0f32; N];
    for (x, y) in k.chunks_exact(N).zip(q.chunks_exact(N)) {
        for j in (0..N).step_by(16) {
            let x = W::widen16(&x[j..]);
            for i in 0..16 {
                acc[j + i] += x[i] * y[j + i];
            }
        }
    }
    acc
}

#[inline(always)]
fn dot_f16_with<W: Widen>(order: F16Order, k: &[u16], q: &[f32]) -> f32 {
    let n = k.len().min(q.len());
    let (k, q) = (&k[..n], &q[..n]);
    match order {
        F16Order::Batched => {
            let mut acc = accumulate::<W, LANES>(k, q);
            let whole = n / LANES * LANES;
            for (i, (x, y)) in k[whole..].iter().zip(&q[whole..]).enumerate() {
                acc[i] += f16_bits_to_f32(*x) * y;
            }
            tree_sum(acc)
        }
        F16Order::OneToken => {
            let mut acc = accumulate::<W, SLOTS>(k, q);
            let slotted = n / SLOTS * SLOTS;
            halving_tree(&mut acc, 1, SLOTS, slotted.min(SLOTS));
            let mut sum = acc[0] as f64;
            for (x, y) in k[slotted..].iter().zip(&q[slotted..]) {
                sum += (f16_bits_to_f32(*x) * y) as f64;
            }
            sum as f32
        }
    }
}

#[inline(always)]
fn scores_with<'a, W: Widen>(
    order: F16Order,
    q: &[f32],
    keys: usize,
    key: impl Fn(usize) -> &'a [u16],
    scale: f32,
    scores: &mut Vec<f32>,
) {
    // A plain loop, not an iterator adaptor: its closure would be compiled outside the
    // caller's target features, and F16C would not inline into it.
    scores.clear();
    for p in 0..keys {
        scores.push(dot_f16_with::<W>(order, key(p), q) * scale);
    }
}

/// Scratch space of `attend_f16`, kept between calls so that no call allocates.
#[derive(Default)]
pub struct AttendScratch {
    acc: Vec<f32>,
    wide: Vec<f64>,
}

#[inline(always)]
fn attend_f16_with<'a, W: Widen>(
    order: F16Order,
    out: &mut [f32],
    weights: &[f32],
    value: impl Fn(usize) -> &'a [u16],
    scratch: &mut AttendScratch,
) {
    let width = out.len();
    let (slots, vector_terms) = match order {
        F16Order::Batched => (LANES, weights.len()),
        F16Order::OneToken => {
            let padded = weights.len().next_multiple_of(32);
            (SLOTS, (padded / SLOTS * SLOTS).min(weights.len()))
        }
    };
    // Accumulator p % slots; the first term of each is stored rather than added, so the
    // accumulators never need clearing.
    let used = vector_terms.min(slots);
    let acc = &mut scratch.acc;
    acc.resize(used * width, 0.0);
    for (p, &w) in weights[..vector_terms].iter().enumerate() {
        let w = half::f16::from_f32(w).to_f32();
        let lane = &mut acc[p % slots * width..][..width];
        let v = value(p);
        // Widened 16 at a time in registers: a round trip through memory would stall
        // on store forwarding.
        let whole = width / 16 * 16;
        for j in (0..whole).step_by(16) {
            let x = W::widen16(&v[j..]);
            let a = &mut lane[j..j + 16];
            if p < slots {
                for i in 0..16 {
                    a[i] = w * x[i];
                }
            } else {
                for i in 0..16 {
                    a[i] += w * x[i];
                }
            }
        }
        for j in whole..width {
            let x = f16_bits_to_f32(v[j]);
            lane[j] = if p < slots { w * x } else { lane[j] + w * x };
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
    for (p, &w) in weights.iter().enumerate().skip(vector_terms) {
        let w = half::f16::from_f32(w).to_f32();
        for (s, &x) in wide.iter_mut().zip(value(p)) {
            *s += (w * f16_bits_to_f32(x)) as f64;
        }
    }
    for (o, &s) in out.iter_mut().zip(wide.iter()) {
        *o = s as f32;
    }
}

isa_dispatch! {
    /// Σ k[i]·q[i]: `k` in f16 bits (a cached key), `q` holding f16-representable values
    /// (the query rounded to f16).
    pub fn dot_f16(order: F16Order, k: &[u16], q: &[f32]) -> f32 => dot_f16_with::<Bits>, x86: dot_f16_with::<F16c>
}

isa_dispatch! {
    /// One query's attention scores: `scores[p] = dot_f16(order, key(p), q) · scale` for
    /// the `keys` positions (one call for all of them keeps dispatch out of the loop).
    pub fn attention_scores<'a>(
        order: F16Order,
        q: &[f32],
        keys: usize,
        key: impl Fn(usize) -> &'a [u16],
        scale: f32,
        scores: &mut Vec<f32>,
    ) => scores_with::<Bits>, x86: scores_with::<F16c>
}

isa_dispatch! {
    /// One head's attention output: out = Σₚ f16(weights[p]) · value(p), `value(p)` being
    /// position p's cached values in f16 bits. Each column equals `dot_f16` of that column
    /// of values with the f16-rounded weights.
    pub fn attend_f16<'a>(
        order: F16Order,
        out: &mut [f32],
        weights: &[f32],
        value: impl Fn(usize) -> &'a [u16],
        scratch: &mut AttendScratch,
    ) => attend_f16_with::<Bits>, x86: attend_f16_with::<F16c>
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: [F16Order; 2] = [F16Order::Batched, F16Order::OneToken];

    fn f16_values(n: usize, seed: usize) -> Vec<u16> {
        (0..n)
            .map(|i| half::f16::from_f32(((i * seed) as f32 * 0.37).sin() * 3.0).to_bits())
            .collect()
    }

    fn widened(bits: &[u16]) -> Vec<f32> {
        bits.iter().map(|&b| f16_bits_to_f32(b)).collect()
    }

    #[test]
    fn dots_match_their_portable_twins_and_the_exact_sum() {
        for order in ORDERS {
            for n in [1, 15, 16, 64, 100, 128, 200] {
                let k = f16_values(n, 1);
                let q = widened(&f16_values(n, 7));
                let got = dot_f16(order, &k, &q);
                assert_eq!(got.to_bits(), dot_f16_with::<Bits>(order, &k, &q).to_bits());
                let exact: f64 = widened(&k)
                    .iter()
                    .zip(&q)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum();
                assert!(
                    (got as f64 - exact).abs() < 1e-4 * exact.abs().max(1.0),
                    "{order:?} n={n}"
                );
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
        let terms: Vec<f32> = widened(&k).iter().zip(&q).map(|(a, b)| a * b).collect();

        let mut lanes = [0.0f32; 16];
        for (i, t) in terms.iter().enumerate() {
            lanes[i % 16] += t;
        }
        assert_eq!(dot_f16(F16Order::Batched, &k, &q), tree_sum(lanes));

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
        let width = 5;
        for order in ORDERS {
            let mut scratch = AttendScratch::default();
            for positions in [1, 3, 16, 17, 32, 33, 64, 65, 96, 97, 130, 300] {
                let values: Vec<Vec<u16>> =
                    (0..positions).map(|p| f16_values(width, p + 3)).collect();
                let weights: Vec<f32> = (0..positions)
                    .map(|p| ((p * 13 % 7) as f32 + 0.3) / (3.0 * positions as f32))
                    .collect();
                let mut out = vec![f32::NAN; width];
                attend_f16(order, &mut out, &weights, |p| &values[p], &mut scratch);
                let mut twin = vec![f32::NAN; width];
                attend_f16_with::<Bits>(order, &mut twin, &weights, |p| &values[p], &mut scratch);
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
                    let column: Vec<u16> = (0..padded)
                        .map(|p| values.get(p).map_or(0, |v| v[d]))
                        .collect();
                    let want = dot_f16(order, &column, &rounded);
                    assert_eq!(
                        o.to_bits(),
                        want.to_bits(),
                        "{order:?}, {positions} positions, column {d}"
                    );
                }
            }
        }
    }
}
