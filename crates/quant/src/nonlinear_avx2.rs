//! AVX2 twin of `nonlinear`'s softmax: the same operations, eight lanes at a time, so the
//! same bits (tested against the portable code). `exp_poly`'s single rounding of j·2ⁿ is
//! done as it is there: j widened to f64, scaled exactly, rounded once to f32.

use crate::nonlinear::EXP_CONSTANTS;
use core::arch::x86_64::*;

/// `nonlinear::exp_poly` of each lane.
#[inline(always)]
unsafe fn exp8(x: __m256) -> __m256 {
    let constant = |i: usize| _mm256_set1_ps(f32::from_bits(EXP_CONSTANTS[i]));
    let (shift, log2_e, ln2_hi, ln2_lo) = (constant(0), constant(1), constant(2), constant(3));
    let (c1, c2, c3, c4, c5) = (
        constant(4),
        constant(5),
        constant(6),
        constant(7),
        constant(8),
    );
    let n = _mm256_sub_ps(_mm256_fmadd_ps(x, log2_e, shift), shift);
    let b = _mm256_fnmadd_ps(n, ln2_lo, _mm256_fnmadd_ps(n, ln2_hi, x));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(c5, b, c4), u, _mm256_fmadd_ps(c3, b, c2)),
        u,
        _mm256_fmadd_ps(c1, b, _mm256_set1_ps(1.0)),
    );
    // 2ⁿ as f64 bits, n clamped first (n is an integer, so the conversion is exact).
    let limit = _mm256_set1_ps(192.0);
    let clamped = _mm256_min_ps(_mm256_max_ps(n, _mm256_set1_ps(-192.0)), limit);
    let exponent = _mm256_add_epi32(_mm256_cvttps_epi32(clamped), _mm256_set1_epi32(1023));
    let power = |e: __m128i| _mm256_castsi256_pd(_mm256_slli_epi64::<52>(_mm256_cvtepi32_epi64(e)));
    let low = _mm256_mul_pd(
        _mm256_cvtps_pd(_mm256_castps256_ps128(j)),
        power(_mm256_castsi256_si128(exponent)),
    );
    let high = _mm256_mul_pd(
        _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(j)),
        power(_mm256_extracti128_si256::<1>(exponent)),
    );
    let scaled = _mm256_set_m128(_mm256_cvtpd_ps(high), _mm256_cvtpd_ps(low));
    let magnitude = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let out_of_range = _mm256_cmp_ps::<_CMP_GT_OQ>(magnitude, limit);
    if _mm256_movemask_ps(out_of_range) == 0 {
        return scaled;
    }
    let non_positive = _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps());
    let saturated = _mm256_blendv_ps(
        _mm256_set1_ps(f32::INFINITY),
        _mm256_setzero_ps(),
        non_positive,
    );
    _mm256_blendv_ps(scaled, saturated, out_of_range)
}

/// `dot::tree_sum` of sixteen lanes held as low and high halves: +8, +4, +2, +1.
#[inline(always)]
unsafe fn tree_sum16(low: __m256, high: __m256) -> f32 {
    let v = _mm256_add_ps(low, high);
    let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    let v = _mm_add_ss(v, _mm_shuffle_ps::<0x01>(v, v));
    _mm_cvtss_f32(v)
}

/// `nonlinear::softmax`, sixteen scores (a group of its sum) at a time.
pub fn softmax_avx2(scores: &mut [f32]) {
    assert!(
        crate::Isa::Avx2.is_available(),
        "AVX2 kernel called without AVX2 and FMA"
    );
    // SAFETY: AVX2 and FMA are available (asserted above); every access is masked or
    // bounded to the slice.
    unsafe { softmax(scores) }
}

/// Lanes `i..i + 8` of a slice of `n`, as a load mask.
#[inline(always)]
unsafe fn mask(n: usize, i: usize) -> __m256i {
    let live = _mm256_set1_epi32(n.saturating_sub(i).min(8) as i32);
    _mm256_cmpgt_epi32(live, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

/// Stores the lanes of `v` that fall inside the slice of `n` at `p + i`. (Masked stores
/// are microcoded and slow on AMD's cores: whole vectors use plain stores.)
#[inline(always)]
unsafe fn store_in(p: *mut f32, n: usize, i: usize, v: __m256) {
    if i + 8 <= n {
        _mm256_storeu_ps(p.add(i), v);
    } else {
        let lanes: [f32; 8] = std::mem::transmute(v);
        for (l, &x) in lanes.iter().enumerate().take(n.saturating_sub(i)) {
            *p.add(i + l) = x;
        }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn softmax(scores: &mut [f32]) {
    let n = scores.len();
    let p = scores.as_mut_ptr();
    let whole = n / 8 * 8;
    let mut max = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in (0..whole).step_by(8) {
        max = _mm256_max_ps(max, _mm256_loadu_ps(p.add(i)));
    }
    let mut max = {
        let lanes: [f32; 8] = std::mem::transmute(max);
        lanes.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s))
    };
    for &s in &scores[whole..] {
        max = max.max(s);
    }
    let max = _mm256_set1_ps(max);
    let mut sum = 0.0f64;
    for i in (0..n).step_by(16) {
        let (m0, m1) = (mask(n, i), mask(n, i + 8));
        let e0 = exp8(_mm256_sub_ps(_mm256_maskload_ps(p.add(i), m0), max));
        let e1 = exp8(_mm256_sub_ps(_mm256_maskload_ps(p.add(i + 8), m1), max));
        let (e0, e1) = (
            _mm256_and_ps(e0, _mm256_castsi256_ps(m0)),
            _mm256_and_ps(e1, _mm256_castsi256_ps(m1)),
        );
        store_in(p, n, i, e0);
        store_in(p, n, i + 8, e1);
        sum += tree_sum16(e0, e1) as f64;
    }
    let inverse = (1.0 / sum) as f32;
    for i in (0..whole).step_by(8) {
        let x = _mm256_loadu_ps(p.add(i));
        _mm256_storeu_ps(p.add(i), _mm256_mul_ps(x, _mm256_set1_ps(inverse)));
    }
    for s in &mut scores[whole..] {
        *s *= inverse;
    }
}
