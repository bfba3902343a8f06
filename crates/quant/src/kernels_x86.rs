//! x86 SIMD twins of the kernels in `kernels.rs`: the integer part of each block's dot
//! product uses AVX2 (`maddubs`/`madd`) or AVX-512 VNNI (`dpbusd`); the float part is the
//! scalar twin's expression in the scalar twin's order, so results are bit-identical.
//! Tests compare every one with its scalar twin on random data.

use core::arch::x86_64::*;

/// Σ of the eight i32 lanes.
#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// The 32 nibbles of a Q4 block as bytes: low nibbles (values 0..16) then high (16..32).
#[inline(always)]
unsafe fn nibbles(qs: *const u8) -> __m256i {
    let raw = _mm_loadu_si128(qs as *const __m128i);
    let mask = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(raw, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
    _mm256_set_m128i(hi, lo)
}

/// The 32 five-bit values of a Q5 block as bytes (0..32).
#[inline(always)]
unsafe fn five_bit(qs: *const u8, qh: u32) -> __m256i {
    // Spread the 32 high bits to bytes: byte j gets bit j of qh, as 0x10.
    let bits = _mm256_set1_epi32(qh as i32);
    let shuffle = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(bits, shuffle);
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, select), select);
    _mm256_or_si256(nibbles(qs), _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
}

macro_rules! x86_kernels {
    ($module:ident, $features:literal, $u8_i8_dot:ident) => {
        pub mod $module {
            use super::*;
            use crate::f16_at;

            /// Σ u[j]·i[j] over 32 unsigned × signed bytes, as eight i32 partial sums.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dot32(u: __m256i, i: __m256i) -> __m256i {
                $u8_i8_dot(u, i)
            }

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load(p: &[u8]) -> __m256i {
                _mm256_loadu_si256(p.as_ptr() as *const __m256i)
            }

            /// Σ x over 32 signed bytes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn sum_i8(x: __m256i) -> i32 {
                hsum_i32(dot32(_mm256_set1_epi8(1), x))
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q4_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
                let mut sum = 0.0f32;
                for (wb, ab) in w.chunks_exact(18).zip(a.chunks_exact(34)) {
                    let x = load(&ab[2..34]);
                    let sumi = hsum_i32(dot32(nibbles(wb[2..].as_ptr()), x)) - 8 * sum_i8(x);
                    sum += f16_at(wb, 0) * f16_at(ab, 0) * sumi as f32;
                }
                sum
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q4_1_q8_1(w: &[u8], a: &[u8]) -> f32 {
                let mut sum = 0.0f32;
                for (wb, ab) in w.chunks_exact(20).zip(a.chunks_exact(36)) {
                    let sumi = hsum_i32(dot32(nibbles(wb[4..].as_ptr()), load(&ab[4..36])));
                    sum += f16_at(wb, 0) * f16_at(ab, 0) * sumi as f32 + f16_at(wb, 2) * f16_at(ab, 2);
                }
                sum
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q5_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
                let mut sum = 0.0f32;
                for (wb, ab) in w.chunks_exact(22).zip(a.chunks_exact(34)) {
                    let qh = u32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]);
                    let x = load(&ab[2..34]);
                    let sumi = hsum_i32(dot32(five_bit(wb[6..].as_ptr(), qh), x)) - 16 * sum_i8(x);
                    sum += f16_at(wb, 0) * f16_at(ab, 0) * sumi as f32;
                }
                sum
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q5_1_q8_1(w: &[u8], a: &[u8]) -> f32 {
                let mut sum = 0.0f32;
                for (wb, ab) in w.chunks_exact(24).zip(a.chunks_exact(36)) {
                    let qh = u32::from_le_bytes([wb[4], wb[5], wb[6], wb[7]]);
                    let sumi = hsum_i32(dot32(five_bit(wb[8..].as_ptr(), qh), load(&ab[4..36])));
                    sum += f16_at(wb, 0) * f16_at(ab, 0) * sumi as f32 + f16_at(wb, 2) * f16_at(ab, 2);
                }
                sum
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q8_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
                let mut sum = 0.0f32;
                for (wb, ab) in w.chunks_exact(34).zip(a.chunks_exact(34)) {
                    let q = load(&wb[2..34]);
                    let x = load(&ab[2..34]);
                    // |q| · (x with q's sign) = q·x, with the unsigned operand first.
                    let sumi = hsum_i32(dot32(_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q)));
                    sum += f16_at(wb, 0) * f16_at(ab, 0) * sumi as f32;
                }
                sum
            }
        }
    };
}

#[inline(always)]
unsafe fn maddubs_dot(u: __m256i, i: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, i), _mm256_set1_epi16(1))
}

#[inline(always)]
unsafe fn vnni_dot(u: __m256i, i: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, i)
}

x86_kernels!(avx2, "avx2,fma,f16c", maddubs_dot);
x86_kernels!(avx512, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c", vnni_dot);
