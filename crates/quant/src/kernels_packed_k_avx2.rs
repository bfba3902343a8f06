//! AVX2 kernels over K-quant weights in the packed layout (`packed`): sixteen Q2_K, Q4_K
//! or Q5_K rows (one packed group) against N tokens, taken as two halves of eight
//! rows, one row per 32-bit lane. A sub-block of eight rows is a few registers of codes,
//! each holding four consecutive codes of every row, so one `vpmaddubsw` with four
//! broadcast activation bytes adds four products to every row, and no sum ever crosses
//! lanes.
//!
//! Each (row, token) result follows the order of the row-major kernels (`kernels_k`):
//! `MinSums` for Q2_K and Q4_K (a super-block's Σ scale·q·a and Σ min·a are exact
//! integers, each added to its own accumulator with one fused multiply-add by d_w·d_a
//! and dmin_w·d_a), `TiledSums` for Q5_K (the same integers as
//! `(sum · d_w − dmin_w · min_sum) · d_a`, added to one accumulator). So the packed
//! results equal the row-major ones bit for bit. (Q6_K is packed for AVX-512 only: its
//! AVX2 kernels over this layout decoded at 0.56× the row-major one.)

use crate::kernels::TokenGroup;
use crate::kernels_k::Q8K_BLOCK;
use core::arch::x86_64::*;
use gguf::GgmlType;

/// How far ahead of the super-block being multiplied the kernel asks for the weights
/// (as `kernels_packed_avx2` does: a steady stream rather than a burst).
const PREFETCH_DISTANCE: usize = 8192;

/// Sixteen Q2_K, Q4_K or Q5_K rows (`ty`) · N tokens: `out[n][i]` is row i ·
/// token n.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot16_k_packed<const N: usize>(
    ty: GgmlType,
    w: &[u8],
    g: &TokenGroup<N>,
) -> [[f32; 16]; N] {
    match ty {
        GgmlType::Q2_K => dot16_min_sums::<2, N>(w, g),
        GgmlType::Q5_K => dot16_min_sums::<5, N>(w, g),
        _ => dot16_min_sums::<4, N>(w, g),
    }
}

/// The loop Q2_K, Q4_K and Q5_K (`BITS`) share: per super-block and half group, the
/// type's integer sums, then `MinSums`' two fused multiply-adds (Q5_K: `TiledSums`'
/// steps, and `acc_min` stays zero). The three layouts start with d[16] and dmin[16]
/// (f16).
#[inline(always)]
unsafe fn dot16_min_sums<const BITS: usize, const N: usize>(
    w: &[u8],
    g: &TokenGroup<N>,
) -> [[f32; 16]; N] {
    let group = 16
        * match BITS {
            2 => 84,
            5 => 176,
            _ => 144,
        };
    // Both halves of a block before the next block: the weights then stream from
    // memory at an even pace, where a second pass over the row group would leave the
    // memory idle while it computes.
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    let mut acc_min = [[_mm256_setzero_ps(); 2]; N];
    for b in 0..w.len() / group {
        let p = w.as_ptr().add(b * group);
        for half in 0..2 {
            let mut sums = [_mm256_setzero_si256(); N];
            let mut min_sums = [_mm256_setzero_si256(); N];
            let xs: [*const u8; N] = std::array::from_fn(|n| g.rows[n].as_ptr().add(b * Q8K_BLOCK));
            if BITS == 2 {
                q2_k_sums(p, group, half, &xs, &mut sums, &mut min_sums);
            } else {
                let pair_sums = g.sums.get_unchecked(4 * b * N..4 * (b + 1) * N);
                let (sums, min_sums) = (&mut sums, &mut min_sums);
                match BITS {
                    5 => q4_k_sums::<true, N>(p, group, half, &xs, pair_sums, sums, min_sums),
                    _ => q4_k_sums::<false, N>(p, group, half, &xs, pair_sums, sums, min_sums),
                }
            }
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * half) as *const __m128i));
            let dmin = _mm256_cvtph_ps(_mm_loadu_si128(p.add(32 + 16 * half) as *const __m128i));
            for n in 0..N {
                let da = _mm256_set1_ps(*g.d.get_unchecked(b * N + n));
                let (sum, min_sum) = (_mm256_cvtepi32_ps(sums[n]), _mm256_cvtepi32_ps(min_sums[n]));
                let (acc, acc_min) = (&mut acc[n][half], &mut acc_min[n][half]);
                if BITS == 5 {
                    let block = _mm256_fnmadd_ps(dmin, min_sum, _mm256_mul_ps(sum, dw));
                    *acc = _mm256_add_ps(*acc, _mm256_mul_ps(block, da));
                } else {
                    *acc = _mm256_fmadd_ps(sum, _mm256_mul_ps(dw, da), *acc);
                    *acc_min = _mm256_fmadd_ps(min_sum, _mm256_mul_ps(dmin, da), *acc_min);
                }
            }
        }
    }
    let mut out = [[0.0f32; 16]; N];
    for (o, (acc, acc_min)) in out.iter_mut().zip(acc.into_iter().zip(acc_min)) {
        for half in 0..2 {
            let v = _mm256_sub_ps(acc[half], acc_min[half]);
            _mm256_storeu_ps(o[8 * half..].as_mut_ptr(), v);
        }
    }
    out
}

/// Asks for step `step` of `steps` of the group's cache lines a fixed distance ahead
/// (into the cache level that `HINT` names): a few per sub-block, as a burst of all of
/// them at once stalls on the fill buffers.
#[inline(always)]
pub(crate) unsafe fn prefetch_part<const HINT: i32>(
    p: *const u8,
    group: usize,
    step: usize,
    steps: usize,
) {
    let lines = group.div_ceil(64);
    for line in lines * step / steps..lines * (step + 1) / steps {
        let ahead = p.wrapping_add(PREFETCH_DISTANCE + 64 * line);
        _mm_prefetch::<HINT>(ahead as *const i8);
    }
}

/// Σ scale·q·a and Σ min·a of half a Q4_K group (layout `d[16] · dmin[16] ·
/// scales[3][16][4] · qs[32][16][4]`) or Q5_K group (`Q5`: qh[8][16][4] before the qs)
/// for each token, from `pair_sums`: each token's activation sums of 32 as i16 pairs
/// (`TokenGroup::sums`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_sums<const Q5: bool, const N: usize>(
    p: *const u8,
    group: usize,
    half: usize,
    xs: &[*const u8; N],
    pair_sums: &[i32],
    sums: &mut [__m256i; N],
    min_sums: &mut [__m256i; N],
) {
    let words = p.add(64 + 32 * half) as *const __m256i;
    let (scales, mins) = scales_mins(
        _mm256_loadu_si256(words),
        _mm256_loadu_si256(words.add(2)),
        _mm256_loadu_si256(words.add(4)),
    );
    for (j, scale) in scales.iter().enumerate() {
        prefetch_part::<_MM_HINT_T0>(p, group, 8 * half + j, 16);
        if Q5 {
            let mut codes = sub_block_codes(p.add(768 + 32 * half), j);
            // Bit j of qh byte k of each row is the fifth bit of code k of sub-block j.
            let bit = _mm256_set1_epi8(1 << j);
            let to_bit4 = _mm_cvtsi32_si128((4 - j as i32).abs());
            for (k, codes) in codes.iter_mut().enumerate() {
                let qh = _mm256_loadu_si256(p.add(256 + 64 * k + 32 * half) as *const __m256i);
                let fifth = _mm256_and_si256(qh, bit);
                let fifth = if j < 4 {
                    _mm256_sll_epi16(fifth, to_bit4)
                } else {
                    _mm256_srl_epi16(fifth, to_bit4)
                };
                *codes = _mm256_or_si256(*codes, fifth);
            }
            // Four pairs of code·x stay within i16 (4 · 2 · 31 · 128 < 2^15).
            add_sub_block::<8, 4, N>(&codes, *scale, xs, 4 + 32 * j, sums);
        } else {
            let codes = sub_block_codes(p.add(256 + 32 * half), j);
            // Eight pairs of code·x stay within i16 (8 · 2 · 15 · 128 < 2^15).
            add_sub_block::<8, 8, N>(&codes, *scale, xs, 4 + 32 * j, sums);
        }
    }
    for (n, min_sum) in min_sums.iter_mut().enumerate() {
        *min_sum = pair_products(&mins, pair_sums.as_ptr().add(4 * n));
    }
}

/// Σ scale·q·a and Σ min·a of half a Q2_K group (layout `d[16] · dmin[16] ·
/// scales[4][16][4] · qs[16][16][4]`) for each token. A Q2_K byte holds four codes, of
/// values l, l + 32, l + 64 and l + 96 of its 128; each scale byte a sub-block of 16's
/// scale (low nibble) and min (high), and the min multiplies the activation sum of 16
/// that Q8_K stores.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q2_k_sums<const N: usize>(
    p: *const u8,
    group: usize,
    half: usize,
    xs: &[*const u8; N],
    sums: &mut [__m256i; N],
    min_sums: &mut [__m256i; N],
) {
    let low4 = _mm256_set1_epi8(0x0f);
    let three = _mm256_set1_epi8(3);
    let mut words = [low4; 4];
    for (w, word) in words.iter_mut().enumerate() {
        *word = _mm256_loadu_si256(p.add(64 + 64 * w + 32 * half) as *const __m256i);
    }
    // Sub-blocks 16j..16j+16 of the block's values: the bytes of quarter (j / 8, j % 2)
    // of the codes, shifted by 2 · ((j % 8) / 2).
    for quarter in 0..4 {
        let (h, second) = (quarter / 2, quarter % 2);
        prefetch_part::<_MM_HINT_T0>(p, group, 4 * half + quarter, 8);
        let first_k = 8 * h + 4 * second;
        let mut raw = [low4; 4];
        for (k, raw) in raw.iter_mut().enumerate() {
            *raw =
                _mm256_loadu_si256(p.add(320 + 64 * (first_k + k) + 32 * half) as *const __m256i);
        }
        for shift in 0..4 {
            let j = 8 * h + 2 * shift + second;
            let mut codes = [low4; 4];
            for (codes, raw) in codes.iter_mut().zip(raw) {
                let shifted = _mm256_srl_epi16(raw, _mm_cvtsi32_si128(2 * shift as i32));
                *codes = _mm256_and_si256(shifted, three);
            }
            let scale = _mm256_and_si256(words[j / 4], low4);
            let scale = _mm256_shuffle_epi8(scale, pick((j % 4) as i32, (j % 4) as i32));
            // Four pairs of code·x stay within i16 (4 · 2 · 3 · 128 < 2^15).
            add_sub_block::<4, 4, N>(&codes, scale, xs, 4 + 16 * j, sums);
        }
    }
    // Mins of sub-blocks 2e and 2e + 1 as an i16 pair, against the two sums of 16.
    let mut mins = [low4; 8];
    for (e, m) in mins.iter_mut().enumerate() {
        let high = _mm256_and_si256(_mm256_srli_epi16::<4>(words[e / 2]), low4);
        let a = 2 * (e % 2) as i32;
        *m = _mm256_shuffle_epi8(high, pick(a, a + 1));
    }
    for (min_sum, x) in min_sums.iter_mut().zip(xs) {
        *min_sum = pair_products(&mins, x.add(260) as *const i32);
    }
}

/// Adds one sub-block to each token's sums: its K registers of codes (four codes of each
/// row) against the activation bytes from `at` (four per register, broadcast), summed
/// in i16 `I16` registers at a time (the caller's bound), each partial sum times each
/// row's scale pair. Eight rows per lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn add_sub_block<const K: usize, const I16: usize, const N: usize>(
    codes: &[__m256i; K],
    scale: __m256i,
    xs: &[*const u8; N],
    at: usize,
    sums: &mut [__m256i; N],
) {
    for (sum, x) in sums.iter_mut().zip(xs) {
        let x = x.add(at) as *const i32;
        for part in (0..K).step_by(I16) {
            let mut pairs = _mm256_setzero_si256();
            for (k, codes) in codes.iter().enumerate().skip(part).take(I16) {
                let xk = _mm256_set1_epi32(x.add(k).read_unaligned());
                pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(*codes, xk));
            }
            *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pairs, scale));
        }
    }
}

/// Σ_e pairs[e] · sums[e], lane by lane: register e holds each row's two i16 factors
/// (mins) of two sub-blocks, `sums` one token's activation sums of the
/// same two (an i32 of two i16 per e).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_products<const E: usize>(pairs: &[__m256i; E], sums: *const i32) -> __m256i {
    let mut total = _mm256_setzero_si256();
    for (e, m) in pairs.iter().enumerate() {
        let s = _mm256_set1_epi32(sums.add(e).read_unaligned());
        total = _mm256_add_epi32(total, _mm256_madd_epi16(*m, s));
    }
    total
}

/// Sub-block j's codes for eight rows: register k holds codes 4k..4k+4 of each row.
/// Sub-blocks 2p and 2p + 1 are the low and high nibbles of the same bytes, stored as
/// `qs[32][16][4]` from `qs` (64 bytes per k, this half's eight rows in 32 of them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sub_block_codes(qs: *const u8, j: usize) -> [__m256i; 8] {
    let low4 = _mm256_set1_epi8(0x0f);
    let mut codes = [low4; 8];
    for (k, codes) in codes.iter_mut().enumerate() {
        let raw = _mm256_loadu_si256(qs.add(64 * (8 * (j / 2) + k)) as *const __m256i);
        let raw = if j.is_multiple_of(2) {
            raw
        } else {
            _mm256_srli_epi16::<4>(raw)
        };
        *codes = _mm256_and_si256(raw, low4);
    }
    codes
}

/// Bits 6 and 7 of each byte of `w`, moved to bits 4 and 5.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn top_bits(w: __m256i) -> __m256i {
    let top2 = _mm256_set1_epi8(0x03);
    _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srli_epi32::<6>(w), top2))
}

/// A `vpshufb` mask that makes each 32-bit lane two i16: its byte a, then its byte b.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn pick(a: i32, b: i32) -> __m256i {
    let lane = |l: i32| (4 * l + a) | (0x80 << 8) | ((4 * l + b) << 16) | (0x80 << 24);
    let m = _mm_setr_epi32(lane(0), lane(1), lane(2), lane(3));
    _mm256_set_m128i(m, m)
}

/// The eight rows' 6-bit scales and mins from the three words of their `scales[12]`
/// (word w of every row in one register): for sub-block j, each lane's scale twice as
/// i16 (to `vpmaddwd` a lane's two partial sums); for sub-blocks 2e and 2e + 1, their
/// two mins as i16 (to `vpmaddwd` the activation sums of the pair).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales_mins(w0: __m256i, w1: __m256i, w2: __m256i) -> ([__m256i; 8], [__m256i; 4]) {
    let low6 = _mm256_set1_epi8(0x3f);
    let low4 = _mm256_set1_epi8(0x0f);
    // Bytes 0..4 of each lane: scales (mins) 0..4, then 4..8.
    let scales = [
        _mm256_and_si256(w0, low6),
        _mm256_or_si256(_mm256_and_si256(w2, low4), top_bits(w0)),
    ];
    let mins = [
        _mm256_and_si256(w1, low6),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi32::<4>(w2), low4),
            top_bits(w1),
        ),
    ];
    let mut scale_pairs = [low6; 8];
    for (j, pair) in scale_pairs.iter_mut().enumerate() {
        let e = (j % 4) as i32;
        *pair = _mm256_shuffle_epi8(scales[j / 4], pick(e, e));
    }
    let mut min_pairs = [low6; 4];
    for (e, pair) in min_pairs.iter_mut().enumerate() {
        let a = 2 * (e % 2) as i32;
        *pair = _mm256_shuffle_epi8(mins[e / 2], pick(a, a + 1));
    }
    (scale_pairs, min_pairs)
}
