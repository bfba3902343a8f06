//! AVX-512 attention scores in llama.cpp's batched order, sixteen keys at a time: each
//! key's 16 accumulators fill one register, and the sixteen halving trees (+8, +4, +2, +1)
//! run side by side as shuffles and adds across registers, so a tree costs one add per key
//! instead of four adds and four shuffles. Every add is the portable order's add, with the
//! same operands, so the scores equal `attention::scores_with`'s bit for bit.

use core::arch::x86_64::*;

/// `scores[p] = Σ key(p)[i]·q[i] · scale` for `p < keys`, or false (and nothing done)
/// when `q`'s length is not a multiple of 16 between 16 and 128.
pub fn scores_batched_avx512<'a>(
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
        match q.len() {
            16 => scores_chunks::<1>(q, keys, key, scale, scores),
            32 => scores_chunks::<2>(q, keys, key, scale, scores),
            48 => scores_chunks::<3>(q, keys, key, scale, scores),
            64 => scores_chunks::<4>(q, keys, key, scale, scores),
            80 => scores_chunks::<5>(q, keys, key, scale, scores),
            96 => scores_chunks::<6>(q, keys, key, scale, scores),
            112 => scores_chunks::<7>(q, keys, key, scale, scores),
            128 => scores_chunks::<8>(q, keys, key, scale, scores),
            _ => return false,
        }
    }
    true
}

/// `scores_batched_avx512` for `q.len() == 16 · C`: the query stays in registers and the
/// sixteen keys' products are written out in full, so their chains of C fused
/// multiply-adds overlap.
#[target_feature(enable = "avx512f")]
unsafe fn scores_chunks<'a, const C: usize>(
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
            let mut acc = _mm512_setzero_ps();
            for (c, &y) in query.iter().enumerate() {
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(rows[j].add(16 * c)), y, acc);
            }
            acc
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
