//! RMSNorm's scale, exp, softmax and SiLU rounded exactly as llama.cpp's CPU backend (its
//! AVX-512 build) rounds them, so our logits can be bit-identical to the reference data.
//!
//! GGML does not call the C library's `expf` there: it evaluates a polynomial (after
//! ARM's optimized routines: split x = n·ln2 + b, a degree-5 polynomial in b, scale by
//! 2ⁿ), and it sums softmax terms 16 at a time into an f64. Both round differently from
//! the obvious code, and a one-ulp difference in an attention weight is enough to move a
//! logit by tenths thirty layers later. Every step here is elementwise and uses fused
//! multiply-adds where GGML does, so evaluating one value at a time gives the vector
//! unit's bits on any CPU.

// Softmax sums are taken over groups of 16, the values one AVX-512 vector holds, each
// summed in the order of a 512-bit horizontal add: `dot_f32`'s lane tree.
use crate::dot::{tree_sum, LANES};
use crate::isa::isa_dispatch;
use half::f16;

/// 1 / √(mean(x²) + eps), with the squares (rounded to f32) summed one by one in f64
/// and the mean rounded to f32, as GGML's RMSNorm computes it.
pub fn rms_norm_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// `exp_poly`'s constants (bits): 1.5·2²³ (adding it rounds to an integer), log₂e, ln 2
/// in two parts, and the polynomial's five coefficients.
pub(crate) const EXP_CONSTANTS: [u32; 9] = [
    0x4b40_0000,
    0x3fb8_aa3b,
    0x3f31_7200,
    0x35bf_be8e,
    0x3f7f_fff6,
    0x3eff_fedb,
    0x3e2a_af33,
    0x3d2b_9f17,
    0x3c07_2010,
];

/// e^x with GGML's polynomial (within about 2 ulp; overflows to ∞ above 88.38 and
/// flushes to 0 below -103.97, like GGML's).
#[inline(always)]
pub fn exp_poly(x: f32) -> f32 {
    let [shift, log2_e, ln2_hi, ln2_lo, c1, c2, c3, c4, c5] = EXP_CONSTANTS.map(f32::from_bits);

    let n = x.mul_add(log2_e, shift) - shift;
    let b = (-n).mul_add(ln2_lo, (-n).mul_add(ln2_hi, x));
    let u = b * b;
    let j = c5
        .mul_add(b, c4)
        .mul_add(u, c3.mul_add(b, c2))
        .mul_add(u, c1.mul_add(b, 1.0));
    // j·2ⁿ rounded once, as `vscalefps` does: exact in f64 before the final rounding.
    // Written without branches (selects only) so that loops over it vectorize.
    let exponent = n.clamp(-192.0, 192.0) as i32 + 1023;
    let scaled = (j as f64 * f64::from_bits((exponent as u64) << 52)) as f32;
    let saturated = if n <= 0.0 { 0.0 } else { f32::INFINITY };
    if n.abs() > 192.0 {
        saturated
    } else {
        scaled
    }
}

#[inline(always)]
fn softmax_portable(scores: &mut [f32]) {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut sum = 0.0f64;
    for group in scores.chunks_mut(LANES) {
        let mut lanes = [0.0f32; LANES];
        for (lane, s) in lanes.iter_mut().zip(group.iter_mut()) {
            *s = exp_poly(*s - max);
            *lane = *s;
        }
        sum += tree_sum(lanes) as f64;
    }
    let inverse = (1.0 / sum) as f32;
    for s in scores {
        *s *= inverse;
    }
}

#[inline(always)]
fn silu_mul_portable(gate: &mut [f32], up: &[f32]) {
    let whole = gate.len() / LANES * LANES;
    let (vector_part, tail) = gate.split_at_mut(whole);
    for (g, &u) in vector_part.iter_mut().zip(up) {
        *g = *g / (1.0 + exp_poly(-*g)) * u;
    }
    // GGML's scalar tail uses the C library's expf, as Rust's `exp` does.
    for (g, &u) in tail.iter_mut().zip(&up[whole..]) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Soft-capping: v = cap · tanh(v · (1/cap)), as GGML's scale, tanh, scale (the C
/// library's `tanhf`).
pub fn softcap(values: &mut [f32], cap: f32) {
    let inverse = 1.0 / cap;
    for v in values {
        *v = (*v * inverse).tanh() * cap;
    }
}

/// GELU with its tanh approximation, as GGML writes it.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044_715;
    // Fused where GCC contracts GGML's `1.0f + GELU_COEF_A*x*x`.
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (COEF_A * x).mul_add(x, 1.0)).tanh())
}

/// `gelu_tanh` of every f16 value, rounded to f16, by bit pattern: GGML's CPU backend
/// evaluates GELU through such a table (`GGML_GELU_FP16`), so we do too. One zero entry
/// follows the 65,536, so that a 32-bit gather at the last one stays inside the table.
pub(crate) fn gelu_table() -> &'static [u16] {
    static TABLE: std::sync::OnceLock<Vec<u16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_tanh(f16::from_bits(bits).to_f32())).to_bits())
            .chain([0])
            .collect()
    })
}

/// GeGLU's gate: gate[i] = gelu(gate[i]) · up[i], with GELU read from `gelu_table` at the
/// f16 nearest the input — except at or beyond ±10, where it is 0 or the input itself.
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::selected_isa() == crate::Isa::Avx512 {
        return crate::nonlinear_avx512::gelu_mul_avx512(gate, up);
    }
    gelu_mul_portable(gate, up)
}

pub(crate) fn gelu_mul_portable(gate: &mut [f32], up: &[f32]) {
    let table = gelu_table();
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            f16::from_bits(table[f16::from_f32(x).to_bits() as usize]).to_f32() * u
        };
    }
}

isa_dispatch! {
    fn softmax_any(scores: &mut [f32]) => softmax_portable
}

/// Attention weights from scores, in place: e^(s - max) / Σ, with the sum taken over
/// groups of 16 scores (the last one padded with zeros) added into an f64, and the
/// division done as a multiplication by the f32-rounded inverse.
pub fn softmax(scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match crate::selected_isa() {
        crate::Isa::Avx512 => crate::nonlinear_avx512::softmax_avx512(scores),
        crate::Isa::Avx2 => crate::nonlinear_avx2::softmax_avx2(scores),
        crate::Isa::Scalar => softmax_any(scores),
    }
    #[cfg(not(target_arch = "x86_64"))]
    softmax_any(scores)
}

isa_dispatch! {
    /// SwiGLU's gate: gate[i] = silu(gate[i]) · up[i], silu(x) = x / (1 + e^-x), per row of
    /// `gate.len()` values (a partial last group of 16 uses the C library's exp, as GGML's
    /// scalar tail does).
    pub fn silu_mul(gate: &mut [f32], up: &[f32]) => silu_mul_portable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_matches_its_portable_twin() {
        for n in [1, 5, 16, 17, 100, 1000] {
            // Scores over a wide range, some masked, some far below the maximum.
            let scores: Vec<f32> = (0..n)
                .map(|i| match i % 11 {
                    3 => f32::NEG_INFINITY,
                    7 => -150.0 + i as f32,
                    _ => ((i * 37 % 101) as f32 * 0.173).sin() * 12.0,
                })
                .collect();
            let (mut fast, mut slow) = (scores.clone(), scores.clone());
            softmax(&mut fast);
            softmax_portable(&mut slow);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&slow), "{n} scores");
            #[cfg(target_arch = "x86_64")]
            if crate::Isa::Avx2.is_available() {
                let mut direct = scores.clone();
                crate::nonlinear_avx2::softmax_avx2(&mut direct);
                assert_eq!(bits(&direct), bits(&slow), "AVX2, {n} scores");
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn gelu_mul_matches_its_portable_twin() {
        if !crate::Isa::Avx512.is_available() {
            return;
        }
        // Random gates over ±12, with both cut-offs, exact f16 values and tiny values among
        // them; lengths with and without a partial last 16.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for n in [1, 15, 16, 33, 1000, 4099] {
            let gate: Vec<f32> = (0..n)
                .map(|i| match i % 13 {
                    0 => -10.0,
                    1 => 10.0,
                    2 => f16::from_bits(next() as u16 & 0x7bff).to_f32(),
                    3 => (next() % 1000) as f32 * 1e-9,
                    _ => (next() % 24_000) as f32 / 1000.0 - 12.0,
                })
                .collect();
            let up: Vec<f32> = (0..n)
                .map(|_| (next() % 4000) as f32 / 1000.0 - 2.0)
                .collect();
            let (mut fast, mut slow) = (gate.clone(), gate.clone());
            crate::nonlinear_avx512::gelu_mul_avx512(&mut fast, &up);
            gelu_mul_portable(&mut slow, &up);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&slow), "{n} values");
        }
    }

    #[test]
    fn gelu_mul_is_the_tabled_gelu_within_f16_rounding() {
        let n = 4001;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 - 2000.0) / 150.0).collect();
        let up: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32 / 8.0).collect();
        let mut got = x.clone();
        gelu_mul(&mut got, &up);
        for ((&g, &x), &u) in got.iter().zip(&x).zip(&up) {
            let exact = gelu_tanh(x) * u;
            // Input and output each rounded to f16 (relative 2^-11), GELU's slope ≤ 1.13.
            assert!(
                (g - exact).abs() <= 2e-3 * (exact.abs() + x.abs() * u) + 1e-6,
                "gelu({x})·{u}: {g} vs {exact}"
            );
        }
        assert_eq!(got[0], 0.0, "at -13.3 GELU is 0");
        assert_eq!(
            got[n - 1],
            x[n - 1] * up[n - 1],
            "at 13.3 GELU is the input"
        );
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-6);
    }

    #[test]
    fn rms_norm_scale_is_the_inverse_root_mean_square() {
        let x: Vec<f32> = (0..576)
            .map(|i| ((i * 7 % 31) as f32 - 15.0) / 8.0)
            .collect();
        let exact =
            1.0 / ((x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / 576.0) + 1e-5).sqrt();
        assert!((rms_norm_scale(&x, 1e-5) as f64 - exact).abs() < 1e-6 * exact);
        assert_eq!(rms_norm_scale(&[0.0; 8], 1e-5), 1.0 / 1e-5f32.sqrt());
    }

    #[test]
    fn exp_poly_is_within_three_ulp_of_exp_and_handles_the_edges() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp_poly(x), (x as f64).exp());
            let ulp = (want as f32).next_up() - want as f32;
            assert!(
                ((got as f64 - want) / ulp as f64).abs() <= 3.0,
                "x={x}: {got} vs {want}"
            );
            x += 0.0137;
        }
        assert_eq!(exp_poly(0.0), 1.0);
        assert_eq!(exp_poly(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_poly(-200.0), 0.0);
        assert_eq!(exp_poly(100.0), f32::INFINITY);
        assert!(exp_poly(f32::NAN).is_nan());
        // Results in the subnormal range are rounded once, not flushed.
        let tiny = exp_poly(-95.0);
        assert!(tiny > 0.0 && tiny < f32::MIN_POSITIVE);
        assert!((tiny as f64 / (-95f64).exp() - 1.0).abs() < 1e-3);
    }

    #[test]
    fn softmax_sums_to_one_and_the_vector_builds_match_the_portable_one() {
        for n in [1, 5, 16, 17, 33, 100] {
            let scores: Vec<f32> = (0..n).map(|i| ((i * 29 % 13) as f32 - 6.0) * 0.7).collect();
            let mut want = scores.clone();
            softmax_portable(&mut want);
            let mut got = scores.clone();
            softmax(&mut got);
            assert_eq!(got, want, "n={n}");
            let total: f32 = got.iter().sum();
            assert!((total - 1.0).abs() < 1e-5, "n={n}: {total}");
            let exact_max = scores.iter().cloned().fold(f32::MIN, f32::max);
            let exact_sum: f64 = scores.iter().map(|&s| ((s - exact_max) as f64).exp()).sum();
            for (g, s) in got.iter().zip(&scores) {
                let exact = ((s - exact_max) as f64).exp() / exact_sum;
                assert!((*g as f64 - exact).abs() < 1e-6, "n={n}");
            }
        }
        let mut masked = [0.5, f32::NEG_INFINITY, 0.5];
        softmax(&mut masked);
        assert_eq!(masked, [0.5, 0.0, 0.5]);
    }

    #[test]
    fn silu_mul_matches_the_formula_and_its_portable_twin() {
        for n in [3, 16, 40, 1536] {
            let gate: Vec<f32> = (0..n)
                .map(|i| ((i * 31 % 97) as f32 - 48.0) / 6.0)
                .collect();
            let up: Vec<f32> = (0..n)
                .map(|i| ((i * 17 % 23) as f32 - 11.0) / 4.0)
                .collect();
            let mut want = gate.clone();
            silu_mul_portable(&mut want, &up);
            let mut got = gate.clone();
            silu_mul(&mut got, &up);
            assert_eq!(got, want, "n={n}");
            for ((g, x), u) in got.iter().zip(&gate).zip(&up) {
                let exact = *x as f64 / (1.0 + (-*x as f64).exp()) * *u as f64;
                assert!((*g as f64 - exact).abs() < 1e-5 * exact.abs().max(1.0));
            }
        }
    }
}
