//! AVX-512 twins of `nonlinear`'s exp, softmax and tabled GELU: the same operations,
//! sixteen lanes at a time, so the same bits (tested against the portable code).

use crate::nonlinear::{gelu_mul_portable, gelu_table, EXP_CONSTANTS};
use core::arch::x86_64::*;

/// `nonlinear::exp_poly` of each lane; `vscalefps` is the single rounding of j·2ⁿ.
#[inline(always)]
unsafe fn exp16(x: __m512) -> __m512 {
    let constant = |i: usize| _mm512_set1_ps(f32::from_bits(EXP_CONSTANTS[i]));
    let (shift, log2_e, ln2_hi, ln2_lo) = (constant(0), constant(1), constant(2), constant(3));
    let (c1, c2, c3, c4, c5) = (
        constant(4),
        constant(5),
        constant(6),
        constant(7),
        constant(8),
    );
    let n = _mm512_sub_ps(_mm512_fmadd_ps(x, log2_e, shift), shift);
    let b = _mm512_fnmadd_ps(n, ln2_lo, _mm512_fnmadd_ps(n, ln2_hi, x));
    let u = _mm512_mul_ps(b, b);
    let j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(_mm512_fmadd_ps(c5, b, c4), u, _mm512_fmadd_ps(c3, b, c2)),
        u,
        _mm512_fmadd_ps(c1, b, _mm512_set1_ps(1.0)),
    );
    let scaled = _mm512_scalef_ps(j, n);
    let out_of_range = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
    if out_of_range == 0 {
        return scaled;
    }
    let non_positive = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps());
    let saturated = _mm512_mask_blend_ps(
        non_positive,
        _mm512_set1_ps(f32::INFINITY),
        _mm512_setzero_ps(),
    );
    _mm512_mask_blend_ps(out_of_range, scaled, saturated)
}

/// `dot::tree_sum` of the lanes: +8, +4, +2, +1.
#[inline(always)]
unsafe fn tree_sum16(v: __m512) -> f32 {
    let v = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0xEE>(v, v));
    let v = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0x55>(v, v));
    let v = _mm512_add_ps(v, _mm512_shuffle_ps::<0x0E>(v, v));
    let v = _mm512_add_ps(v, _mm512_shuffle_ps::<0x01>(v, v));
    _mm512_cvtss_f32(v)
}

/// `nonlinear::softmax`, sixteen scores at a time.
pub fn softmax_avx512(scores: &mut [f32]) {
    assert!(
        std::is_x86_feature_detected!("avx512f"),
        "AVX-512 kernel called without AVX-512"
    );
    // SAFETY: AVX-512F is available (asserted above); every access is masked to the slice.
    unsafe { softmax(scores) }
}

#[target_feature(enable = "avx512f")]
unsafe fn softmax(scores: &mut [f32]) {
    let n = scores.len();
    let p = scores.as_mut_ptr();
    let mask = |i: usize| ((1u32 << (n - i).min(16)) - 1) as __mmask16;
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for i in (0..n).step_by(16) {
        let x = _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), mask(i), p.add(i));
        max = _mm512_max_ps(max, x);
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    let mut sum = 0.0f64;
    for i in (0..n).step_by(16) {
        let x = _mm512_maskz_loadu_ps(mask(i), p.add(i));
        let e = _mm512_maskz_mov_ps(mask(i), exp16(_mm512_sub_ps(x, max)));
        _mm512_mask_storeu_ps(p.add(i), mask(i), e);
        sum += tree_sum16(e) as f64;
    }
    let inverse = _mm512_set1_ps((1.0 / sum) as f32);
    for i in (0..n).step_by(16) {
        let x = _mm512_maskz_loadu_ps(mask(i), p.add(i));
        _mm512_mask_storeu_ps(p.add(i), mask(i), _mm512_mul_ps(x, inverse));
    }
}

/// `nonlinear::gelu_mul`, sixteen values at a time: each input rounded to f16 (F16C's
/// round to nearest even, as the half crate's), its table entry gathered and widened.
pub fn gelu_mul_avx512(gate: &mut [f32], up: &[f32]) {
    assert!(
        std::is_x86_feature_detected!("avx512f"),
        "AVX-512 kernel called without AVX-512"
    );
    let n = gate.len().min(up.len());
    let whole = n / 16 * 16;
    // SAFETY: AVX-512F is available (asserted above); the loop reads and writes whole
    // groups of 16 inside both slices; every gather index is an f16 bit pattern (at most
    // 65,535), so its 4-byte read ends inside the table's 65,537 entries.
    unsafe { gelu_mul(&mut gate[..whole], &up[..whole]) };
    gelu_mul_portable(&mut gate[whole..n], &up[whole..n]);
}

#[target_feature(enable = "avx512f")]
unsafe fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    // A byte address: the gather scales each index by 2 (no alignment is needed).
    let table = gelu_table().as_ptr() as *const i32;
    let (low, high) = (_mm512_set1_ps(-10.0), _mm512_set1_ps(10.0));
    for i in (0..gate.len()).step_by(16) {
        let x = _mm512_loadu_ps(gate.as_ptr().add(i));
        let u = _mm512_loadu_ps(up.as_ptr().add(i));
        let bits = _mm512_cvtepu16_epi32(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x));
        let entries = _mm512_cvtepi32_epi16(_mm512_i32gather_epi32::<2>(bits, table));
        let tabled = _mm512_mul_ps(_mm512_cvtph_ps(entries), u);
        let at_or_above = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, high);
        let at_or_below = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(x, low);
        let out = _mm512_mask_blend_ps(at_or_above, tabled, _mm512_mul_ps(x, u));
        let out = _mm512_mask_blend_ps(at_or_below, out, _mm512_setzero_ps());
        _mm512_storeu_ps(gate.as_mut_ptr().add(i), out);
    }
}
