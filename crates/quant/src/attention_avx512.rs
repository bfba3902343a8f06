//! AVX-512 attention scores in llama.cpp's orders, sixteen keys at a time: each key's 16
//! accumulators fill one register (the one-token order's 64 are first added down to 16,
//! +32 then +16), and the sixteen halving trees (+8, +4, +2, +1) run side by side as
//! shuffles and adds across registers, so a tree costs one add per key instead of four
//! adds and four shuffles. Every operation is the portable order's, with the same
//! operands, so the scores equal `attention::scores_with`'s bit for bit.

use crate::attention::F16Order;

use core::arch::x86_64::*;

/// `scores[p] = dot_f16(order, key(p), q) · scale` for `p < keys`, or false (and nothing
/// done) for a query length this kernel does not cover: the batched order takes multiples
/// of 16 up to 128 and 256, the one-token order 64, 128 and 256 (no f64 tail).
pub fn scores_avx512<'a>(
    order: F16Order,
    q: &[f32],
    keys: usize,
    key: impl Fn(usize) -> &'a [f32],
    scale: f32,
    scores: &mut Vec<f32>,
) -> bool {
    assert!(
        std::is_x86_feature_detected!("avx512f"),
        "AVX-512 kernel called without AVX-512"
    );
    // SAFETY: AVX-512F is available (asserted above).
    unsafe {
        match (order, q.len()) {
            (F16Order::Batched, 16) => scores_chunks::<1, false>(q, keys, key, scale, scores),
            (F16Order::Batched, 32) => scores_chunks::<2, false>(q, keys, key, scale, scores),
            (F16Order::Batched, 48) => scores_chunks::<3, false>(q, keys, key, scale, scores),
            (F16Order::Batched, 64) => scores_chunks::<4, false>(q, keys, key, scale, scores),
            (F16Order::Batched, 80) => scores_chunks::<5, false>(q, keys, key, scale, scores),
            (F16Order::Batched, 96) => scores_chunks::<6, false>(q, keys, key, scale, scores),
            (F16Order::Batched, 112) => scores_chunks::<7, false>(q, keys, key, scale, scores),
            (F16Order::Batched, 128) => scores_chunks::<8, false>(q, keys, key, scale, scores),
            (F16Order::Batched, 256) => scores_chunks::<16, false>(q, keys, key, scale, scores),
            (F16Order::OneToken, 64) => scores_chunks::<4, true>(q, keys, key, scale, scores),
            (F16Order::OneToken, 128) => scores_chunks::<8, true>(q, keys, key, scale, scores),
            (F16Order::OneToken, 256) => scores_chunks::<16, true>(q, keys, key, scale, scores),
            _ => return false,
        }
    }
    true
}

/// `scores_avx512` for `q.len() == 16 · C`: the query stays in registers and the sixteen
/// keys' products are written out in full, so their chains of fused multiply-adds
/// overlap. `ONE_TOKEN`: chunk c goes to slot group c % 4 (of the 64 accumulators).
#[target_feature(enable = "avx512f")]
unsafe fn scores_chunks<'a, const C: usize, const ONE_TOKEN: bool>(
    q: &[f32],
    keys: usize,
    key: impl Fn(usize) -> &'a [f32],
    scale: f32,
    scores: &mut Vec<f32>,
) {
    let query: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(q.as_ptr().add(16 * c)));
    scores.clear();
    scores.reserve(keys.next_multiple_of(16));
    let scale = _mm512_set1_ps(scale);
    for p0 in (0..keys).step_by(16) {
        let count = (keys - p0).min(16);
        // Past the last key, the last key again (computed, then not stored).
        let rows: [*const f32; 16] = std::array::from_fn(|j| {
            let k = key(p0 + j.min(count - 1));
            assert!(k.len() >= 16 * C, "a key shorter than the query");
            k.as_ptr()
        });
        let lanes: [__m512; 16] = std::array::from_fn(|j| {
            let mut acc = [_mm512_setzero_ps(); 4];
            for (c, &y) in query.iter().enumerate() {
                let slot = if ONE_TOKEN { c % 4 } else { 0 };
                acc[slot] = _mm512_fmadd_ps(_mm512_loadu_ps(rows[j].add(16 * c)), y, acc[slot]);
            }
            if ONE_TOKEN {
                let (low, high) = (_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]));
                _mm512_add_ps(low, high)
            } else {
                acc[0]
            }
        });
        let sums = _mm512_mul_ps(tree_sums(&lanes), scale);
        _mm512_mask_storeu_ps(
            scores.as_mut_ptr().add(p0),
            ((1u32 << count) - 1) as u16,
            sums,
        );
        scores.set_len(p0 + count);
    }
}
/// Lane j of the result is `dot::tree_sum` of register j.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tree_sums(v: &[__m512; 16]) -> __m512 {
    // +8: keys 2m and 2m+1, eight sums each, share a register.
    let halves: [__m512; 8] = std::array::from_fn(|m| {
        let (a, b) = (v[2 * m], v[2 * m + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        )
    });
    // +4: keys 4m .. 4m+3, four sums each.
    let quarters: [__m512; 4] = std::array::from_fn(|m| {
        let (a, b) = (halves[2 * m], halves[2 * m + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        )
    });
    // +2: 128-bit lane l holds keys l, 4+l (first register) or 8+l, 12+l (second).
    let pairs: [__m512; 2] = std::array::from_fn(|m| {
        let (a, b) = (quarters[2 * m], quarters[2 * m + 1]);
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xEE>(a, b),
        )
    });
    // +1: lane 4l + m holds key l + 4m.
    let (a, b) = (pairs[0], pairs[1]);
    let sums = _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(a, b),
        _mm512_shuffle_ps::<0xDD>(a, b),
    );
    let key_order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    _mm512_permutexvar_ps(key_order, sums)
}

/// `acc[i] = f16(fma(v[i], w, acc[i]))`: the flash order's f16 accumulator update, sixteen
/// values at a time (F16C conversions round to nearest even, as GGML's do).
pub fn mad_f16_avx512(acc: &mut [f32], v: &[f32], w: f32) {
    assert!(
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("f16c"),
        "AVX-512 kernel called without AVX-512"
    );
    // SAFETY: AVX-512F and F16C are available (asserted above).
    unsafe { mad_f16(acc, v, w) }
}

#[target_feature(enable = "avx512f,f16c")]
unsafe fn mad_f16(acc: &mut [f32], v: &[f32], w: f32) {
    let n = acc.len().min(v.len());
    let whole = n / 16 * 16;
    let weight = _mm512_set1_ps(w);
    for i in (0..whole).step_by(16) {
        let a = _mm512_loadu_ps(acc.as_ptr().add(i));
        let x = _mm512_loadu_ps(v.as_ptr().add(i));
        let sum = _mm512_fmadd_ps(x, weight, a);
        let rounded = _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(sum));
        _mm512_storeu_ps(acc.as_mut_ptr().add(i), rounded);
    }
    for i in whole..n {
        acc[i] = crate::round_f16(v[i].mul_add(w, acc[i]));
    }
}
