//! x86 SIMD twin of the ternary kernel (`ternary::dot_ternary_q8_k`): a block's 256
//! codes decoded once into eight registers of 32 bytes (value order), then multiplied
//! with every token's Q8_K block by `maddubs` (unsigned codes × signed activations),
//! summed into the scalar twin's eight i32 lanes, and added with the same fused
//! multiply-add. Integer sums are exact, so the results are bit-identical to the twin.

use crate::kernels::TokenGroup;
use crate::kernels_k::{q8k_d, Q8K_BLOCK};
use crate::kernels_k_x86::prefetch_block;
use crate::ternary::scale_at;
use core::arch::x86_64::*;
use gguf::GgmlType;

/// For each of a TQ1_0 block's eight registers of codes (`tq1_codes`), each byte's
/// multiplier 3ⁿ (n: which of its source byte's codes it is), times 256 (`trits`).
static TRIT_POWERS: [[u16; 32]; 8] = {
    let mut out = [[0u16; 32]; 8];
    let mut r = 0;
    while r < 8 {
        let mut i = 0;
        while i < 32 {
            let n = match r {
                0..5 => r,
                5 | 6 => 2 * (r - 5) + i / 16,
                _ if i < 16 => 4,
                _ => (i - 16) / 4,
            };
            out[r][i] = 3u16.pow(n as u32) << 8;
            i += 1;
        }
        r += 1;
    }
    out
};

macro_rules! x86_ternary_kernels {
    ($module:ident, $features:literal, $avx512:literal) => {
        pub mod $module {
            use super::*;
            use crate::f16_at;
            use crate::kernels_x86::$module::lane_tree;

            /// The codes of 32 TQ1_0 bytes, each byte's code n picked by its power in
            /// `powers` (3ⁿ · 256): with each byte widened to 16 bits, the product's high
            /// byte is byte · 3ⁿ mod 256, and the high half of that times 3 is the code.
            /// AVX-512 takes the 32 bytes in one register, AVX2 in two halves.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn trits(bytes: __m256i, powers: &[u16; 32]) -> __m256i {
                if $avx512 {
                    let powers = _mm512_loadu_si512(powers.as_ptr() as *const __m512i);
                    let shifted = _mm512_mullo_epi16(_mm512_cvtepu8_epi16(bytes), powers);
                    return _mm512_cvtepi16_epi8(_mm512_mulhi_epu16(shifted, _mm512_set1_epi16(3)));
                }
                let half = |bytes: __m128i, powers: &[u16]| {
                    let powers = _mm256_loadu_si256(powers.as_ptr() as *const __m256i);
                    let shifted = _mm256_mullo_epi16(_mm256_cvtepu8_epi16(bytes), powers);
                    _mm256_mulhi_epu16(shifted, _mm256_set1_epi16(3))
                };
                let low = half(_mm256_castsi256_si128(bytes), &powers[..16]);
                let high = half(_mm256_extracti128_si256::<1>(bytes), &powers[16..]);
                // `packus` interleaves the halves' 128-bit lanes; the permute restores order.
                _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(low, high))
            }

            /// A TQ1_0 block's codes, 32 values per register.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn tq1_codes(b: &[u8]) -> [__m256i; 8] {
                let first = _mm256_loadu_si256(b.as_ptr() as *const __m256i);
                let rest = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                    b[32..].as_ptr() as *const __m128i
                ));
                let qh = i32::from_le_bytes([b[48], b[49], b[50], b[51]]);
                // Values 224..240 are code 4 of `rest`, 240..256 code j/4 of qh byte j%4.
                let last = _mm256_inserti128_si256::<1>(rest, _mm_set1_epi32(qh));
                let sources = [first, first, first, first, first, rest, rest, last];
                std::array::from_fn(|r| trits(sources[r], &TRIT_POWERS[r]))
            }

            /// A TQ2_0 block's codes, 32 values per register.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn tq2_codes(b: &[u8]) -> [__m256i; 8] {
                let mask = _mm256_set1_epi8(3);
                let low = _mm256_loadu_si256(b.as_ptr() as *const __m256i);
                let high = _mm256_loadu_si256(b[32..].as_ptr() as *const __m256i);
                let pick = |v: __m256i, l: i32| {
                    _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * l)), mask)
                };
                [
                    pick(low, 0),
                    pick(low, 1),
                    pick(low, 2),
                    pick(low, 3),
                    pick(high, 0),
                    pick(high, 1),
                    pick(high, 2),
                    pick(high, 3),
                ]
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_ternary_q8_k<const N: usize>(
                ty: GgmlType,
                w: &[u8],
                g: &TokenGroup<N>,
            ) -> [f32; N] {
                match ty {
                    GgmlType::TQ1_0 => dot::<true, N>(w, g),
                    _ => dot::<false, N>(w, g),
                }
            }

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dot<const TQ1: bool, const N: usize>(
                w: &[u8],
                g: &TokenGroup<N>,
            ) -> [f32; N] {
                let ty = if TQ1 {
                    GgmlType::TQ1_0
                } else {
                    GgmlType::TQ2_0
                };
                let ones = _mm256_set1_epi16(1);
                let mut acc = [_mm256_setzero_ps(); N];
                for (b, wb) in w.chunks_exact(ty.type_size()).enumerate() {
                    prefetch_block(wb);
                    let codes = if TQ1 { tq1_codes(wb) } else { tq2_codes(wb) };
                    let d_w = f16_at(wb, scale_at(ty));
                    for n in 0..N {
                        let x = &g.rows[n][b * Q8K_BLOCK..(b + 1) * Q8K_BLOCK];
                        let mut sum16 = _mm256_setzero_si256();
                        for (c, codes) in codes.iter().enumerate() {
                            let xs = _mm256_loadu_si256(x[4 + 32 * c..].as_ptr() as *const __m256i);
                            sum16 = _mm256_add_epi16(sum16, _mm256_maddubs_epi16(*codes, xs));
                        }
                        let bsums = _mm256_loadu_si256(x[260..].as_ptr() as *const __m256i);
                        let lanes = _mm256_sub_epi32(
                            _mm256_madd_epi16(sum16, ones),
                            _mm256_madd_epi16(bsums, ones),
                        );
                        let d = _mm256_set1_ps(q8k_d(x) * d_w);
                        acc[n] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), acc[n]);
                    }
                }
                acc.map(|a| lane_tree(a))
            }
        }
    };
}

x86_ternary_kernels!(avx2, "avx2,fma,f16c", false);
x86_ternary_kernels!(
    avx512,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    true
);
