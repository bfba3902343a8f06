//! The f32 dot product every CPU matmul row reduces with.
//!
//! The reduction order is fixed (16 lanes, then a fixed pairwise sum), so a row's
//! result is bit-identical whatever the batch size, the tiling, or the instruction set
//! the compiler vectorized it for. That is what makes results batch-invariant.

const LANES: usize = 16;

/// Σ of the lanes as a halving tree (lane i + lane i + width, width = 8, 4, 2, 1).
#[inline(always)]
fn tree_sum(mut acc: [f32; LANES]) -> f32 {
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
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
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

/// Σ k[i]·q[i] with `k` in f16 bits (an f16 KV cache row), in the same fixed order
/// as `dot_f32`.
#[inline(always)]
fn dot_f16_lanes(k: &[u16], q: &[f32]) -> f32 {
    let n = k.len().min(q.len());
    let mut acc = [0.0f32; LANES];
    let mut ck = k[..n].chunks_exact(LANES);
    let mut cq = q[..n].chunks_exact(LANES);
    for (x, y) in (&mut ck).zip(&mut cq) {
        for i in 0..LANES {
            acc[i] += crate::f16_bits_to_f32(x[i]) * y[i];
        }
    }
    for (i, (x, y)) in ck.remainder().iter().zip(cq.remainder()).enumerate() {
        acc[i] += crate::f16_bits_to_f32(*x) * y;
    }
    tree_sum(acc)
}

/// y[i] += a·x[i] with `x` in f16 bits.
#[inline(always)]
fn axpy_f16_lanes(y: &mut [f32], a: f32, x: &[u16]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * crate::f16_bits_to_f32(xi);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn dot_f16_avx512(k: &[u16], q: &[f32]) -> f32 {
    dot_f16_lanes(k, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_f16_avx2(k: &[u16], q: &[f32]) -> f32 {
    dot_f16_lanes(k, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn axpy_f16_avx512(y: &mut [f32], a: f32, x: &[u16]) {
    axpy_f16_lanes(y, a, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn axpy_f16_avx2(y: &mut [f32], a: f32, x: &[u16]) {
    axpy_f16_lanes(y, a, x)
}

/// Σ k[i]·q[i], `k` in f16 bits.
pub fn dot_f16(k: &[u16], q: &[f32]) -> f32 {
    match crate::selected_isa() {
        // SAFETY: `selected_isa` only returns ISAs this CPU has.
        #[cfg(target_arch = "x86_64")]
        crate::Isa::Avx512 => unsafe { dot_f16_avx512(k, q) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        crate::Isa::Avx2 => unsafe { dot_f16_avx2(k, q) },
        _ => dot_f16_lanes(k, q),
    }
}

/// y[i] += a·x[i], `x` in f16 bits.
pub fn axpy_f16(y: &mut [f32], a: f32, x: &[u16]) {
    match crate::selected_isa() {
        // SAFETY: `selected_isa` only returns ISAs this CPU has.
        #[cfg(target_arch = "x86_64")]
        crate::Isa::Avx512 => unsafe { axpy_f16_avx512(y, a, x) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        crate::Isa::Avx2 => unsafe { axpy_f16_avx2(y, a, x) },
        _ => axpy_f16_lanes(y, a, x),
    }
}

#[cfg(test)]
mod f16_tests {
    use super::*;

    #[test]
    fn f16_kernels_match_their_portable_twins() {
        for n in [1, 15, 64, 100] {
            let k: Vec<u16> = (0..n)
                .map(|i| half::f16::from_f32((i as f32 * 0.37).sin()).to_bits())
                .collect();
            let q: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            assert_eq!(dot_f16(&k, &q).to_bits(), dot_f16_lanes(&k, &q).to_bits());
            let exact: f32 = k
                .iter()
                .zip(&q)
                .map(|(a, b)| half::f16::from_bits(*a).to_f32() * b)
                .sum();
            assert!((dot_f16(&k, &q) - exact).abs() < 1e-4);
            let (mut y1, mut y2) = (q.clone(), q.clone());
            axpy_f16(&mut y1, 0.5, &k);
            axpy_f16_lanes(&mut y2, 0.5, &k);
            assert_eq!(y1, y2);
        }
    }
}
