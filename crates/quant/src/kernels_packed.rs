//! AVX-512 VNNI kernels over packed weights (`packed`): four weight rows against N tokens
//! per pass. Each (row, token) result follows `LaneSums` operation for operation — the
//! same integer lane sums, one fused multiply-add per lane and block in block order, the
//! same final tree — so it equals the row-major kernels' result bit for bit.

use crate::kernels::TokenGroup;
use core::arch::x86_64::*;
use gguf::GgmlType;

/// The packed weight formats, as const parameters of `rows4`.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

/// Four rows of `w` (one row of packed groups) · N tokens: `out[n][i]` is row i · token n.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot4_packed<const N: usize>(
    ty: GgmlType,
    w: &[u8],
    g: &TokenGroup<N>,
) -> [[f32; 4]; N] {
    match ty {
        GgmlType::Q4_0 => rows4::<N, Q4_0>(w, g),
        GgmlType::Q4_1 => rows4::<N, Q4_1>(w, g),
        GgmlType::Q8_0 => rows4::<N, Q8_0>(w, g),
        _ => unreachable!("only packable types are packed"),
    }
}

/// 16 bytes at `p`, repeated in the four 128-bit lanes.
#[inline(always)]
unsafe fn repeat16(p: *const u8) -> __m512i {
    _mm512_broadcast_i32x4(_mm_loadu_si128(p as *const __m128i))
}

/// Four f16 at `p`, widened.
#[inline(always)]
unsafe fn four_f16(p: *const u8) -> __m128 {
    _mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i))
}

#[inline(always)]
unsafe fn rows4<const N: usize, const KIND: u8>(w: &[u8], g: &TokenGroup<N>) -> [[f32; 4]; N] {
    // Group bytes; activation block bytes and where its 32 values start.
    let (group, act_block, act_values) = match KIND {
        Q4_0 => (72, 34, 2),
        Q4_1 => (80, 36, 4),
        _ => (136, 34, 2),
    };
    let spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    let low4 = _mm512_set1_epi8(0x0f);
    let mut acc_lo = [_mm512_setzero_ps(); N];
    let mut acc_hi = [_mm512_setzero_ps(); N];
    // Q4_1's m_w·s_a terms: four tokens × four rows per register when N allows it,
    // else one token's four rows per 128-bit register.
    let mut offsets = [_mm_setzero_ps(); N];
    let mut offsets_by_4 = [_mm512_setzero_ps(); 2];
    for b in 0..w.len() / group {
        let p = w.as_ptr().add(b * group);
        // Row i's scale in the four lanes that hold row i's sums.
        let dw = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(four_f16(p)));
        let mw = if KIND == Q4_1 {
            four_f16(p.add(8))
        } else {
            _mm_setzero_ps()
        };
        if KIND == Q4_1 && N >= 4 {
            let mw = _mm512_broadcast_f32x4(mw);
            for (q, off) in offsets_by_4.iter_mut().enumerate().take(N / 4) {
                let s4 = _mm_loadu_ps(g.s.as_ptr().add(b * N + 4 * q));
                let s = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(s4));
                *off = _mm512_add_ps(*off, _mm512_mul_ps(mw, s));
            }
        }
        let (w_lo, w_hi) = if KIND == Q8_0 {
            (
                _mm512_loadu_si512(p.add(8) as *const _),
                _mm512_loadu_si512(p.add(72) as *const _),
            )
        } else {
            let q = _mm512_loadu_si512(p.add(if KIND == Q4_1 { 16 } else { 8 }) as *const _);
            let lo = _mm512_and_si512(q, low4);
            let hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), low4);
            if KIND == Q4_0 {
                // q − 8 = (q + 120) − 128: unsigned bytes, corrected by the bias below.
                let to_unsigned = _mm512_set1_epi8(120);
                (
                    _mm512_add_epi8(lo, to_unsigned),
                    _mm512_add_epi8(hi, to_unsigned),
                )
            } else {
                (lo, hi)
            }
        };
        for n in 0..N {
            let x = g.rows[n].as_ptr().add(b * act_block + act_values);
            let (init_lo, init_hi) = if KIND == Q4_1 {
                (_mm512_setzero_si512(), _mm512_setzero_si512())
            } else {
                let bias = g.bias.as_ptr().add((b * N + n) * 8) as *const u8;
                (repeat16(bias), repeat16(bias.add(16)))
            };
            let lanes_lo = _mm512_dpbusd_epi32(init_lo, w_lo, repeat16(x));
            let lanes_hi = _mm512_dpbusd_epi32(init_hi, w_hi, repeat16(x.add(16)));
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*g.d.get_unchecked(b * N + n)));
            acc_lo[n] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(lanes_lo), acc_lo[n]);
            acc_hi[n] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(lanes_hi), acc_hi[n]);
            if KIND == Q4_1 && N < 4 {
                let m = _mm_mul_ps(mw, _mm_set1_ps(*g.s.get_unchecked(b * N + n)));
                offsets[n] = _mm_add_ps(offsets[n], m);
            }
        }
    }
    // `LaneSums::total` for four rows at once: lane k + k+4, then k + k+2, then k + k+1.
    let firsts = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0);
    if KIND == Q4_1 && N >= 4 {
        let mut lanes = [0.0f32; 16];
        for n in 0..N {
            if n % 4 == 0 {
                _mm512_storeu_ps(lanes.as_mut_ptr(), offsets_by_4[n / 4]);
            }
            offsets[n] = _mm_loadu_ps(lanes.as_ptr().add(4 * (n % 4)));
        }
    }
    let mut out = [[0.0f32; 4]; N];
    for n in 0..N {
        let t = _mm512_add_ps(acc_lo[n], acc_hi[n]);
        let u = _mm512_add_ps(t, _mm512_permute_ps(t, 0b11_10_11_10));
        let v = _mm512_add_ps(u, _mm512_permute_ps(u, 0b01_01_01_01));
        let rows = _mm512_castps512_ps128(_mm512_permutexvar_ps(firsts, v));
        _mm_storeu_ps(out[n].as_mut_ptr(), _mm_add_ps(rows, offsets[n]));
    }
    out
}
