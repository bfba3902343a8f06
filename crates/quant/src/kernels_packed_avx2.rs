//! The AVX2 twin of `kernels_packed::dot16_q4_packed`: sixteen Q4_0 or IQ4_NL rows
//! (one packed group, `packed`) against N tokens, taken as two halves of eight rows, one
//! row per 32-bit lane. Each (row, token) result follows `BlockSums` — a block's 32
//! products summed in integers, then one fused multiply-add by d_w·d_a per block — so it
//! equals the row-major kernels' result bit for bit, with no horizontal sum per block.

use crate::kernels::TokenGroup;
use core::arch::x86_64::*;

/// How far ahead of the group being multiplied the kernel asks for the weights: a
/// steady stream as it goes (better on the AVX2 EPYC than `matmul`'s burst per row group,
/// which for these groups is up to 72 KiB: decode +15–30 %, `docs/benchmarks.md`).
const PREFETCH_DISTANCE: usize = 8192;

/// Sixteen Q4_0 (`NL` false) or IQ4_NL (`NL` true) rows · N tokens: `out[n][i]` is row i ·
/// token n.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot16_q4_packed<const N: usize, const NL: bool>(
    w: &[u8],
    g: &TokenGroup<N>,
) -> [[f32; 16]; N] {
    let group = 288;
    // Both halves of a block before the next block: the weights then stream from
    // memory at an even pace, where a second pass over the row group would leave the
    // memory idle while it computes.
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for b in 0..w.len() / group {
        let p = w.as_ptr().add(b * group);
        // A group's five cache lines, a fixed distance ahead.
        for line in 0..5 {
            let ahead = p.wrapping_add(PREFETCH_DISTANCE + 64 * line);
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
        }
        for half in 0..2 {
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * half) as *const __m128i));
            let codes = half_group_codes(p.add(32 + 32 * half));
            if NL {
                let levels = codes.map(|c| crate::kernels_x86::iq4_level_bytes(c));
                let magnitudes = levels.map(|l| _mm256_sign_epi8(l, l));
                for (n, acc) in acc.iter_mut().enumerate() {
                    let x = g.rows[n].as_ptr().add(b * 34 + 2) as *const i32;
                    // |level| · (x with the level's sign): no pair of products reaches
                    // i16's limit (2·127·127), but two pairs may, so each is widened.
                    let mut sums = _mm256_setzero_si256();
                    for k in 0..8 {
                        let xk = _mm256_set1_epi32(x.add(k).read_unaligned());
                        let pairs =
                            _mm256_maddubs_epi16(magnitudes[k], _mm256_sign_epi8(xk, levels[k]));
                        sums =
                            _mm256_add_epi32(sums, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
                    }
                    acc[half] = add_block(acc[half], dw, *g.d.get_unchecked(b * N + n), sums);
                }
            } else {
                for (n, acc) in acc.iter_mut().enumerate() {
                    let x = g.rows[n].as_ptr().add(b * 34 + 2) as *const i32;
                    // Eight pairs of nibble·x stay within i16 (8 · 2 · 15 · 128 < 2^15).
                    let mut pairs = _mm256_setzero_si256();
                    for (k, codes) in codes.iter().enumerate() {
                        let xk = _mm256_set1_epi32(x.add(k).read_unaligned());
                        pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(*codes, xk));
                    }
                    let at = b * N + n;
                    let sums = _mm256_sub_epi32(
                        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)),
                        _mm256_set1_epi32(8 * *g.sums.get_unchecked(at)),
                    );
                    acc[half] = add_block(acc[half], dw, *g.d.get_unchecked(at), sums);
                }
            }
        }
    }
    let mut out = [[0.0f32; 16]; N];
    for (o, acc) in out.iter_mut().zip(acc) {
        for (half, acc) in acc.into_iter().enumerate() {
            _mm256_storeu_ps(o[8 * half..].as_mut_ptr(), acc);
        }
    }
    out
}

/// The nibbles of half a group's codes (`qs[4][8][4]` at `p`, 32 bytes apart in the
/// group, 64 apart): register k holds codes 4k..4k+4 of each of the eight rows.
#[inline(always)]
unsafe fn half_group_codes(p: *const u8) -> [__m256i; 8] {
    let low4 = _mm256_set1_epi8(0x0f);
    std::array::from_fn(|k| {
        let q = _mm256_loadu_si256(p.add(64 * (k % 4)) as *const __m256i);
        match k {
            0..4 => _mm256_and_si256(q, low4),
            _ => _mm256_and_si256(_mm256_srli_epi16(q, 4), low4),
        }
    })
}

/// acc + (d_w · d_a) · sums, per row.
#[inline(always)]
unsafe fn add_block(acc: __m256, dw: __m256, da: f32, sums: __m256i) -> __m256 {
    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(da));
    _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums), acc)
}
