//! The f32 dot product every CPU matmul row reduces with.
//!
//! The reduction order is fixed (16 lanes, then a fixed pairwise sum), so a row's
//! result is bit-identical whatever the batch size, the tiling, or the instruction set
//! the compiler vectorized it for. That is what makes results batch-invariant.

pub(crate) const LANES: usize = 16;

/// Σ of the lanes as a halving tree (lane i + lane i + width, width = 8, 4, 2, 1).
#[inline(always)]
pub(crate) fn tree_sum(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    acc[0]
}

#[inline(always)]
pub(crate) fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[i] += x * y;
    }
    tree_sum(acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

/// Σ a[i]·b[i] over the shorter length.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { dot_avx2(a, b) };
    }
    dot_lanes(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectorized_dot_matches_the_portable_one_bit_for_bit() {
        for n in [0, 1, 15, 16, 17, 100, 576, 1536] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 3.0)
                .collect();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let got = dot_f32(&a, &b);
            assert_eq!(got.to_bits(), dot_lanes(&a, &b).to_bits(), "n={n}");
            assert!(
                (got as f64 - exact).abs() <= 1e-3 * exact.abs().max(1.0),
                "n={n}"
            );
        }
    }
}
