//! x86 SIMD twins of the kernels in `kernels.rs`: each block's eight integer lane sums
//! come from AVX2 (`maddubs`/`madd`) or AVX-512 VNNI (`dpbusd`), and the float part
//! follows `LaneSums` (or, for Q4_0, `BlockSums`) operation for operation, so
//! results are bit-identical. Signed weights (Q8_0, IQ4_NL, and Q4_0 and Q5_0 less their
//! offset) meet the activations as |w| · (x with w's sign), which gives the same
//! integer products with the unsigned operand first. The activations come block-major
//! (`TokenGroup::qs`, `d_wide`) so that a kernel walks one pointer through a group of
//! tokens, and several weight rows advance side by side when there are few tokens.
//! Tests compare every one with its scalar twin on random data.

use crate::f16_at;
use crate::kernels::TokenGroup;
use core::arch::x86_64::*;

/// The 32 nibbles of a Q4 block as bytes: low nibbles (values 0..16) then high (16..32).
#[inline(always)]
unsafe fn nibbles(qs: *const u8) -> __m256i {
    let raw = _mm_loadu_si128(qs as *const __m128i);
    let mask = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(raw, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
    _mm256_set_m128i(hi, lo)
}

/// The 32 levels of an IQ4 block's codes (`qs`: 16 bytes, GGML's Q4 order) as signed
/// bytes.
#[inline(always)]
pub(crate) unsafe fn iq4_levels(qs: *const u8) -> __m256i {
    iq4_level_bytes(nibbles(qs))
}

/// Each byte's code (0..16) replaced by its level in `IQ4_LEVELS`.
#[inline(always)]
pub(crate) unsafe fn iq4_level_bytes(codes: __m256i) -> __m256i {
    let table = _mm_loadu_si128(crate::iquants::IQ4_LEVELS.as_ptr() as *const __m128i);
    _mm256_shuffle_epi8(_mm256_set_m128i(table, table), codes)
}

/// The 32 five-bit values of a Q5 block as bytes (0..32), with AVX2: each high bit
/// spread to its byte by a shuffle and a compare.
#[inline(always)]
unsafe fn five_bit_avx2(qs: *const u8, qh: u32) -> __m256i {
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

/// `five_bit_avx2` with AVX-512: the 32 high bits are a byte mask, so one masked add
/// puts the 16s in.
#[inline(always)]
unsafe fn five_bit_avx512(qs: *const u8, qh: u32) -> __m256i {
    let low = nibbles(qs);
    _mm256_mask_add_epi8(low, qh, low, _mm256_set1_epi8(0x10))
}

macro_rules! x86_kernels {
    ($module:ident, $features:literal, $u8_i8_dot:ident, $five_bit:ident) => {
        pub mod $module {
            use super::*;

            /// The f16 at `b[at..at + 2]` in all eight lanes. Every lane is used, so the
            /// compiler cannot narrow the broadcast to a 16-bit insert into whatever
            /// register it picks. Scalar scales go through `crate::f16_at`'s integer
            /// bits for the same reason: widened by F16C, LLVM inserted them
            /// (`vpinsrw`) into a register that held a row's accumulator, a false
            /// dependency that chained each block to the previous block's sum.
            #[inline]
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn f16_broadcast(b: &[u8], at: usize) -> __m256 {
                let h = u16::from_le_bytes([b[at], b[at + 1]]);
                _mm256_cvtph_ps(_mm_set1_epi16(h as i16))
            }

            /// A block's scale d (f16 at byte 0) in all eight lanes and its min m (at
            /// byte 2), widened together: both halves of the 32 bits are used, so the
            /// load stays a whole-register `vmovd` (see `f16_broadcast`).
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn scale_and_min(b: &[u8]) -> (__m256, f32) {
                let bits = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
                (
                    _mm256_broadcastss_ps(dm),
                    _mm_cvtss_f32(_mm_movehdup_ps(dm)),
                )
            }

            /// Σ u[j]·i[j] over 32 unsigned × signed bytes, as eight i32 partial sums.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dot32(u: __m256i, i: __m256i) -> __m256i {
                $u8_i8_dot(u, i)
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn load(p: &[u8]) -> __m256i {
                _mm256_loadu_si256(p.as_ptr() as *const __m256i)
            }

            /// Σ of the eight lanes (integers: exact in any order).
            #[inline]
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn lane_total(lanes: __m256i) -> i32 {
                let s = _mm_add_epi32(
                    _mm256_castsi256_si128(lanes),
                    _mm256_extracti128_si256::<1>(lanes),
                );
                let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
                _mm_cvtsi128_si32(s)
            }

            /// `LaneSums::total`: the lanes' `lane_tree`, then the offsets.
            #[inline]
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn total(acc: __m256, offsets: f32) -> f32 {
                lane_tree(acc) + offsets
            }

            /// `kernels::lane_tree`: k + k+4, then k + k+2, then k + k+1.
            #[inline]
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn lane_tree(acc: __m256) -> f32 {
                let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                _mm_cvtss_f32(s)
            }

            /// R weight rows against N activation rows (`[token][row]`): each block of
            /// the weights is loaded and unpacked once for all N tokens (`weight` gives
            /// its unpacked values; d_w is the f16 at byte 0, m_w at byte 2), the R rows'
            /// sums advance side by side so that their dependency chains overlap, and
            /// each output follows exactly the single-row order. `lanes(q, at)` gives the
            /// eight integer lane sums of a weight block with the group's activation
            /// block `at` (= b·N + token);
            /// `OFFSETS` says whether blocks add m_w·s_a; `BLOCKWISE` picks `BlockSums`'
            /// order instead of `LaneSums'`.
            #[inline(always)]
            unsafe fn rows<
                const R: usize,
                const N: usize,
                const WB: usize,
                const OFFSETS: bool,
                const BLOCKWISE: bool,
                Q: Copy,
            >(
                w: [&[u8]; R],
                g: &TokenGroup<N>,
                weight: impl Fn(&[u8]) -> Q,
                lanes: impl Fn(Q, usize) -> __m256i,
            ) -> [[f32; R]; N] {
                let blocks = w[0].len() / WB;
                // The loop reads the group's arrays at b·N + n for every block b: one
                // check here instead of one per read.
                assert!(
                    w.iter().all(|w| w.len() == blocks * WB)
                        && g.d.len() >= blocks * N
                        && g.qs.len() >= blocks * N * 32
                        && g.d_wide.len() >= blocks * N * 8
                        && (!OFFSETS || g.s.len() >= blocks * N)
                );
                let mut acc = [[_mm256_setzero_ps(); R]; N];
                let mut block_sums = [[0.0f32; R]; N];
                let mut offsets = [[0.0f32; R]; N];
                for b in 0..blocks {
                    for r in 0..R {
                        let wb = w[r].get_unchecked(b * WB..(b + 1) * WB);
                        let q = weight(wb);
                        // BLOCKWISE adds scalar products, the lane orders eight lanes.
                        let dw = if BLOCKWISE { f16_at(wb, 0) } else { 0.0 };
                        let (dw8, mw) = match OFFSETS {
                            true => scale_and_min(wb),
                            false => (f16_broadcast(wb, 0), 0.0),
                        };
                        for n in 0..N {
                            let at = b * N + n;
                            let l = lanes(q, at);
                            if BLOCKWISE {
                                let da = *g.d.as_ptr().add(at);
                                block_sums[n][r] =
                                    (dw * da).mul_add(lane_total(l) as f32, block_sums[n][r]);
                            } else {
                                // `LaneSums::add_block`: acc = fma(d_w·d_a, lanes, acc).
                                let da8 = g.d_wide.as_ptr().add(at * 8);
                                let scale = _mm256_mul_ps(dw8, _mm256_loadu_ps(da8));
                                acc[n][r] =
                                    _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(l), acc[n][r]);
                            }
                        }
                        if OFFSETS {
                            for n in 0..N {
                                offsets[n][r] += mw * *g.s.as_ptr().add(b * N + n);
                            }
                        }
                    }
                }
                if BLOCKWISE {
                    return block_sums;
                }
                std::array::from_fn(|n| std::array::from_fn(|r| total(acc[n][r], offsets[n][r])))
            }

            /// The group's 32 activation values at `at` (see `rows`).
            #[inline(always)]
            unsafe fn values<const N: usize>(g: &TokenGroup<N>, at: usize) -> __m256i {
                _mm256_loadu_si256(g.qs.as_ptr().add(at * 32) as *const __m256i)
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q4_0_q8_0<const R: usize, const N: usize>(
                w: [&[u8]; R],
                g: &TokenGroup<N>,
            ) -> [[f32; R]; N] {
                rows::<R, N, 18, false, true, _>(
                    w,
                    g,
                    |wb| {
                        let q = _mm256_sub_epi8(nibbles(wb[2..].as_ptr()), _mm256_set1_epi8(8));
                        (q, _mm256_sign_epi8(q, q))
                    },
                    |(q, abs), at| dot32(abs, _mm256_sign_epi8(values(g, at), q)),
                )
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_iq4_nl_q8_0<const R: usize, const N: usize>(
                w: [&[u8]; R],
                g: &TokenGroup<N>,
            ) -> [[f32; R]; N] {
                rows::<R, N, 18, false, true, _>(
                    w,
                    g,
                    |wb| {
                        let q = iq4_levels(wb[2..].as_ptr());
                        (q, _mm256_sign_epi8(q, q))
                    },
                    |(q, abs), at| dot32(abs, _mm256_sign_epi8(values(g, at), q)),
                )
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q4_1_q8_1<const R: usize, const N: usize>(
                w: [&[u8]; R],
                g: &TokenGroup<N>,
            ) -> [[f32; R]; N] {
                rows::<R, N, 20, true, false, _>(
                    w,
                    g,
                    |wb| nibbles(wb[4..].as_ptr()),
                    |q, at| dot32(q, values(g, at)),
                )
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q5_0_q8_0<const R: usize, const N: usize>(
                w: [&[u8]; R],
                g: &TokenGroup<N>,
            ) -> [[f32; R]; N] {
                rows::<R, N, 22, false, false, _>(
                    w,
                    g,
                    |wb| {
                        let qh = u32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]);
                        let q =
                            _mm256_sub_epi8($five_bit(wb[6..].as_ptr(), qh), _mm256_set1_epi8(16));
                        (q, _mm256_sign_epi8(q, q))
                    },
                    |(q, abs), at| dot32(abs, _mm256_sign_epi8(values(g, at), q)),
                )
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q5_1_q8_1<const R: usize, const N: usize>(
                w: [&[u8]; R],
                g: &TokenGroup<N>,
            ) -> [[f32; R]; N] {
                rows::<R, N, 24, true, false, _>(
                    w,
                    g,
                    |wb| {
                        let qh = u32::from_le_bytes([wb[4], wb[5], wb[6], wb[7]]);
                        $five_bit(wb[8..].as_ptr(), qh)
                    },
                    |q, at| dot32(q, values(g, at)),
                )
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q8_0_q8_0<const R: usize, const N: usize>(
                w: [&[u8]; R],
                g: &TokenGroup<N>,
            ) -> [[f32; R]; N] {
                rows::<R, N, 34, false, false, _>(
                    w,
                    g,
                    |wb| {
                        let q = load(&wb[2..34]);
                        (q, _mm256_sign_epi8(q, q))
                    },
                    // |q| · (x with q's sign) = q·x, with the unsigned operand first.
                    |(q, abs), at| dot32(abs, _mm256_sign_epi8(values(g, at), q)),
                )
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

x86_kernels!(avx2, "avx2,fma,f16c", maddubs_dot, five_bit_avx2);
x86_kernels!(
    avx512,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    vnni_dot,
    five_bit_avx512
);
