//! x86 SIMD twins of the K-quant (and IQ4_XS) kernels in `kernels_k.rs`: one weight row
//! against N tokens, each 256-value block unpacked once into eight registers of 32 byte
//! codes and per-value i16 scales, then multiplied with every token's Q8_K block. The
//! integer sums are exact, and the float steps are the scalar twins' (`MinSums` for Q2_K
//! and Q4_K, `TiledSums` for Q5_K, either for Q3_K, Q6_K and IQ4_XS), so
//! the results are bit-identical to theirs.

use crate::kernels::TokenGroup;
use crate::kernels_k::{q8k_d, MinSums, TiledSums, Q8K_BLOCK};
use crate::kernels_x86::iq4_level_bytes;
use crate::kquants::q3_k_scales;
use core::arch::x86_64::*;

/// A block's 256 codes as eight registers of 32 (values 32c..32c+32 in register c) and,
/// for each, the i16 scale of every byte pair.
pub(crate) struct Unpacked {
    pub(crate) codes: [__m256i; 8],
    pub(crate) scales: [__m256i; 8],
}

/// How far ahead of the block being multiplied a kernel asks for the weights.
const PREFETCH_DISTANCE: usize = 16384;

/// Asks for the weights `PREFETCH_DISTANCE` bytes past the start of `block` (the rows
/// of a tile lie one after another), into the L2: a steady stream, a block's lines at a
/// time. A burst of several rows' lines at once (as `matmul` prefetches for the other
/// kernels) stalled on the fill buffers: a Q6_K file decoded 1.6× slower with it.
#[inline(always)]
pub(crate) fn prefetch_block(block: &[u8]) {
    let ahead = block.as_ptr().wrapping_add(PREFETCH_DISTANCE);
    for line in 0..block.len().div_ceil(64) {
        // SAFETY: prefetching has no effect but on the caches, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64 * line) as *const i8) };
    }
}

macro_rules! x86_k_kernels {
    ($module:ident, $features:literal, $madd_acc:ident) => {
        pub mod $module {
            use super::*;
            use crate::f16_at;
            use crate::kernels_x86::$module::{lane_total, load, total};

            /// acc + Σ pairs of (scale · Σ pairs of code·x), as eight i32 lanes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn lanes(u: &Unpacked, x: &[u8]) -> __m256i {
                let mut acc = _mm256_setzero_si256();
                for c in 0..8 {
                    let p16 = _mm256_maddubs_epi16(u.codes[c], load(&x[4 + 32 * c..]));
                    acc = $madd_acc(acc, u.scales[c], p16);
                }
                acc
            }

            /// `lanes` for signed codes: `u.codes` holds their magnitudes and `signs` the
            /// codes themselves, whose signs move onto the activations.
            #[inline]
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn signed_lanes(
                u: &Unpacked,
                signs: &[__m256i; 8],
                x: &[u8],
            ) -> __m256i {
                let mut acc = _mm256_setzero_si256();
                for c in 0..8 {
                    let x = _mm256_sign_epi8(load(&x[4 + 32 * c..]), signs[c]);
                    acc = $madd_acc(acc, u.scales[c], _mm256_maddubs_epi16(u.codes[c], x));
                }
                acc
            }

            /// Σ_j min_j · (activation sum of 32-value sub-block j), from the Q8_K block's
            /// sixteen sums of 16.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn min_sum(mins: __m128i, x: &[u8]) -> i32 {
                let bsums = load(&x[260..]);
                let pairs = _mm_hadd_epi16(
                    _mm256_castsi256_si128(bsums),
                    _mm256_extracti128_si256::<1>(bsums),
                );
                let p = _mm_madd_epi16(mins, pairs);
                let p = _mm_add_epi32(p, _mm_shuffle_epi32::<0b01_00_11_10>(p));
                let p = _mm_add_epi32(p, _mm_shuffle_epi32::<0b10_11_00_01>(p));
                _mm_cvtsi128_si32(p)
            }

            /// One token's sums for the types whose order follows the token's role
            /// (`kernels_k::dot_by_order`): eight float lanes (`LaneSums`) for a
            /// decoding token, `TiledSums` for a prompt's.
            pub(crate) struct OrderedSums {
                lanes: __m256,
                tiled: TiledSums,
            }

            impl OrderedSums {
                pub(crate) fn new() -> Self {
                    // SAFETY: only built inside kernels with these target features.
                    let lanes = unsafe { _mm256_setzero_ps() };
                    OrderedSums {
                        lanes,
                        tiled: TiledSums::default(),
                    }
                }

                /// Adds a block's eight integer lanes, scaled by `d_w` and `d_a`.
                #[inline]
                #[target_feature(enable = $features)]
                pub(crate) unsafe fn add_block(
                    &mut self,
                    batched: bool,
                    lanes: __m256i,
                    d_w: f32,
                    d_a: f32,
                ) {
                    if batched {
                        self.add_tiled(lane_total(lanes), d_w, d_a);
                    } else {
                        let l = _mm256_cvtepi32_ps(lanes);
                        self.lanes = _mm256_fmadd_ps(_mm256_set1_ps(d_a * d_w), l, self.lanes);
                    }
                }

                /// Adds a block's exact integer Σ scale·q·a in the tiled order.
                #[inline(always)]
                pub(crate) fn add_tiled(&mut self, sum: i32, d_w: f32, d_a: f32) {
                    self.tiled.add_block(d_w, sum, 0.0, 0, d_a);
                }

                #[inline]
                #[target_feature(enable = $features)]
                pub(crate) unsafe fn total(self, batched: bool) -> f32 {
                    match batched {
                        true => self.tiled.acc,
                        false => total(self.lanes, 0.0),
                    }
                }
            }

            /// The 32 low (`HIGH` false) or high nibbles of 32 bytes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn nibbles<const HIGH: bool>(raw: __m256i) -> __m256i {
                let v = if HIGH {
                    _mm256_srli_epi16::<4>(raw)
                } else {
                    raw
                };
                _mm256_and_si256(v, _mm256_set1_epi8(0x0f))
            }

            /// Bit `bit` of each of 32 bytes, as 0 or 1.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn bit_of(raw: __m256i, bit: i32) -> __m256i {
                let shifted = _mm256_srl_epi16(raw, _mm_cvtsi32_si128(bit));
                _mm256_and_si256(shifted, _mm256_set1_epi8(1))
            }

            /// Register c's scales from sixteen i16 `s` (low 128 bits: elements 0..8):
            /// element `first(c)` for its first 16 bytes, `second(c)` for the last 16.
            #[inline]
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn spread(
                s: __m256i,
                first: impl Fn(usize) -> usize,
                second: impl Fn(usize) -> usize,
            ) -> [__m256i; 8] {
                let halves = [
                    _mm256_permute2x128_si256::<0x00>(s, s),
                    _mm256_permute2x128_si256::<0x11>(s, s),
                ];
                std::array::from_fn(|c| {
                    let (a, b) = (first(c), second(c));
                    debug_assert_eq!(a / 8, b / 8);
                    let pick = |e: usize| (((2 * (e % 8) + 1) << 8) | (2 * (e % 8))) as i16;
                    let mask = _mm256_set_m128i(_mm_set1_epi16(pick(b)), _mm_set1_epi16(pick(a)));
                    _mm256_shuffle_epi8(halves[a / 8], mask)
                })
            }

            /// A Q4_K/Q5_K block's eight 6-bit scales (i16 elements 0..8) and mins
            /// (8..16), unpacked from `scales[12]` four at a time.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn k4_scales_mins(q: &[u8]) -> __m256i {
                let word = |i: usize| {
                    u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]])
                };
                let (w0, w1, w2) = (word(0), word(1), word(2));
                let (low6, low4, top2) = (0x3f3f_3f3f, 0x0f0f_0f0f, 0x0303_0303);
                let scales_hi = (w2 & low4) | (((w0 >> 6) & top2) << 4);
                let mins_hi = ((w2 >> 4) & low4) | (((w1 >> 6) & top2) << 4);
                let bytes = _mm_set_epi32(
                    mins_hi as i32,
                    (w1 & low6) as i32,
                    scales_hi as i32,
                    (w0 & low6) as i32,
                );
                _mm256_cvtepu8_epi16(bytes)
            }

            /// An IQ4_XS block's eight sub-block scales (code − 32) as i16 elements 0..8:
            /// low four bits from `scales_l`, high two from `scales_h` (moved to the top of
            /// each lane by a multiply, then down).
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn iq4_xs_scales(wb: &[u8]) -> __m256i {
                let high = _mm_set1_epi16(i16::from_le_bytes([wb[2], wb[3]]));
                let spread_high =
                    _mm_setr_epi16(1 << 14, 1 << 12, 1 << 10, 1 << 8, 1 << 6, 1 << 4, 1 << 2, 1);
                let high = _mm_srli_epi16::<14>(_mm_mullo_epi16(high, spread_high));
                let low = _mm_cvtsi32_si128(i32::from_le_bytes([wb[4], wb[5], wb[6], wb[7]]));
                let low4 = _mm_set1_epi8(0x0f);
                let nibbles = _mm_unpacklo_epi8(
                    _mm_and_si128(low, low4),
                    _mm_and_si128(_mm_srli_epi16::<4>(low), low4),
                );
                let codes = _mm_or_si128(_mm_cvtepu8_epi16(nibbles), _mm_slli_epi16::<4>(high));
                _mm256_zextsi128_si256(_mm_sub_epi16(codes, _mm_set1_epi16(32)))
            }

            /// Q4_K/Q5_K codes: bytes 32p..32p+32 of `qs` hold registers 2p (low nibbles)
            /// and 2p + 1 (high nibbles).
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn k4_codes(qs: &[u8]) -> [__m256i; 8] {
                std::array::from_fn(|c| {
                    let raw = load(&qs[32 * (c / 2)..]);
                    if c % 2 == 0 {
                        nibbles::<false>(raw)
                    } else {
                        nibbles::<true>(raw)
                    }
                })
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q4_k_q8_k<const N: usize>(w: &[u8], g: &TokenGroup<N>) -> [f32; N] {
                let mut sums: [MinSums; N] = std::array::from_fn(|_| MinSums::default());
                for (b, wb) in w.chunks_exact(144).enumerate() {
                    prefetch_block(wb);
                    let scales_mins = k4_scales_mins(&wb[4..16]);
                    let u = Unpacked {
                        codes: k4_codes(&wb[16..]),
                        scales: spread(scales_mins, |c| c, |c| c),
                    };
                    let mins = _mm256_extracti128_si256::<1>(scales_mins);
                    let (dw, dmin) = (f16_at(wb, 0), f16_at(wb, 2));
                    for n in 0..N {
                        let x = &g.rows[n][b * Q8K_BLOCK..(b + 1) * Q8K_BLOCK];
                        let sum = lane_total(lanes(&u, x));
                        let d = q8k_d(x);
                        sums[n].add_block(dw * d, sum, dmin * d, min_sum(mins, x));
                    }
                }
                sums.map(MinSums::total)
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q2_k_q8_k<const N: usize>(w: &[u8], g: &TokenGroup<N>) -> [f32; N] {
                let mut sums: [MinSums; N] = std::array::from_fn(|_| MinSums::default());
                let low4 = _mm_set1_epi8(0x0f);
                for (b, wb) in w.chunks_exact(84).enumerate() {
                    prefetch_block(wb);
                    let packed = _mm_loadu_si128(wb.as_ptr() as *const __m128i);
                    let scales = _mm256_cvtepu8_epi16(_mm_and_si128(packed, low4));
                    let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), low4));
                    let qs = [load(&wb[16..]), load(&wb[48..])];
                    let u = Unpacked {
                        codes: std::array::from_fn(|c| {
                            let shift = _mm_cvtsi32_si128(2 * (c as i32 % 4));
                            _mm256_and_si256(
                                _mm256_srl_epi16(qs[c / 4], shift),
                                _mm256_set1_epi8(3),
                            )
                        }),
                        scales: spread(scales, |c| 2 * c, |c| 2 * c + 1),
                    };
                    let (dw, dmin) = (f16_at(wb, 80), f16_at(wb, 82));
                    for n in 0..N {
                        let x = &g.rows[n][b * Q8K_BLOCK..(b + 1) * Q8K_BLOCK];
                        let sum = lane_total(lanes(&u, x));
                        let min_sum = lane_total(_mm256_madd_epi16(load(&x[260..]), mins));
                        let d = q8k_d(x);
                        sums[n].add_block(dw * d, sum, dmin * d, min_sum);
                    }
                }
                sums.map(MinSums::total)
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_iq4_xs_q8_k<const N: usize>(w: &[u8], g: &TokenGroup<N>) -> [f32; N] {
                let mut sums: [OrderedSums; N] = std::array::from_fn(|_| OrderedSums::new());
                let low4 = _mm256_set1_epi8(0x0f);
                for (b, wb) in w.chunks_exact(136).enumerate() {
                    prefetch_block(wb);
                    // Sub-blocks 2p and 2p + 1 from one load of their 32 bytes of codes.
                    let mut levels = [_mm256_setzero_si256(); 8];
                    for p in 0..4 {
                        let q = load(&wb[8 + 32 * p..]);
                        let low = _mm256_and_si256(q, low4);
                        let high = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low4);
                        let first = _mm256_permute2x128_si256::<0x20>(low, high);
                        let second = _mm256_permute2x128_si256::<0x31>(low, high);
                        levels[2 * p] = iq4_level_bytes(first);
                        levels[2 * p + 1] = iq4_level_bytes(second);
                    }
                    let u = Unpacked {
                        codes: levels.map(|q| _mm256_sign_epi8(q, q)),
                        scales: spread(iq4_xs_scales(wb), |c| c, |c| c),
                    };
                    let dw = f16_at(wb, 0);
                    for n in 0..N {
                        let x = &g.rows[n][b * Q8K_BLOCK..(b + 1) * Q8K_BLOCK];
                        let l = signed_lanes(&u, &levels, x);
                        sums[n].add_block(g.batched, l, dw, q8k_d(x));
                    }
                }
                sums.map(|s| s.total(g.batched))
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q5_k_q8_k<const N: usize>(w: &[u8], g: &TokenGroup<N>) -> [f32; N] {
                let mut sums: [TiledSums; N] = std::array::from_fn(|_| TiledSums::default());
                for (b, wb) in w.chunks_exact(176).enumerate() {
                    prefetch_block(wb);
                    let scales_mins = k4_scales_mins(&wb[4..16]);
                    let high = load(&wb[16..]);
                    let mut codes = k4_codes(&wb[48..]);
                    for (c, code) in codes.iter_mut().enumerate() {
                        let fifth = _mm256_slli_epi16::<4>(bit_of(high, c as i32));
                        *code = _mm256_or_si256(*code, fifth);
                    }
                    let u = Unpacked {
                        codes,
                        scales: spread(scales_mins, |c| c, |c| c),
                    };
                    let mins = _mm256_extracti128_si256::<1>(scales_mins);
                    let (dw, dmin) = (f16_at(wb, 0), f16_at(wb, 2));
                    for n in 0..N {
                        let x = &g.rows[n][b * Q8K_BLOCK..(b + 1) * Q8K_BLOCK];
                        let sum = lane_total(lanes(&u, x));
                        sums[n].add_block(dw, sum, dmin, min_sum(mins, x), q8k_d(x));
                    }
                }
                sums.map(|s| s.acc)
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q3_k_q8_k<const N: usize>(w: &[u8], g: &TokenGroup<N>) -> [f32; N] {
                let mut sums: [OrderedSums; N] = std::array::from_fn(|_| OrderedSums::new());
                for (b, wb) in w.chunks_exact(110).enumerate() {
                    prefetch_block(wb);
                    let hmask = load(&wb[0..]);
                    let low_bits = [load(&wb[32..]), load(&wb[64..])];
                    let signed: [__m256i; 8] = std::array::from_fn(|c| {
                        let shift = _mm_cvtsi32_si128(2 * (c as i32 % 4));
                        let low = _mm256_and_si256(
                            _mm256_srl_epi16(low_bits[c / 4], shift),
                            _mm256_set1_epi8(3),
                        );
                        let high = _mm256_slli_epi16::<2>(bit_of(hmask, c as i32));
                        _mm256_sub_epi8(_mm256_or_si256(low, high), _mm256_set1_epi8(4))
                    });
                    let s = q3_k_scales(&wb[96..108]).map(|v| v as i16);
                    let s = _mm256_loadu_si256(s.as_ptr() as *const __m256i);
                    let scales = spread(s, |c| 2 * c, |c| 2 * c + 1);
                    let dw = f16_at(wb, 108);
                    let u = Unpacked {
                        codes: signed.map(|q| _mm256_sign_epi8(q, q)),
                        scales,
                    };
                    for n in 0..N {
                        let x = &g.rows[n][b * Q8K_BLOCK..(b + 1) * Q8K_BLOCK];
                        let l = signed_lanes(&u, &signed, x);
                        sums[n].add_block(g.batched, l, dw, q8k_d(x));
                    }
                }
                sums.map(|s| s.total(g.batched))
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q6_k_q8_k<const N: usize>(w: &[u8], g: &TokenGroup<N>) -> [f32; N] {
                let mut sums: [OrderedSums; N] = std::array::from_fn(|_| OrderedSums::new());
                let low4 = _mm256_set1_epi8(0x0f);
                let low2 = _mm256_set1_epi8(3);
                for (b, wb) in w.chunks_exact(210).enumerate() {
                    prefetch_block(wb);
                    let mut codes = [_mm256_setzero_si256(); 8];
                    for half in 0..2 {
                        let l1 = load(&wb[64 * half..]);
                        let l2 = load(&wb[64 * half + 32..]);
                        let hb = load(&wb[128 + 32 * half..]);
                        let high = |shift: i32| {
                            let s = _mm256_srl_epi16(hb, _mm_cvtsi32_si128(shift));
                            _mm256_slli_epi16::<4>(_mm256_and_si256(s, low2))
                        };
                        let c = &mut codes[4 * half..4 * half + 4];
                        c[0] = _mm256_or_si256(_mm256_and_si256(l1, low4), high(0));
                        c[1] = _mm256_or_si256(_mm256_and_si256(l2, low4), high(2));
                        c[2] = _mm256_or_si256(nibbles::<true>(l1), high(4));
                        c[3] = _mm256_or_si256(nibbles::<true>(l2), high(6));
                    }
                    let raw_scales = _mm_loadu_si128(wb[192..].as_ptr() as *const __m128i);
                    let scales_i16 = _mm256_cvtepi8_epi16(raw_scales);
                    let u = Unpacked {
                        codes,
                        scales: spread(scales_i16, |c| 2 * c, |c| 2 * c + 1),
                    };
                    let dw = f16_at(wb, 208);
                    for n in 0..N {
                        let x = &g.rows[n][b * Q8K_BLOCK..(b + 1) * Q8K_BLOCK];
                        let bias = _mm256_madd_epi16(load(&x[260..]), scales_i16);
                        let sum = _mm256_sub_epi32(lanes(&u, x), _mm256_slli_epi32::<5>(bias));
                        sums[n].add_block(g.batched, sum, dw, q8k_d(x));
                    }
                }
                sums.map(|s| s.total(g.batched))
            }
        }
    };
}

#[inline(always)]
unsafe fn madd_add(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
}

#[inline(always)]
unsafe fn vnni_madd_add(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(acc, a, b)
}

x86_k_kernels!(avx2, "avx2,fma,f16c", madd_add);
x86_k_kernels!(
    avx512,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    vnni_madd_add
);
