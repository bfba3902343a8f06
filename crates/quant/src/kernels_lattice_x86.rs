//! x86 SIMD twins of the codebook i-quant kernels (`iquants_lattice::dot_lattice_q8_k`):
//! each block decoded once through the format's accessors (`group`, `scale`, `step`), its
//! 32 groups of coordinates and sign bytes gathered into eight registers each, then
//! multiplied with every token's Q8_K block as the K-quant kernels do (`maddubs` of the magnitudes with the activations
//! signed by the weights). The integer sums are exact and the float steps are the scalar
//! twin's, so the results are bit-identical to it.

use crate::iquants_lattice::{factor, group, scale, step, Group, LATTICE_TYPES};
use crate::kernels::TokenGroup;
use crate::kernels_k::{q8k_d, Q8K_BLOCK};
use crate::kernels_k_x86::{prefetch_block, Unpacked};
use core::arch::x86_64::*;
use gguf::GgmlType;

/// One in every byte: IQ1's coordinate magnitudes are its coordinates' low bits.
const ONES: u64 = 0x0101_0101_0101_0101;

/// For each sign byte, the word whose byte j is −1 where bit j is set, else 1: what
/// `_mm256_sign_epi8` needs to negate an activation or keep it.
static SIGN_WORDS: [u64; 256] = {
    let mut words = [0u64; 256];
    let mut bits = 0;
    while bits < 256 {
        let mut j = 0;
        while j < 8 {
            let byte: u64 = if (bits >> j) & 1 == 1 { 0xff } else { 0x01 };
            words[bits] |= byte << (8 * j);
            j += 1;
        }
        bits += 1;
    }
    words
};

/// Group `k`'s words as `_mm256_maddubs_epi16` and `_mm256_sign_epi8` read them: the
/// magnitudes of its coordinates, their signs, and (IQ1) its shift's sign in every byte.
#[inline(always)]
fn words_of(ty: GgmlType, wb: &[u8], k: usize) -> [u64; 3] {
    let Group {
        point,
        signs,
        shift,
    } = group(ty, wb, k);
    let shift = if shift < 0 { u64::MAX } else { ONES };
    match ty {
        GgmlType::IQ1_S | GgmlType::IQ1_M => [point & ONES, point, shift],
        _ => [point, SIGN_WORDS[signs as usize], shift],
    }
}

/// The tiled order's exact integer Σ scale·code·x of one block for N tokens, with
/// AVX-512 VNNI: `codes` (signed, as the tiled kernels read them) are biased by 128 to
/// unsigned bytes for `vpdpbusd`, four products per i32 lane, each lane scaled by its
/// 16 values' scale; the bias comes off as 128 · Σ scale · (Q8_K's sums of 16).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tiled_sums_avx512<const N: usize>(
    codes: &[__m256i; 8],
    scales: __m256i,
    rows: &[&[u8]; N],
    b: usize,
) -> [i32; N] {
    let bias = _mm256_set1_epi8(-128);
    let scales32 = _mm512_cvtepi16_epi32(scales);
    let quarter = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let mut biased = [_mm512_setzero_si512(); 4];
    let mut lane_scales = [_mm512_setzero_si512(); 4];
    for r in 0..4 {
        let low = _mm256_xor_si256(codes[2 * r], bias);
        let high = _mm256_xor_si256(codes[2 * r + 1], bias);
        biased[r] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high);
        // Lane j of register r holds values 64r + 4j..+4, of scale 4r + j/4.
        let pick = _mm512_add_epi32(_mm512_set1_epi32(4 * r as i32), quarter);
        lane_scales[r] = _mm512_permutexvar_epi32(pick, scales32);
    }
    let mut out = [0i32; N];
    for n in 0..N {
        let x = &rows[n][b * Q8K_BLOCK..(b + 1) * Q8K_BLOCK];
        let mut acc = _mm512_setzero_si512();
        for r in 0..4 {
            let xs = _mm512_loadu_si512(x[4 + 64 * r..].as_ptr() as *const __m512i);
            let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), biased[r], xs);
            acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(p, lane_scales[r]));
        }
        let bsums = _mm256_loadu_si256(x[260..].as_ptr() as *const __m256i);
        let offset = _mm256_slli_epi32::<7>(_mm256_madd_epi16(bsums, scales));
        out[n] = _mm512_reduce_add_epi32(_mm512_sub_epi32(acc, _mm512_zextsi256_si512(offset)));
    }
    out
}

macro_rules! x86_lattice_kernels {
    ($module:ident, $features:literal, $avx512:literal) => {
        pub mod $module {
            use super::*;
            use crate::kernels_k_x86::$module::{signed_lanes, spread, OrderedSums};
            use crate::kernels_x86::$module::{lane_total, lane_tree};

            /// A block's `words_of` as eight registers each.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn registers<const KIND: usize>(wb: &[u8]) -> [[__m256i; 8]; 3] {
                let ty = LATTICE_TYPES[KIND];
                let mut out = [[_mm256_setzero_si256(); 8]; 3];
                for c in 0..8 {
                    let w0 = words_of(ty, wb, 4 * c);
                    let w1 = words_of(ty, wb, 4 * c + 1);
                    let w2 = words_of(ty, wb, 4 * c + 2);
                    let w3 = words_of(ty, wb, 4 * c + 3);
                    for (i, out) in out.iter_mut().enumerate() {
                        let (a, b, c2, d) = (w0[i], w1[i], w2[i], w3[i]);
                        out[c] = _mm256_set_epi64x(d as i64, c2 as i64, b as i64, a as i64);
                    }
                }
                out
            }

            /// One kernel per type and order, so that each decodes without asking which
            /// type it is and adds without asking which order.
            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_lattice_q8_k<const N: usize>(
                ty: GgmlType,
                w: &[u8],
                g: &TokenGroup<N>,
            ) -> [f32; N] {
                match g.batched {
                    true => by_type::<N, true>(ty, w, g),
                    false => by_type::<N, false>(ty, w, g),
                }
            }

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn by_type<const N: usize, const BATCHED: bool>(
                ty: GgmlType,
                w: &[u8],
                g: &TokenGroup<N>,
            ) -> [f32; N] {
                use GgmlType::*;
                match ty {
                    IQ2_XXS => dot::<0, N, BATCHED>(w, g),
                    IQ2_XS => dot::<1, N, BATCHED>(w, g),
                    IQ2_S => dot::<2, N, BATCHED>(w, g),
                    IQ3_XXS => dot::<3, N, BATCHED>(w, g),
                    IQ3_S => dot::<4, N, BATCHED>(w, g),
                    IQ1_S => dot::<5, N, BATCHED>(w, g),
                    _ => dot::<6, N, BATCHED>(w, g),
                }
            }

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dot<const KIND: usize, const N: usize, const BATCHED: bool>(
                w: &[u8],
                g: &TokenGroup<N>,
            ) -> [f32; N] {
                let ty = LATTICE_TYPES[KIND];
                let iq1 = matches!(ty, GgmlType::IQ1_S | GgmlType::IQ1_M);
                let factor = factor(ty);
                let mut sums: [OrderedSums; N] = std::array::from_fn(|_| OrderedSums::new());
                // IQ1's shifts for decoding tokens: eight lanes (IQ1_M) or one sum (IQ1_S).
                let mut shift_lanes = [_mm256_setzero_ps(); N];
                let mut shift_sums = [0.0f32; N];
                let ones = _mm256_set1_epi8(1);
                for (b, wb) in w.chunks_exact(ty.type_size()).enumerate() {
                    prefetch_block(wb);
                    let step = step(ty, wb);
                    let scales: [i16; 16] = std::array::from_fn(|h| scale(ty, wb, h));
                    let scales16 = _mm256_loadu_si256(scales.as_ptr() as *const __m256i);
                    let [codes, signs, shift_signs] = registers::<KIND>(wb);
                    if BATCHED && $avx512 {
                        let mut tiled = [_mm256_setzero_si256(); 8];
                        for c in 0..8 {
                            tiled[c] = if iq1 {
                                // 8 · coordinate + shift.
                                let eights = _mm256_sign_epi8(_mm256_set1_epi8(8), signs[c]);
                                _mm256_add_epi8(eights, _mm256_sign_epi8(ones, shift_signs[c]))
                            } else {
                                _mm256_sign_epi8(codes[c], signs[c])
                            };
                        }
                        let block = tiled_sums_avx512::<N>(&tiled, scales16, &g.rows, b);
                        for n in 0..N {
                            let d_a = q8k_d(&g.rows[n][b * Q8K_BLOCK..]);
                            sums[n].add_tiled(block[n], step * factor, d_a);
                        }
                        continue;
                    }
                    let scales = spread(scales16, |c| 2 * c, |c| 2 * c + 1);
                    let u = Unpacked { codes, scales };
                    let shift_codes = Unpacked {
                        codes: [ones; 8],
                        scales,
                    };
                    let shifts = iq1.then_some((shift_codes, shift_signs));
                    for n in 0..N {
                        let x = &g.rows[n][b * Q8K_BLOCK..(b + 1) * Q8K_BLOCK];
                        let d_a = q8k_d(x);
                        let lanes = signed_lanes(&u, &signs, x);
                        let Some((shifts, shift_signs)) = &shifts else {
                            let d_w = if BATCHED { step * factor } else { step };
                            sums[n].add_block(BATCHED, lanes, d_w, d_a);
                            continue;
                        };
                        let shift = signed_lanes(shifts, shift_signs, x);
                        if BATCHED {
                            // The tiled kernels' codes are 8 · coordinate + shift.
                            let codes = _mm256_add_epi32(_mm256_slli_epi32::<3>(lanes), shift);
                            sums[n].add_block(true, codes, step * factor, d_a);
                            continue;
                        }
                        sums[n].add_block(false, lanes, step, d_a);
                        if ty == GgmlType::IQ1_M {
                            let (d, shift) =
                                (_mm256_set1_ps(d_a * step), _mm256_cvtepi32_ps(shift));
                            shift_lanes[n] = _mm256_fmadd_ps(d, shift, shift_lanes[n]);
                        } else {
                            let sum = lane_total(shift) as f32;
                            shift_sums[n] = (d_a * step).mul_add(sum, shift_sums[n]);
                        }
                    }
                }
                std::array::from_fn(|n| {
                    let (shift_lanes, shift_sum) = (shift_lanes[n], shift_sums[n]);
                    let sums = std::mem::replace(&mut sums[n], OrderedSums::new());
                    match (BATCHED, ty) {
                        (true, _) => sums.total(true),
                        (false, GgmlType::IQ1_M) => {
                            sums.total(false) + 0.125 * lane_tree(shift_lanes)
                        }
                        (false, GgmlType::IQ1_S) => sums.total(false) + 0.125 * shift_sum,
                        (false, _) => factor * sums.total(false),
                    }
                })
            }
        }
    };
}

x86_lattice_kernels!(avx2, "avx2,fma,f16c", false);
x86_lattice_kernels!(
    avx512,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    true
);
