//! The AVX-512 VNNI kernels over packed IQ4_XS (`packed`: d[16] · scales_h[16] (u16) ·
//! scales_l[16][4] · qs[32][16][4]): sixteen rows, one per 32-bit lane of a 512-bit
//! register, whose register of codes holds four consecutive 4-bit codes of every row.
//!
//! Both follow the order of the tokens' `TokenOrder` (`kernels_k::dot_by_order`), bit for
//! bit: the tiled kernel (`TiledSums`, a prompt's tokens) sums each block in one exact
//! integer, with the levels plus 128 as unsigned bytes for `vpdpbusd` (the 128 · Σx they
//! carry comes off with the sums that Q8_K stores, as in llama.cpp's tiled kernel); the
//! lane kernel (`LaneSums`, a decoding token) keeps each row's eight lanes in eight
//! registers of sixteen rows, the levels' signs moved onto the activations so that
//! `vpmaddubsw` multiplies their magnitudes (at most 2 · 127 · 127 per pair, within i16).

use crate::iquants::IQ4_LEVELS;
use crate::kernels::TokenGroup;
use crate::kernels_k::{q8k_d, Q8K_BLOCK};
use crate::kernels_packed::{iq4_levels_plus_128, repeat16};
use crate::kernels_packed_k::dot_codes;
use crate::kernels_packed_k16::{add_tiled_blocks, lanes_totals};
use crate::kernels_packed_k_avx2::prefetch_part;
use core::arch::x86_64::*;

/// Bytes of one packed group.
const GROUP: usize = 16 * 136;

/// Sixteen rows (one packed group) · N tokens in `TiledSums`' order (a prompt's tokens,
/// `TokenOrder::Batched`): `out[n][i]` is row i · token n.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_iq4_xs_tiled<const N: usize>(w: &[u8], g: &TokenGroup<N>) -> [[f32; 16]; N] {
    let table = repeat16(iq4_levels_plus_128().as_ptr());
    let mut acc = [_mm512_setzero_ps(); N];
    for b in 0..w.len() / GROUP {
        let p = w.as_ptr().add(b * GROUP);
        let scales = scales(p);
        let xs: [*const u8; N] = std::array::from_fn(|n| g.rows[n].as_ptr().add(b * Q8K_BLOCK));
        let mut sums = [_mm512_setzero_si512(); N];
        for (s, scale) in scales.iter().enumerate() {
            prefetch_part::<_MM_HINT_T1>(p, GROUP, s, 8);
            let codes = codes(p, s).map(|c| _mm512_shuffle_epi8(table, c));
            for (sum, x) in sums.iter_mut().zip(&xs) {
                let sub_block = dot_codes(&codes, x.add(4 + 32 * s));
                *sum = _mm512_add_epi32(*sum, _mm512_mullo_epi32(sub_block, *scale));
            }
        }
        // Sub-block s's scale against both of its activation sums of 16.
        let pairs = scales.map(|s| {
            _mm512_or_si512(
                _mm512_and_si512(s, _mm512_set1_epi32(0xffff)),
                _mm512_slli_epi32::<16>(s),
            )
        });
        let shift = _mm_cvtsi32_si128(7);
        add_tiled_blocks(&mut acc, p, &sums, &pairs, shift, &xs, g, b);
    }
    acc.map(|acc| {
        let mut out = [0.0f32; 16];
        _mm512_storeu_ps(out.as_mut_ptr(), acc);
        out
    })
}

/// Sixteen rows (one packed group) · N tokens (`xs`, their Q8_K rows) in `LaneSums`'
/// order (decoding tokens, `TokenOrder::OneToken`): per block, each row's eight lanes
/// (lane k: the values whose position in their 32 is 4k..4k+4) are integers, each added
/// to its own float accumulator with one fused multiply-add by d_a·d_w; the lanes' tree
/// at the end. Each sub-block's levels are looked up once for all N tokens; every
/// token's sums are those of a lone token.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_iq4_xs_lanes<const N: usize>(w: &[u8], xs: &[&[u8]; N]) -> [[f32; 16]; N] {
    let table = repeat16(IQ4_LEVELS.as_ptr() as *const u8);
    let low16 = _mm512_set1_epi32(0xffff);
    let mut acc = [[_mm512_setzero_ps(); 8]; N];
    for b in 0..w.len() / GROUP {
        let p = w.as_ptr().add(b * GROUP);
        let scales = scales(p);
        let mut lanes = [[_mm512_setzero_si512(); 8]; N];
        for (s, scale) in scales.iter().enumerate() {
            prefetch_part::<_MM_HINT_T1>(p, GROUP, s, 8);
            // Both i16 of each lane: the sub-block's scale.
            let scale = _mm512_or_si512(
                _mm512_and_si512(*scale, low16),
                _mm512_slli_epi32::<16>(*scale),
            );
            // The levels' magnitudes, and their signs to move onto the activations.
            let levels = codes(p, s).map(|c| _mm512_shuffle_epi8(table, c));
            let negative = levels.map(|l| _mm512_movepi8_mask(l));
            let magnitudes = levels.map(|l| _mm512_abs_epi8(l));
            for (lanes, x) in lanes.iter_mut().zip(xs) {
                let xs = x.as_ptr().add(b * Q8K_BLOCK + 4 + 32 * s) as *const i32;
                for (k, lane) in lanes.iter_mut().enumerate() {
                    let xk = _mm512_set1_epi32(xs.add(k).read_unaligned());
                    let signed_x =
                        _mm512_mask_sub_epi8(xk, negative[k], _mm512_setzero_si512(), xk);
                    let pairs = _mm512_maddubs_epi16(magnitudes[k], signed_x);
                    *lane = _mm512_dpwssd_epi32(*lane, pairs, scale);
                }
            }
        }
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        for ((lanes, acc), x) in lanes.iter().zip(acc.iter_mut()).zip(xs) {
            let d = _mm512_mul_ps(_mm512_set1_ps(q8k_d(&x[b * Q8K_BLOCK..])), dw);
            for (lane, acc) in lanes.iter().zip(acc.iter_mut()) {
                *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(*lane), *acc);
            }
        }
    }
    lanes_totals(&acc)
}

// The helpers below carry the kernels' target features rather than only
// `#[inline(always)]`: closures inside a helper without them (`from_fn`) do not inline
// the intrinsics they call.

/// Each row's eight sub-block scales, sub-block s as an i32 in each lane: the low four
/// bits from nibble s % 2 of byte s / 2 of `scales_l`, the top two from bits 2s of
/// `scales_h`, less 32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn scales(p: *const u8) -> [__m512i; 8] {
    let high = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.add(32) as *const __m256i));
    let low = _mm512_loadu_si512(p.add(64) as *const _);
    std::array::from_fn(|s| {
        let low = _mm512_srl_epi32(low, _mm_cvtsi32_si128(4 * s as i32));
        let high = _mm512_srl_epi32(high, _mm_cvtsi32_si128(2 * s as i32));
        let code = _mm512_or_si512(
            _mm512_and_si512(low, _mm512_set1_epi32(0x0f)),
            _mm512_slli_epi32::<4>(_mm512_and_si512(high, _mm512_set1_epi32(3))),
        );
        _mm512_sub_epi32(code, _mm512_set1_epi32(32))
    })
}

/// Sub-block s's sixteen rows' 4-bit codes (values 32s..32s+32): register k holds codes
/// 4k..4k+4 of each row, the low (k < 4) or high nibbles of qs bytes 16s + 4·(k % 4)...
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn codes(p: *const u8, s: usize) -> [__m512i; 8] {
    let low4 = _mm512_set1_epi8(0x0f);
    let raw: [__m512i; 4] =
        std::array::from_fn(|r| _mm512_loadu_si512(p.add(128 + 64 * (4 * s + r)) as *const _));
    std::array::from_fn(|k| match k {
        0..4 => _mm512_and_si512(raw[k], low4),
        _ => _mm512_and_si512(_mm512_srli_epi16::<4>(raw[k - 4]), low4),
    })
}
