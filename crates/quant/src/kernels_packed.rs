//! AVX-512 VNNI kernels over packed weights (`packed`), one group of rows against N tokens
//! per pass:
//! - `dot4_packed`: four Q4_1, Q5_0 or Q8_0 rows. Each (row, token) result follows `LaneSums`
//!   operation for operation — the same integer lane sums, one fused multiply-add per
//!   lane and block in block order, the same final tree — so it equals the row-major
//!   kernels' result, and llama.cpp's, bit for bit.
//! - `dot16_q4_packed`: sixteen Q4_0 or IQ4_NL rows. Each (row, token) result follows
//!   `BlockSums`: a block's 32 products summed in integers, then one fused multiply-add
//!   per block, so it equals the row-major kernels' result bit for bit.

use crate::kernels::TokenGroup;
use core::arch::x86_64::*;
use gguf::GgmlType;

/// The formats of `rows4`, as its const parameter.
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;
const Q5_0: u8 = 3;

/// Four Q4_1, Q5_0 or Q8_0 rows (one group) · N tokens: `out[n][i]` is row i · token n.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot4_packed<const N: usize>(
    ty: GgmlType,
    w: &[u8],
    g: &TokenGroup<N>,
) -> [[f32; 4]; N] {
    match ty {
        GgmlType::Q4_1 => rows4::<N, Q4_1>(w, g),
        GgmlType::Q8_0 => rows4::<N, Q8_0>(w, g),
        GgmlType::Q5_0 => rows4::<N, Q5_0>(w, g),
        _ => unreachable!("only Q4_1, Q5_0 and Q8_0 are packed four rows to a group"),
    }
}

/// Sixteen Q4_0 (`NL` false) or IQ4_NL (`NL` true) rows (one group) · N tokens:
/// `out[n][i]` is row i · token n.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_q4_packed<const N: usize, const NL: bool>(
    w: &[u8],
    g: &TokenGroup<N>,
) -> [[f32; 16]; N] {
    let group = 288;
    let low4 = _mm512_set1_epi8(0x0f);
    // IQ4_NL's levels plus 128, unsigned for `vpdpbusd`; the 128·Σx comes off below as
    // Q4_0's 8·Σx does.
    let (levels, bias) = if NL {
        (repeat16(iq4_levels_plus_128().as_ptr()), -128)
    } else {
        (_mm512_setzero_si512(), -8)
    };
    let mut acc = [_mm512_setzero_ps(); N];
    for b in 0..w.len() / group {
        let p = w.as_ptr().add(b * group);
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        // Register k holds bytes 4k..4k+4 of the sixteen rows' 32 values.
        let values: [__m512i; 8] = std::array::from_fn(|k| {
            let q = _mm512_loadu_si512(p.add(32 + 64 * (k % 4)) as *const _);
            let codes = match k {
                0..4 => _mm512_and_si512(q, low4),
                _ => _mm512_and_si512(_mm512_srli_epi16(q, 4), low4),
            };
            if NL {
                _mm512_shuffle_epi8(levels, codes)
            } else {
                codes
            }
        });
        for (n, acc) in acc.iter_mut().enumerate() {
            let x = g.rows[n].as_ptr().add(b * 34 + 2) as *const i32;
            let at = b * N + n;
            // Σ(q − bias)·x = Σq·x − bias·Σx, in two chains of four so that the adds do
            // not wait on each other.
            let mut even = _mm512_set1_epi32(bias * *g.sums.get_unchecked(at));
            let mut odd = _mm512_setzero_si512();
            for k in (0..8).step_by(2) {
                let (x0, x1) = (x.add(k).read_unaligned(), x.add(k + 1).read_unaligned());
                even = _mm512_dpbusd_epi32(even, values[k], _mm512_set1_epi32(x0));
                odd = _mm512_dpbusd_epi32(odd, values[k + 1], _mm512_set1_epi32(x1));
            }
            let sums = _mm512_cvtepi32_ps(_mm512_add_epi32(even, odd));
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*g.d.get_unchecked(at)));
            *acc = _mm512_fmadd_ps(scale, sums, *acc);
        }
    }
    let mut out = [[0.0f32; 16]; N];
    for (o, acc) in out.iter_mut().zip(acc) {
        _mm512_storeu_ps(o.as_mut_ptr(), acc);
    }
    out
}

/// `IQ4_LEVELS` plus 128, as unsigned bytes.
pub(crate) fn iq4_levels_plus_128() -> [u8; 16] {
    crate::iquants::IQ4_LEVELS.map(|l| (l as i16 + 128) as u8)
}

/// 16 bytes at `p`, repeated in the four 128-bit lanes.
#[inline(always)]
pub(crate) unsafe fn repeat16(p: *const u8) -> __m512i {
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
        Q4_1 => (80, 36, 4),
        Q5_0 => (88, 34, 2),
        _ => (136, 34, 2),
    };
    let spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    let low4 = _mm512_set1_epi8(0x0f);
    let mut acc_lo = [_mm512_setzero_ps(); N];
    let mut acc_hi = [_mm512_setzero_ps(); N];
    // Q4_1's m_w·s_a terms: four tokens × four rows per register for each whole four
    // tokens, one token's four rows per 128-bit register for the rest (the same
    // operations lane by lane, so the same bits either way).
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
        } else if KIND == Q5_0 {
            // Each value is made q − 16 + 128 (its nibble, plus 0x70 in one logic op,
            // plus 16 where its fifth bit is set), so that Q5_0 takes Q8_0's −128·Σx
            // correction as it is, with no per-token shift. The fifth bits of values
            // 0..16 and 16..32, bit 16i + l for row i's value l (or 16 + l): one byte
            // mask each.
            let fifth_lo = p.add(8).cast::<u64>().read_unaligned();
            let fifth_hi = p.add(16).cast::<u64>().read_unaligned();
            let q = _mm512_loadu_si512(p.add(24) as *const _);
            let nibble_plus_112 = |v: __m512i| {
                // (v & 0x0f) | 0x70: truth table 0xEA is (A & B) | C.
                _mm512_ternarylogic_epi32::<0xEA>(v, low4, _mm512_set1_epi8(0x70))
            };
            let (lo, hi) = (nibble_plus_112(q), nibble_plus_112(_mm512_srli_epi16(q, 4)));
            let sixteen = _mm512_set1_epi8(16);
            (
                _mm512_mask_add_epi8(lo, fifth_lo, lo, sixteen),
                _mm512_mask_add_epi8(hi, fifth_hi, hi, sixteen),
            )
        } else {
            let q = _mm512_loadu_si512(p.add(16) as *const _);
            (
                _mm512_and_si512(q, low4),
                _mm512_and_si512(_mm512_srli_epi16(q, 4), low4),
            )
        };
        for n in 0..N {
            let x = g.rows[n].as_ptr().add(b * act_block + act_values);
            let (init_lo, init_hi) = if KIND == Q4_1 {
                (_mm512_setzero_si512(), _mm512_setzero_si512())
            } else {
                // −128 · each lane's Σx, for codes stored plus 128.
                let bias = g.lane_bias.as_ptr().add((b * N + n) * 8) as *const u8;
                (repeat16(bias), repeat16(bias.add(16)))
            };
            let lanes_lo = _mm512_dpbusd_epi32(init_lo, w_lo, repeat16(x));
            let lanes_hi = _mm512_dpbusd_epi32(init_hi, w_hi, repeat16(x.add(16)));
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*g.d.get_unchecked(b * N + n)));
            acc_lo[n] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(lanes_lo), acc_lo[n]);
            acc_hi[n] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(lanes_hi), acc_hi[n]);
            if KIND == Q4_1 && n >= N / 4 * 4 {
                let m = _mm_mul_ps(mw, _mm_set1_ps(*g.s.get_unchecked(b * N + n)));
                offsets[n] = _mm_add_ps(offsets[n], m);
            }
        }
    }
    // `LaneSums::total` for four rows at once: lane k + k+4, then k + k+2, then k + k+1.
    let firsts = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0);
    if KIND == Q4_1 && N >= 4 {
        let mut lanes = [0.0f32; 16];
        for n in 0..N / 4 * 4 {
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
