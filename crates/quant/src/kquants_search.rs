//! The scale searches of the K-quant quantizers: for one sub-block of 16 or 32 values,
//! the scale (and, for the affine types, the offset) that minimises a weighted error,
//! found by trying a small grid of candidate scales and fitting each by least squares,
//! as GGML's reference quantizers do (`llama-quantize` runs them when it has no
//! importance matrix). The arithmetic follows theirs operation by operation, in f32 and
//! in the same order, so a file we write holds the bytes theirs holds
//! (`tests/quantize_refs.rs`).

use crate::legacy::{round_half_even, signed_absmax};

/// Values whose largest magnitude is below this quantize to zero codes and scale.
pub(crate) const ZERO_GROUP: f32 = 1e-15;

/// Rounds half to even, as GGML's `nearest_int` (exact below 2²², far beyond any code).
pub(crate) fn nearest(v: f32) -> i32 {
    round_half_even(v) as i32
}

/// Symmetric codes `l ∈ [-nmax, nmax)` (stored as `l + nmax`) and the scale `s` with
/// `x ≈ s·l`, minimising Σ x²·(x − s·l)². Candidate scales put the largest value at code
/// −(nmax + k/10) for k in −9..=9; each is fitted by least squares and the best kept.
/// Q6_K's sub-blocks (GGML's `make_qx_quants`, weighted by x²).
pub(crate) fn symmetric_search(x: &[f32], nmax: i32, codes: &mut [u8]) -> f32 {
    let max = signed_absmax(x);
    if max.abs() < ZERO_GROUP {
        codes.fill(0);
        return 0.0;
    }
    let code = |v: f32, inverse: f32| nearest(inverse * v).clamp(-nmax, nmax - 1);
    let fit = |inverse: f32| {
        let (mut sum_xl, mut sum_l2) = (0.0f32, 0.0f32);
        for &v in x {
            let (l, w) = (code(v, inverse) as f32, v * v);
            sum_xl += w * v * l;
            sum_l2 += w * l * l;
        }
        (sum_xl, sum_l2)
    };
    let assign = |codes: &mut [u8], inverse: f32| {
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = (code(v, inverse) + nmax) as u8;
        }
    };
    let inverse = -nmax as f32 / max;
    let (sum_xl, sum_l2) = fit(inverse);
    assign(codes, inverse);
    let mut scale = if sum_l2 != 0.0 { sum_xl / sum_l2 } else { 0.0 };
    let mut best = scale * sum_xl;
    for k in (-9..=9).filter(|&k| k != 0) {
        let inverse = -(nmax as f32 + 0.1 * k as f32) / max;
        let (sum_xl, sum_l2) = fit(inverse);
        if sum_l2 > 0.0 && sum_xl * sum_xl > best * sum_l2 {
            assign(codes, inverse);
            scale = sum_xl / sum_l2;
            best = scale * sum_xl;
        }
    }
    scale
}

/// Symmetric codes in [-nmax, nmax) (stored as `l + nmax`) and their least-squares
/// scale, weighted by x²: codes start at the largest value's scale, then each is moved
/// alone to the code the other codes' fit asks for when that lowers the error, for up to
/// five passes. Q3_K's sub-blocks (GGML's `make_q3_quants`).
pub(crate) fn refined_search(x: &[f32], nmax: i32, codes: &mut [u8]) -> f32 {
    let max = signed_absmax(x);
    if max.abs() < ZERO_GROUP {
        codes.fill(0);
        return 0.0;
    }
    let inverse = -nmax as f32 / max;
    let mut levels = [0i32; 32];
    let levels = &mut levels[..x.len()];
    let (mut sum_xl, mut sum_l2) = (0.0f32, 0.0f32);
    for (l, &v) in levels.iter_mut().zip(x) {
        *l = nearest(inverse * v).clamp(-nmax, nmax - 1);
        let w = v * v;
        sum_xl += w * v * *l as f32;
        sum_l2 += w * *l as f32 * *l as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (l, &v) in levels.iter_mut().zip(x) {
            let w = v * v;
            let mut others_xl = sum_xl - w * v * *l as f32;
            if others_xl <= 0.0 {
                continue;
            }
            let mut others_l2 = sum_l2 - w * *l as f32 * *l as f32;
            let wanted = nearest(v * others_l2 / others_xl).clamp(-nmax, nmax - 1);
            if wanted == *l {
                continue;
            }
            others_xl += w * v * wanted as f32;
            others_l2 += w * wanted as f32 * wanted as f32;
            // The fit's error falls when sum_xl²/sum_l2 rises.
            if others_l2 > 0.0 && others_xl * others_xl * sum_l2 > sum_xl * sum_xl * others_l2 {
                (*l, sum_xl, sum_l2) = (wanted, others_xl, others_l2);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for (c, &l) in codes.iter_mut().zip(levels.iter()) {
        *c = (l + nmax) as u8;
    }
    if sum_l2 > 0.0 {
        sum_xl / sum_l2
    } else {
        0.0
    }
}

/// The candidate scales of an affine search: the range [min, max] spans
/// `nmax + first + step·k` codes for k in 0..=steps.
pub(crate) struct ScaleGrid {
    pub first: f32,
    pub step: f32,
    pub steps: i32,
}

/// How an affine search weighs a value's miss.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Miss {
    Absolute,
    Squared,
}

/// Affine codes in [0, nmax] with `x ≈ scale·l − offset`, minimising Σ wᵢ·miss(xᵢ):
/// the codes of the range scale, then of each scale on `grid`, each fitted by weighted
/// least squares (offset ≥ 0, so a zero stays exact when the values are one-signed); the
/// least error wins. Returns (scale, offset). Q2_K, Q4_K and Q5_K's sub-blocks (GGML's
/// `make_qkx2_quants`).
pub(crate) fn affine_search(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    grid: ScaleGrid,
    miss: Miss,
    codes: &mut [u8],
) -> (f32, f32) {
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (weights[0], weights[0] * x[0]);
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        codes.fill(0);
        return (0.0, -min);
    }
    let error = |scale: f32, min: f32, levels: &[u8]| {
        let mut total = 0.0f32;
        for ((&v, &w), &l) in x.iter().zip(weights).zip(levels) {
            let diff = scale * l as f32 + min - v;
            total += w * match miss {
                Miss::Absolute => diff.abs(),
                Miss::Squared => diff * diff,
            };
        }
        total
    };
    // Every candidate measures codes from the offset of the best fit so far.
    let quantize = |inverse: f32, min: f32, levels: &mut [u8]| {
        for (l, &v) in levels.iter_mut().zip(x) {
            *l = nearest(inverse * (v - min)).clamp(0, nmax) as u8;
        }
    };
    let inverse = nmax as f32 / (max - min);
    let mut scale = 1.0 / inverse;
    quantize(inverse, min, codes);
    let mut best_error = error(scale, min, codes);
    let mut candidate = [0u8; 32];
    let candidate = &mut candidate[..x.len()];
    for k in 0..=grid.steps {
        let inverse = (grid.first + grid.step * k as f32 + nmax as f32) / (max - min);
        quantize(inverse, min, candidate);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for ((&l, &v), &w) in candidate.iter().zip(x).zip(weights) {
            let l = l as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let this_error = error(this_scale, this_min, candidate);
            if this_error < best_error {
                codes.copy_from_slice(candidate);
                (best_error, scale, min) = (this_error, this_scale, this_min);
            }
        }
    }
    (scale, -min)
}
