//! The AVX-512 VNNI kernels over the packed K-quants whose sub-blocks are sixteen values
//! with a signed scale and no min: Q3_K (`Q3`) and Q6_K. Sixteen rows (one packed group,
//! `packed`), one per 32-bit lane of a 512-bit register; a register of codes holds four
//! consecutive codes of every row.
//!
//! Both follow the order of the tokens' `TokenOrder` (`kernels_k::dot_by_order`), bit for
//! bit: the tiled kernel (`TiledSums`, a prompt's tokens) sums each block in one exact
//! integer, sixteen rows and up to eight tokens at once; the lane kernel (`LaneSums`, a
//! decoding token) keeps each row's eight lanes in eight registers of sixteen rows, so
//! nothing is summed across a register. Codes are multiplied unsigned (Q6_K 0..64, Q3_K
//! 0..8); the offset they carry (32, 4) comes off as llama.cpp takes it off.

use crate::kernels::TokenGroup;
use crate::kernels_k::{q8k_d, Q8K_BLOCK};
use crate::kernels_packed_k::pair_products;
use crate::kernels_packed_k_avx2::prefetch_part;
use core::arch::x86_64::*;

/// Bytes of one packed group: Q6_K d[16] (f16) · scales[4][16][4] · ql[32][16][4] ·
/// qh[16][16][4]; Q3_K d[16] (f16) · scales[3][16][4] · hmask[8][16][4] · qs[16][16][4].
const fn group_bytes(q3: bool) -> usize {
    if q3 {
        16 * 110
    } else {
        16 * 210
    }
}

/// log2 of the offset the codes carry.
const fn offset_shift(q3: bool) -> i32 {
    if q3 {
        2
    } else {
        5
    }
}

/// Sixteen rows (one packed group) · N tokens in `TiledSums`' order (a prompt's tokens,
/// `TokenOrder::Batched`): `out[n][i]` is row i · token n. The offset comes off each
/// block's sum as offset · Σ scale·(activation sum of 16), from the sums that Q8_K
/// stores.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_k16_tiled<const Q3: bool, const N: usize>(
    w: &[u8],
    g: &TokenGroup<N>,
) -> [[f32; 16]; N] {
    let group = group_bytes(Q3);
    let mut acc = [_mm512_setzero_ps(); N];
    for b in 0..w.len() / group {
        let p = w.as_ptr().add(b * group);
        let scales = k16_scales::<Q3>(p);
        let xs: [*const u8; N] = std::array::from_fn(|n| g.rows[n].as_ptr().add(b * Q8K_BLOCK));
        let mut sums = [_mm512_setzero_si512(); N];
        for (j, scale) in scales.iter().enumerate() {
            prefetch_part::<_MM_HINT_T1>(p, group, j, 16);
            let codes = k16_codes::<Q3>(p, j);
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
        let pairs = scale_pairs(&scales);
        let shift = _mm_cvtsi32_si128(offset_shift(Q3));
        add_tiled_blocks(&mut acc, p, &sums, &pairs, shift, &xs, g, b);
    }
    acc.map(|acc| {
        let mut out = [0.0f32; 16];
        _mm512_storeu_ps(out.as_mut_ptr(), acc);
        out
    })
}

/// Adds a block of a group to each token's `TiledSums` (sixteen rows each), after taking
/// the offset off its sums: 2^`shift` · Σ pairs[e] · (the token's activation sums of 16 of
/// pair e). The group's f16 d_w are its first 32 bytes (`p`).
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn add_tiled_blocks<const E: usize, const N: usize>(
    acc: &mut [__m512; N],
    p: *const u8,
    sums: &[__m512i; N],
    pairs: &[__m512i; E],
    shift: __m128i,
    xs: &[*const u8; N],
    g: &TokenGroup<N>,
    b: usize,
) {
    let dw = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
    for n in 0..N {
        let bias = pair_products(pairs, xs[n].add(260) as *const i32);
        let sum = _mm512_sub_epi32(sums[n], _mm512_sll_epi32(bias, shift));
        let da = _mm512_set1_ps(*g.d.get_unchecked(b * N + n));
        let block = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), dw);
        acc[n] = _mm512_add_ps(acc[n], _mm512_mul_ps(block, da));
    }
}

/// Sixteen rows (one packed group) · N tokens (`xs`, their Q8_K rows) in `LaneSums`'
/// order (decoding tokens, `TokenOrder::OneToken`): per block, each row's eight lanes
/// (lane k: the values whose position in their 32 is 4k..4k+4) are integers, each added
/// to its own float accumulator with one fused multiply-add by d_a·d_w; the lanes' tree
/// at the end. Each sub-block's codes are decoded once for all N tokens (several
/// sequences decoding in one step); every token's sums are those of a lone token.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_k16_lanes<const Q3: bool, const N: usize>(
    w: &[u8],
    xs: &[&[u8]; N],
) -> [[f32; 16]; N] {
    let group = group_bytes(Q3);
    let mut acc = [[_mm512_setzero_ps(); 8]; N];
    for b in 0..w.len() / group {
        let p = w.as_ptr().add(b * group);
        let scales = k16_scales::<Q3>(p);
        let xbs: [*const u8; N] = std::array::from_fn(|n| xs[n].as_ptr().add(b * Q8K_BLOCK));
        let mut lanes = [[_mm512_setzero_si512(); 8]; N];
        if N == 1 {
            // A lone token's eight lanes fit in registers when the lanes each sub-block
            // adds to are known when compiling, hence sub-blocks in pairs: indexed at run
            // time, they lived on the stack (a store per multiply-add). Unrolled further,
            // the compiler decoded all sixteen sub-blocks' codes first and kept those on
            // the stack instead. Several tokens' lanes do not fit in registers either way,
            // and run faster in the plain loop.
            for pair in 0..8 {
                add_sub_block_lanes::<Q3, N>(p, group, 2 * pair, &scales, &xbs, &mut lanes);
                add_sub_block_lanes::<Q3, N>(p, group, 2 * pair + 1, &scales, &xbs, &mut lanes);
            }
        } else {
            for j in 0..16 {
                add_sub_block_lanes::<Q3, N>(p, group, j, &scales, &xbs, &mut lanes);
            }
        }
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        for n in 0..N {
            let offsets = if Q3 {
                q3_k_lane_offsets(&scales, xbs[n])
            } else {
                q6_k_lane_offsets(&scales, xbs[n])
            };
            let d = _mm512_mul_ps(_mm512_set1_ps(q8k_d(&xs[n][b * Q8K_BLOCK..])), dw);
            for ((lane, offset), acc) in lanes[n].iter().zip(offsets).zip(acc[n].iter_mut()) {
                let lane = _mm512_sub_epi32(*lane, offset);
                *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(lane), *acc);
            }
        }
    }
    lanes_totals(&acc)
}

/// Adds sub-block `j` of a group's block to each token's lanes: lanes 0..4 take the
/// first sixteen values of each 32 (even sub-blocks), lanes 4..8 the last sixteen (odd
/// ones).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn add_sub_block_lanes<const Q3: bool, const N: usize>(
    p: *const u8,
    group: usize,
    j: usize,
    scales: &[__m512i; 16],
    xbs: &[*const u8; N],
    lanes: &mut [[__m512i; 8]; N],
) {
    prefetch_part::<_MM_HINT_T1>(p, group, j, 16);
    let codes = k16_codes::<Q3>(p, j);
    // Both i16 of each lane: the sub-block's scale.
    let low16 = _mm512_set1_epi32(0xffff);
    let scale = _mm512_or_si512(
        _mm512_and_si512(scales[j], low16),
        _mm512_slli_epi32::<16>(scales[j]),
    );
    for (lanes, xb) in lanes.iter_mut().zip(xbs) {
        let xj = xb.add(4 + 16 * j) as *const i32;
        for (k, codes) in codes.iter().enumerate() {
            let xk = _mm512_set1_epi32(xj.add(k).read_unaligned());
            let pairs = _mm512_maddubs_epi16(*codes, xk);
            let lane = &mut lanes[4 * (j % 2) + k];
            *lane = _mm512_dpwssd_epi32(*lane, pairs, scale);
        }
    }
}

/// `LaneSums::total` of sixteen rows per token, whose lane k is register k:
/// `kernels::lane_tree`, then the offsets (zero).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn lanes_totals<const N: usize>(acc: &[[__m512; 8]; N]) -> [[f32; 16]; N] {
    let mut out = [[0.0f32; 16]; N];
    for (out, acc) in out.iter_mut().zip(acc) {
        let s: [__m512; 4] = std::array::from_fn(|k| _mm512_add_ps(acc[k], acc[k + 4]));
        let tree = _mm512_add_ps(_mm512_add_ps(s[0], s[2]), _mm512_add_ps(s[1], s[3]));
        _mm512_storeu_ps(out.as_mut_ptr(), _mm512_add_ps(tree, _mm512_setzero_ps()));
    }
    out
}

/// What Q6_K's offset of 32 takes off each of a block's eight lanes, as llama.cpp's
/// lanes carry it: 32 · Σ scale·a over sub-blocks 2k and 2k + 1 off lane k
/// (`kernels_k::q6_k_lanes`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q6_k_lane_offsets(scales: &[__m512i; 16], xb: *const u8) -> [__m512i; 8] {
    let pairs = scale_pairs(scales);
    std::array::from_fn(|k| {
        let sums = _mm512_set1_epi32(xb.add(260 + 4 * k).cast::<i32>().read_unaligned());
        _mm512_slli_epi32::<5>(_mm512_madd_epi16(pairs[k], sums))
    })
}

/// What Q3_K's offset of 4 takes off each of a block's eight lanes (its lanes hold the
/// values code − 4 exactly, as llama.cpp's do): lane L's Σ over its eight sub-blocks j of
/// 4 · scale_j · (the sum of j's four activations that fall in lane L). Those sums do
/// not depend on the row, so one pass per block and token serves the sixteen rows, by
/// `vpdpwssd` over pairs of sub-blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q3_k_lane_offsets(scales: &[__m512i; 16], xb: *const u8) -> [__m512i; 8] {
    // Sums of four activations: f = 16r..16r + 16 in register r. Lane L's are f = 8i + L
    // (sub-block j = 2i + L / 4, positions 4·(L % 4)..), so register r holds those of
    // i = 2r (element L) and 2r + 1 (element 8 + L), paired as two i16 (|sum| ≤ 4·127).
    let mut pair_sums = [0i32; 32];
    for r in 0..4 {
        let x = _mm512_loadu_si512(xb.add(4 + 64 * r) as *const _);
        let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), x);
        let (low, high) = (
            _mm512_castsi512_si256(sums),
            _mm512_extracti64x4_epi64::<1>(sums),
        );
        let pair = _mm256_or_si256(
            _mm256_and_si256(low, _mm256_set1_epi32(0xffff)),
            _mm256_slli_epi32::<16>(high),
        );
        _mm256_storeu_si256(pair_sums.as_mut_ptr().add(8 * r) as *mut __m256i, pair);
    }
    // The scales of sub-blocks 4r + parity and 4r + 2 + parity as an i16 pair.
    let low16 = _mm512_set1_epi32(0xffff);
    let scale_pairs: [[__m512i; 4]; 2] = std::array::from_fn(|parity| {
        std::array::from_fn(|r| {
            let second = _mm512_slli_epi32::<16>(scales[4 * r + 2 + parity]);
            _mm512_or_si512(_mm512_and_si512(scales[4 * r + parity], low16), second)
        })
    });
    std::array::from_fn(|lane| {
        let mut offset = _mm512_setzero_si512();
        for (r, pair) in scale_pairs[lane / 4].iter().enumerate() {
            let sums = _mm512_set1_epi32(pair_sums[8 * r + lane]);
            offset = _mm512_dpwssd_epi32(offset, *pair, sums);
        }
        _mm512_slli_epi32::<2>(offset)
    })
}

// The helpers below carry the kernels' target features rather than only
// `#[inline(always)]`: closures inside a helper without them (`from_fn`) do not inline
// the intrinsics they call, and a Q6_K prompt ran 5× slower that way.

/// Each row's sixteen signed sub-block scales of a group, sub-block j as an i32 in each
/// lane. Q6_K: byte j % 4 of scale word j / 4. Q3_K: six bits, the low four from nibble
/// j / 8 of byte j % 8 of words 0..2 and the top two from bits 2·(j / 4) of byte j % 4 of
/// word 2, less 32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn k16_scales<const Q3: bool>(p: *const u8) -> [__m512i; 16] {
    let word = |i: usize| _mm512_loadu_si512(p.add(32 + 64 * i) as *const _);
    if !Q3 {
        let words: [__m512i; 4] = std::array::from_fn(word);
        return std::array::from_fn(|j| {
            let up = _mm_cvtsi32_si128(24 - 8 * (j % 4) as i32);
            _mm512_srai_epi32::<24>(_mm512_sll_epi32(words[j / 4], up))
        });
    }
    let words: [__m512i; 3] = std::array::from_fn(word);
    let low4 = _mm512_set1_epi8(0x0f);
    let top2 = _mm512_set1_epi8(0x03);
    // Word q holds scales 4q..4q + 4, a byte each.
    let unpacked: [__m512i; 4] = std::array::from_fn(|q| {
        let low = _mm512_srl_epi32(words[q % 2], _mm_cvtsi32_si128(4 * (q / 2) as i32));
        let high = _mm512_srl_epi32(words[2], _mm_cvtsi32_si128(2 * q as i32));
        _mm512_or_si512(
            _mm512_and_si512(low, low4),
            _mm512_slli_epi32::<4>(_mm512_and_si512(high, top2)),
        )
    });
    std::array::from_fn(|j| {
        let byte = _mm512_srl_epi32(unpacked[j / 4], _mm_cvtsi32_si128(8 * (j % 4) as i32));
        let byte = _mm512_and_si512(byte, _mm512_set1_epi32(0xff));
        _mm512_sub_epi32(byte, _mm512_set1_epi32(32))
    })
}

/// The scales of sub-blocks 2e and 2e + 1 as an i16 pair in each lane, against a
/// token's pair of activation sums of 16 (the offset's correction).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn scale_pairs(scales: &[__m512i; 16]) -> [__m512i; 8] {
    let low16 = _mm512_set1_epi32(0xffff);
    std::array::from_fn(|e| {
        let second = _mm512_slli_epi32::<16>(scales[2 * e + 1]);
        _mm512_or_si512(_mm512_and_si512(scales[2 * e], low16), second)
    })
}

/// Sub-block j's unsigned codes (values 16j..16j+16) of a group's sixteen rows: register
/// k holds codes 4k..4k+4 of each row, from bytes l = 16·(j % 2) + 4k.. of the row's
/// streams.
///
/// Q6_K: in their half (128 values) of the block the values are stream q = (j % 8) / 2 of
/// four, whose low four bits are the low (q < 2) or high nibbles of ql bytes
/// 64·half + 32·(q % 2) + l and whose top two are bits 2q, 2q + 1 of qh bytes
/// 32·half + l. Q3_K: 32-value chunk c = j / 2, whose low two bits are bits 2·(c % 4) of
/// qs bytes 32·(c / 4) + l and whose third is bit c of hmask byte l.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn k16_codes<const Q3: bool>(p: *const u8, j: usize) -> [__m512i; 4] {
    let load = |byte: usize| _mm512_loadu_si512(p.add(16 * byte) as *const _);
    if Q3 {
        let c = j / 2;
        let shift = _mm_cvtsi32_si128(2 * (c % 4) as i32);
        return std::array::from_fn(|k| {
            let l = 16 * (j % 2) + 4 * k;
            let low = _mm512_and_si512(
                _mm512_srl_epi16(load(46 + 32 * (c / 4) + l), shift),
                _mm512_set1_epi8(3),
            );
            let third = _mm512_test_epi8_mask(load(14 + l), _mm512_set1_epi8(1 << c));
            _mm512_mask_add_epi8(low, third, low, _mm512_set1_epi8(4))
        });
    }
    let (half, q, l) = (j / 8, (j % 8) / 2, 16 * (j % 2));
    std::array::from_fn(|k| {
        let ql = load(18 + 64 * half + 32 * (q % 2) + l + 4 * k);
        let qh = load(146 + 32 * half + l + 4 * k);
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
