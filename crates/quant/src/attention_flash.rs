//! llama.cpp's CPU flash attention (its `one_chunk` kernel, f16 cache), followed step by
//! step: positions one at a time with a running maximum, the weighted values summed into
//! an accumulator kept in f16.

use crate::attention::{dot_f16, F16Order, KvHead, Query};

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
    match crate::selected_isa() {
        crate::Isa::Avx512 => return crate::attention_avx512::mad_f16_avx512(acc, v, w),
        crate::Isa::Avx2 => return crate::attention_avx2::mad_f16_avx2(acc, v, w),
        crate::Isa::Scalar => {}
    }
    mad_f16_portable(acc, v, w)
}

/// One query's attention in the order of llama.cpp's CPU flash attention: positions
/// `first..end` one at a time with a running maximum, the weighted values summed into an
/// accumulator kept in f16 (each update rounded to f16), the scores by `dot_f16`'s
/// one-token order (soft-capped when `softcap` is set: cap·tanh(score · (scale / cap))),
/// the exponentials by the C library's `expf`. (`query.order` is not consulted: this
/// algorithm has one order.)
pub fn flash_attend(query: &Query, kv: &KvHead, scale: f32, softcap: Option<f32>, out: &mut [f32]) {
    let (mut sum, mut max) = (0.0f32, f32::NEG_INFINITY);
    let scale = softcap.map_or(scale, |cap| scale / cap);
    let (mut key, mut value) = (vec![0.0; kv.head_dim], vec![0.0; kv.head_dim]);
    out.fill(0.0);
    for p in query.first..query.end {
        kv.widen_key(p, &mut key);
        let mut s = dot_f16(F16Order::OneToken, &key, query.q) * scale;
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
        for (c, v) in value.iter_mut().enumerate() {
            *v = kv.value(p, c);
        }
        mad_f16(out, &value, vs);
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
    use crate::attention::tests::{f16_values, TestCache};

    #[test]
    fn the_f16_accumulator_update_matches_its_portable_twin() {
        for n in [1, 15, 16, 100, 256] {
            let v = f16_values(n, 3);
            let mut fast = f16_values(n, 5);
            let mut slow = fast.clone();
            for w in [0.37f32, 1.0, 1e-3, 0.9999] {
                let start = fast.clone();
                mad_f16(&mut fast, &v, w);
                mad_f16_portable(&mut slow, &v, w);
                let same =
                    |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same(&fast, &slow));
                #[cfg(target_arch = "x86_64")]
                if crate::Isa::Avx2.is_available() {
                    let mut direct = start;
                    crate::attention_avx2::mad_f16_avx2(&mut direct, &v, w);
                    assert!(same(&direct, &slow), "AVX2, n = {n}");
                }
            }
        }
    }

    #[test]
    fn flash_attention_is_softmax_attention_within_f16_rounding() {
        let (width, keys) = (64, 37);
        let cache = TestCache::new(1, width, keys, 2);
        let kv = cache.head(0);
        let q = f16_values(width, 7);
        let scale = 0.125;
        let mut key = vec![0.0; width];
        for first in [0, 5, 36] {
            let query = Query {
                q: &q,
                first,
                end: keys,
                order: F16Order::OneToken,
            };
            let mut out = vec![0.0; width];
            flash_attend(&query, &kv, scale, None, &mut out);
            // Exact softmax attention over the visible positions, in f64.
            let scores: Vec<f64> = (first..keys)
                .map(|p| {
                    kv.widen_key(p, &mut key);
                    key.iter().zip(&q).map(|(a, b)| (a * b) as f64).sum::<f64>() * scale as f64
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for (d, &o) in out.iter().enumerate() {
                let exact: f64 = weights
                    .iter()
                    .enumerate()
                    .map(|(i, w)| w * kv.value(first + i, d) as f64)
                    .sum::<f64>()
                    / total;
                assert!(
                    (o as f64 - exact).abs() < 2e-2 * exact.abs().max(1.0),
                    "{o} vs {exact}"
                );
            }
        }
    }
}
