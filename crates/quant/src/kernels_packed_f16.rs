//! AVX-512 kernel for F16 weights in the packed layout (`packed`): a 512-bit register
//! holds a unit of eight values of each of two neighbouring rows, so one conversion from
//! f16 and one fused multiply-add per token serve both rows. The row-major kernels
//! (`kernels_float_x86`) hold one row's eight lanes in a 256-bit register, and spend as
//! many instructions for half the products. Each lane is still one chain in
//! `kernels_float`'s order (lane l of a row takes the values l, l + 8, …; the lanes are
//! then summed by `lane_tree`, and values past the last whole unit added one by one), so
//! results are bit-identical to the row-major kernels and the scalar twin.

use crate::f16_at;
use crate::kernels_float::wide_at;
use crate::kernels_x86::avx512::lane_tree;
use crate::packed::{
    F16_UNIT_BYTES as UNIT_BYTES, F16_UNIT_VALUES as UNIT, WIDE_GROUP_ROWS as GROUP_ROWS,
};
use core::arch::x86_64::*;

/// Sixteen F16 rows (one group: `cols.div_ceil(UNIT)` units of 256 bytes) · N tokens, whose
/// activations are rounded to f16 and widened (`kernels_float`): `out[n][i]` is row i ·
/// token n. Fewer tokens take more rows at a time, so that enough independent chains
/// are in flight, and more tokens fewer rows, so that the accumulators stay in registers.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_f16_packed<const N: usize>(
    w: &[u8],
    cols: usize,
    x: &[&[u8]; N],
) -> [[f32; GROUP_ROWS]; N] {
    let mut out = [[0.0; GROUP_ROWS]; N];
    match N {
        1 | 2 => pairs::<8, N>(w, cols, x, 0, &mut out),
        3..=5 => (0..GROUP_ROWS).step_by(8).for_each(|first| {
            pairs::<4, N>(w, cols, x, first, &mut out);
        }),
        _ => (0..GROUP_ROWS).step_by(4).for_each(|first| {
            pairs::<2, N>(w, cols, x, first, &mut out);
        }),
    }
    out
}

/// Rows `first..first + 2P` of the group · N tokens, into `out`.
#[inline(always)]
unsafe fn pairs<const P: usize, const N: usize>(
    w: &[u8],
    cols: usize,
    x: &[&[u8]; N],
    first: usize,
    out: &mut [[f32; GROUP_ROWS]; N],
) {
    let units = cols / UNIT;
    let unit_bytes = GROUP_ROWS * UNIT_BYTES;
    assert!(w.len() >= cols.div_ceil(UNIT) * unit_bytes && x.iter().all(|x| x.len() >= 4 * cols));
    // acc[p][n]: rows first + 2p and first + 2p + 1 · token n.
    let mut acc = [[_mm512_setzero_ps(); N]; P];
    for u in 0..units {
        // Token n's eight values of this unit, in both halves of a register.
        let xv: [__m512; N] = std::array::from_fn(|n| {
            let eight = _mm256_loadu_pd(x[n].as_ptr().add(4 * UNIT * u) as *const f64);
            _mm512_castpd_ps(_mm512_broadcast_f64x4(eight))
        });
        let unit = w.as_ptr().add(u * unit_bytes + first * UNIT_BYTES);
        for (p, acc) in acc.iter_mut().enumerate() {
            let halves = _mm256_loadu_si256(unit.add(2 * p * UNIT_BYTES) as *const __m256i);
            let wv = _mm512_cvtph_ps(halves);
            for (acc, xv) in acc.iter_mut().zip(xv) {
                *acc = _mm512_fmadd_ps(wv, xv, *acc);
            }
        }
    }
    let tail = &w[units * unit_bytes..];
    for (p, acc) in acc.iter().enumerate() {
        for (n, acc) in acc.iter().enumerate() {
            let both = _mm512_castps_pd(*acc);
            let lanes = [
                _mm256_castpd_ps(_mm512_castpd512_pd256(both)),
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(both)),
            ];
            for (h, lanes) in lanes.into_iter().enumerate() {
                let row = first + 2 * p + h;
                let whole = UNIT * units;
                out[n][row] = (whole..cols).fold(lane_tree(lanes), |s, c| {
                    s + f16_at(tail, row * UNIT_BYTES + 2 * (c - whole)) * wide_at(x[n], c)
                });
            }
        }
    }
}
