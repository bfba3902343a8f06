//! The AVX-512 VNNI kernels over K-quant weights in the packed layout (`packed`): sixteen
//! Q4_K, Q5_K or Q6_K rows (one packed group) against N tokens, one row per 32-bit lane
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
//! accumulator), Q6_K either by the tokens' `TokenOrder` (`TiledSums` without a min, or
//! `LaneSums`). So the results equal theirs bit for bit.

use crate::kernels::TokenGroup;
use crate::kernels_k::{q8k_d, Q8K_BLOCK};
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
unsafe fn dot_codes(codes: &[__m512i; 8], x: *const u8) -> __m512i {
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

/// Bytes of one packed Q6_K group: d[16] (f16) · scales[4][16][4] · ql[32][16][4] ·
/// qh[16][16][4].
const Q6_K_GROUP: usize = 16 * 210;

/// Sixteen Q6_K rows (one packed group) · N tokens in `TiledSums`' order (a prompt's
/// tokens, `TokenOrder::Batched`): `out[n][i]` is row i · token n. The codes are
/// multiplied unsigned (0..64); the 32 they are offset by comes off each block's sum as
/// 32 · Σ scale·(activation sum of 16), from the sums that Q8_K stores.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_q6_k_tiled<const N: usize>(w: &[u8], g: &TokenGroup<N>) -> [[f32; 16]; N] {
    let mut acc = [_mm512_setzero_ps(); N];
    for b in 0..w.len() / Q6_K_GROUP {
        let p = w.as_ptr().add(b * Q6_K_GROUP);
        let scales = q6_k_scales(p);
        let xs: [*const u8; N] = std::array::from_fn(|n| g.rows[n].as_ptr().add(b * Q8K_BLOCK));
        let mut sums = [_mm512_setzero_si512(); N];
        for (j, scale) in scales.iter().enumerate() {
            prefetch_part::<_MM_HINT_T1>(p, Q6_K_GROUP, j, 16);
            let codes = q6_k_codes(p, j);
            for (sum, x) in sums.iter_mut().zip(&xs) {
                let x = x.add(4 + 16 * j) as *const i32;
                let mut sub_block = _mm512_setzero_si512();
                for (k, codes) in codes.iter().enumerate() {
                    let xk = _mm512_set1_epi32(x.add(k).read_unaligned());
                    sub_block = _mm512_dpbusd_epi32(sub_block, *codes, xk);
                }
                *sum = _mm512_add_epi32(*sum, _mm512_mullo_epi32(sub_block, *scale));
            }
        }
        let pairs = q6_k_scale_pairs(&scales);
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        for n in 0..N {
            let bias = pair_products(&pairs, xs[n].add(260) as *const i32);
            let sum = _mm512_sub_epi32(sums[n], _mm512_slli_epi32::<5>(bias));
            let da = _mm512_set1_ps(*g.d.get_unchecked(b * N + n));
            let block = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), dw);
            acc[n] = _mm512_add_ps(acc[n], _mm512_mul_ps(block, da));
        }
    }
    let mut out = [[0.0f32; 16]; N];
    for (o, acc) in out.iter_mut().zip(acc) {
        _mm512_storeu_ps(o.as_mut_ptr(), acc);
    }
    out
}

/// Sixteen Q6_K rows (one packed group) · one token (`x`, its Q8_K row) in `LaneSums`'
/// order (a decoding token, `TokenOrder::OneToken`): per block, each row's eight lanes
/// (lane k: the values whose position in their 32 is 4k..4k+4) are integers, each added
/// to its own float accumulator with one fused multiply-add by d_a·d_w; the lanes' tree
/// at the end. A register of lanes holds one lane of all sixteen rows, so nothing is
/// summed across a register.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_q6_k_lanes(w: &[u8], x: &[u8]) -> [f32; 16] {
    let mut acc = [_mm512_setzero_ps(); 8];
    for b in 0..w.len() / Q6_K_GROUP {
        let p = w.as_ptr().add(b * Q6_K_GROUP);
        let scales = q6_k_scales(p);
        let xb = x.as_ptr().add(b * Q8K_BLOCK);
        // Lanes 0..4 take the first sixteen values of each 32, lanes 4..8 the last
        // sixteen: sub-blocks 2i and 2i + 1.
        let mut first = [_mm512_setzero_si512(); 4];
        let mut second = [_mm512_setzero_si512(); 4];
        for i in 0..8 {
            q6_k_add_lanes(&mut first, p, &scales, xb, 2 * i);
            q6_k_add_lanes(&mut second, p, &scales, xb, 2 * i + 1);
        }
        let lanes: [__m512i; 8] = std::array::from_fn(|k| [first, second][k / 4][k % 4]);
        let pairs = q6_k_scale_pairs(&scales);
        let d = _mm512_mul_ps(
            _mm512_set1_ps(q8k_d(&x[b * Q8K_BLOCK..])),
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
        );
        for (k, (lane, acc)) in lanes.iter().zip(acc.iter_mut()).enumerate() {
            let s = _mm512_set1_epi32(xb.add(260 + 4 * k).cast::<i32>().read_unaligned());
            let bias = _mm512_madd_epi16(pairs[k], s);
            let lane = _mm512_sub_epi32(*lane, _mm512_slli_epi32::<5>(bias));
            *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(lane), *acc);
        }
    }
    // `kernels::lane_tree` for each row, then `LaneSums::total`'s offsets (zero).
    let s: [__m512; 4] = std::array::from_fn(|k| _mm512_add_ps(acc[k], acc[k + 4]));
    let tree = _mm512_add_ps(_mm512_add_ps(s[0], s[2]), _mm512_add_ps(s[1], s[3]));
    let mut out = [0.0f32; 16];
    _mm512_storeu_ps(out.as_mut_ptr(), _mm512_add_ps(tree, _mm512_setzero_ps()));
    out
}

/// Adds sub-block j's products to four of a token's lanes (`dot16_q6_k_lanes`): each
/// pair of code·x products (within i16: 2 · 63 · 128 < 2^15) times the sub-block's
/// scale, by `vpdpwssd`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q6_k_add_lanes(
    lanes: &mut [__m512i; 4],
    p: *const u8,
    scales: &[__m512i; 16],
    xb: *const u8,
    j: usize,
) {
    prefetch_part::<_MM_HINT_T1>(p, Q6_K_GROUP, j, 16);
    let codes = q6_k_codes(p, j);
    // Both i16 of each lane: the sub-block's scale.
    let low16 = _mm512_set1_epi32(0xffff);
    let scale = _mm512_or_si512(
        _mm512_and_si512(scales[j], low16),
        _mm512_slli_epi32::<16>(scales[j]),
    );
    let xj = xb.add(4 + 16 * j) as *const i32;
    for (k, lane) in lanes.iter_mut().enumerate() {
        let xk = _mm512_set1_epi32(xj.add(k).read_unaligned());
        let pairs = _mm512_maddubs_epi16(codes[k], xk);
        *lane = _mm512_dpwssd_epi32(*lane, pairs, scale);
    }
}

// The Q6_K helpers below carry the kernels' target features rather than only
// `#[inline(always)]`: closures inside a helper without them (`from_fn`) do not inline
// the intrinsics they call, and a Q6_K prompt ran 5× slower that way.

/// Each row's sixteen signed 8-bit sub-block scales of a Q6_K group, sub-block j as an
/// i32 in each lane (byte j % 4 of scale word j / 4).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q6_k_scales(p: *const u8) -> [__m512i; 16] {
    let words: [__m512i; 4] =
        std::array::from_fn(|i| _mm512_loadu_si512(p.add(32 + 64 * i) as *const _));
    std::array::from_fn(|j| {
        let up = _mm_cvtsi32_si128(24 - 8 * (j % 4) as i32);
        _mm512_srai_epi32::<24>(_mm512_sll_epi32(words[j / 4], up))
    })
}

/// The scales of sub-blocks 2e and 2e + 1 as an i16 pair in each lane, against a
/// token's pair of activation sums of 16 (the offset of 32's correction).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q6_k_scale_pairs(scales: &[__m512i; 16]) -> [__m512i; 8] {
    let low16 = _mm512_set1_epi32(0xffff);
    std::array::from_fn(|e| {
        let second = _mm512_slli_epi32::<16>(scales[2 * e + 1]);
        _mm512_or_si512(_mm512_and_si512(scales[2 * e], low16), second)
    })
}

/// Sub-block j's codes (values 16j..16j+16) of a Q6_K group's sixteen rows: register k
/// holds codes 4k..4k+4 of each row. In their half (128 values) of the block they are
/// stream q = (j % 8) / 2 of four, whose low four bits are the low (q < 2) or high
/// nibbles of ql bytes 64·half + 32·(q % 2) + l and whose top two are bits 2q, 2q + 1 of
/// qh bytes 32·half + l, for l in 16·(j % 2)..+16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q6_k_codes(p: *const u8, j: usize) -> [__m512i; 4] {
    let (half, q, l) = (j / 8, (j % 8) / 2, 16 * (j % 2));
    std::array::from_fn(|k| {
        let ql_byte = 64 * half + 32 * (q % 2) + l + 4 * k;
        let qh_byte = 32 * half + l + 4 * k;
        let ql = _mm512_loadu_si512(p.add(288 + 16 * ql_byte) as *const _);
        let qh = _mm512_loadu_si512(p.add(2336 + 16 * qh_byte) as *const _);
        let low = if q < 2 {
            ql
        } else {
            _mm512_srli_epi16::<4>(ql)
        };
        // Bits 2q, 2q + 1 to bits 4, 5 (what the 16-bit shifts carry across bytes is
        // masked off).
        let high = match q {
            0 => _mm512_slli_epi16::<4>(qh),
            1 => _mm512_slli_epi16::<2>(qh),
            2 => qh,
            _ => _mm512_srli_epi16::<2>(qh),
        };
        let low4 = _mm512_set1_epi8(0x0f);
        _mm512_or_si512(
            _mm512_and_si512(low, low4),
            _mm512_and_si512(high, _mm512_set1_epi8(0x30)),
        )
    })
}

/// Σ_e pairs[e] · sums[e], lane by lane: register e holds each row's two i16 factors of
/// two sub-blocks, `sums` one token's activation sums of the same two (an i32 of two
/// i16 per e).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pair_products<const E: usize>(pairs: &[__m512i; E], sums: *const i32) -> __m512i {
    let mut total = _mm512_setzero_si512();
    for (e, m) in pairs.iter().enumerate() {
        let s = _mm512_set1_epi32(sums.add(e).read_unaligned());
        total = _mm512_add_epi32(total, _mm512_madd_epi16(*m, s));
    }
    total
}
