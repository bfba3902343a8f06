//! The AVX-512 VNNI kernels over K-quant weights in the packed layout (`packed`): sixteen
//! Q4_K or Q5_K rows (one packed group) against N tokens (Q3_K and Q6_K, whose
//! sub-blocks are sixteen values without a min, are in `kernels_packed_k16`), one row per 32-bit lane
//! of a 512-bit register — `kernels_packed_k_avx2` takes the same groups as two halves
//! of eight. A register of codes holds four consecutive codes of every row, so one
//! `vpdpbusd` with four broadcast activation bytes adds four products to each row's
//! sub-block sum in i32: per register of codes, the AVX2 kernel's `vpmaddubsw` and i16
//! add become one `vpdpbusd`, and its `vpmaddwd` by the scale one `vpmulld` per
//! sub-block.
//!
//! Each (row, token) result follows the row-major kernels' order (`kernels_k`): Q4_K
//! `MinSums` (a super-block's Σ scale·q·a and Σ min·a are exact integers, each added to
//! its own accumulator with one fused multiply-add by d_w·d_a and dmin_w·d_a), Q5_K
//! `TiledSums` (the same integers as `(sum · d_w − dmin_w · min_sum) · d_a`, added to one
//! accumulator). So the results equal theirs bit for bit.

use crate::kernels::TokenGroup;
use crate::kernels_k::Q8K_BLOCK;
use crate::kernels_packed_k_avx2::{pick, prefetch_part};
use core::arch::x86_64::*;

/// Sixteen Q4_K rows (`Q5` false: groups of d[16] · dmin[16] (f16) · scales[3][16][4] ·
/// qs[32][16][4]) or Q5_K rows (`Q5`: qh[8][16][4] before the qs) · N tokens: `out[n][i]`
/// is row i · token n.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_q4_k_packed<const Q5: bool, const N: usize>(
    w: &[u8],
    g: &TokenGroup<N>,
) -> [[f32; 16]; N] {
    let (group, qs_at) = if Q5 { (16 * 176, 768) } else { (16 * 144, 256) };
    let low4 = _mm512_set1_epi8(0x0f);
    let mut acc = [_mm512_setzero_ps(); N];
    let mut acc_min = [_mm512_setzero_ps(); N];
    for b in 0..w.len() / group {
        let p = w.as_ptr().add(b * group);
        let words: [__m512i; 3] =
            std::array::from_fn(|i| _mm512_loadu_si512(p.add(64 + 64 * i) as *const _));
        let (scales, mins) = scales_mins(words);
        let xs: [*const u8; N] = std::array::from_fn(|n| g.rows[n].as_ptr().add(b * Q8K_BLOCK));
        let mut sums = [_mm512_setzero_si512(); N];
        for (j, scale) in scales.iter().enumerate() {
            // Into the L2, not the L1: the first-level cache keeps the codes and
            // activations being multiplied (8,192 bytes ahead in the L1: tg32 of a
            // Q4_K_M file 10 % slower).
            prefetch_part::<_MM_HINT_T1>(p, group, j, 8);
            // Sub-blocks 2i and 2i + 1 are the low and high nibbles of the same bytes;
            // register k holds codes 4k..4k+4 of each row, and Q5_K's qh register k
            // their fifth bits, bit j for sub-block j.
            let codes: [__m512i; 8] = std::array::from_fn(|k| {
                let raw = _mm512_loadu_si512(p.add(qs_at + 64 * (8 * (j / 2) + k)) as *const _);
                let raw = if j % 2 == 0 {
                    raw
                } else {
                    _mm512_srli_epi16::<4>(raw)
                };
                let low = _mm512_and_si512(raw, low4);
                if Q5 {
                    let qh = _mm512_loadu_si512(p.add(256 + 64 * k) as *const _);
                    let fifth = _mm512_test_epi8_mask(qh, _mm512_set1_epi8(1 << j));
                    _mm512_mask_add_epi8(low, fifth, low, _mm512_set1_epi8(16))
                } else {
                    low
                }
            });
            for (sum, x) in sums.iter_mut().zip(&xs) {
                let sub_block = dot_codes(&codes, x.add(4 + 32 * j));
                *sum = _mm512_add_epi32(*sum, _mm512_mullo_epi32(sub_block, *scale));
            }
        }
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32) as *const __m256i));
        let pair_sums = g.sums.get_unchecked(4 * b * N..4 * (b + 1) * N);
        for n in 0..N {
            let min_sum = pair_products(&mins, pair_sums.as_ptr().add(4 * n));
            let da = _mm512_set1_ps(*g.d.get_unchecked(b * N + n));
            let (sum, min_sum) = (_mm512_cvtepi32_ps(sums[n]), _mm512_cvtepi32_ps(min_sum));
            if Q5 {
                let block = _mm512_fnmadd_ps(dmin, min_sum, _mm512_mul_ps(sum, dw));
                acc[n] = _mm512_add_ps(acc[n], _mm512_mul_ps(block, da));
            } else {
                acc[n] = _mm512_fmadd_ps(sum, _mm512_mul_ps(dw, da), acc[n]);
                acc_min[n] = _mm512_fmadd_ps(min_sum, _mm512_mul_ps(dmin, da), acc_min[n]);
            }
        }
    }
    let mut out = [[0.0f32; 16]; N];
    for (o, (acc, acc_min)) in out.iter_mut().zip(acc.into_iter().zip(acc_min)) {
        _mm512_storeu_ps(o.as_mut_ptr(), _mm512_sub_ps(acc, acc_min));
    }
    out
}

/// Σ over a sub-block's eight registers of codes (four codes of each row) of their
/// products with the activation bytes from `x` (four per register, broadcast), in i32
/// lanes: two chains of four, so that the dot products do not all wait on each other.
#[inline(always)]
pub(crate) unsafe fn dot_codes(codes: &[__m512i; 8], x: *const u8) -> __m512i {
    let x = x as *const i32;
    let mut even = _mm512_setzero_si512();
    let mut odd = _mm512_setzero_si512();
    for k in (0..8).step_by(2) {
        let (x0, x1) = (x.add(k).read_unaligned(), x.add(k + 1).read_unaligned());
        even = _mm512_dpbusd_epi32(even, codes[k], _mm512_set1_epi32(x0));
        odd = _mm512_dpbusd_epi32(odd, codes[k + 1], _mm512_set1_epi32(x1));
    }
    _mm512_add_epi32(even, odd)
}

/// The sixteen rows' 6-bit scales and mins from the three words of their `scales[12]`
/// (word w of every row in one register): sub-block j's scale in each lane as an i32;
/// for sub-blocks 2e and 2e + 1, their two mins as an i16 pair (to `vpmaddwd` the
/// activation sums of the pair).
#[inline(always)]
unsafe fn scales_mins(w: [__m512i; 3]) -> ([__m512i; 8], [__m512i; 4]) {
    let low6 = _mm512_set1_epi8(0x3f);
    let low4 = _mm512_set1_epi8(0x0f);
    // Bits 6 and 7 of each byte, moved to bits 4 and 5.
    let top_bits = |w: __m512i| {
        _mm512_slli_epi32::<4>(_mm512_and_si512(
            _mm512_srli_epi32::<6>(w),
            _mm512_set1_epi8(0x03),
        ))
    };
    // Bytes 0..4 of each lane: scales (mins) 0..4, then 4..8.
    let scales = [
        _mm512_and_si512(w[0], low6),
        _mm512_or_si512(_mm512_and_si512(w[2], low4), top_bits(w[0])),
    ];
    let mins = [
        _mm512_and_si512(w[1], low6),
        _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi32::<4>(w[2]), low4),
            top_bits(w[1]),
        ),
    ];
    let byte = _mm512_set1_epi32(0xff);
    let scales = std::array::from_fn(|j| {
        let shift = _mm_cvtsi32_si128(8 * (j % 4) as i32);
        _mm512_and_si512(_mm512_srl_epi32(scales[j / 4], shift), byte)
    });
    let mins = std::array::from_fn(|e| {
        let a = 2 * (e % 2) as i32;
        // `pick`'s mask is the same in every 128-bit lane.
        let mask = _mm512_broadcast_i32x4(_mm256_castsi256_si128(pick(a, a + 1)));
        _mm512_shuffle_epi8(mins[e / 2], mask)
    });
    (scales, mins)
}

/// Σ_e pairs[e] · sums[e], lane by lane: register e holds each row's two i16 factors of
/// two sub-blocks, `sums` one token's activation sums of the same two (an i32 of two
/// i16 per e).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn pair_products<const E: usize>(
    pairs: &[__m512i; E],
    sums: *const i32,
) -> __m512i {
    let mut total = _mm512_setzero_si512();
    for (e, m) in pairs.iter().enumerate() {
        let s = _mm512_set1_epi32(sums.add(e).read_unaligned());
        total = _mm512_add_epi32(total, _mm512_madd_epi16(*m, s));
    }
    total
}
