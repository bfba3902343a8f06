//! Dot products of float weight rows: F16 weights against activations rounded to f16,
//! as llama.cpp's CPU build multiplies F16 matrices (it converts the activations to f16,
//! and its AVX2 build hands the product to llamafile's tinyBLAS). The activations are
//! kept widened back to f32 (exact), four bytes a value, so the kernels do not widen a
//! token's values again for every row.
//!
//! The order is tinyBLAS's on AVX2: eight lanes, lane l taking the values l, l + 8, …
//! with one fused multiply-add each, then the lanes summed as (l + l+4), then (+ l+2),
//! then (+ l+1). llama.cpp's AVX-512 build takes sixteen lanes instead, so there results
//! differ from it in rounding. Values past the last multiple of eight (llama.cpp takes
//! another path for such rows) are added one by one after the lanes.

use crate::f16_at;
use crate::kernels::lane_tree;

/// Value `i` of a row of activations widened to f32.
#[inline(always)]
pub(crate) fn wide_at(a: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]])
}

/// F16 weights · activations rounded to f16 and widened (`wide_at`).
#[inline(always)]
pub fn dot_f16_f16(w: &[u8], a: &[u8]) -> f32 {
    let cols = w.len() / 2;
    let whole = cols / 8 * 8;
    let mut lanes = [0.0f32; 8];
    for c in 0..whole {
        lanes[c % 8] = f16_at(w, 2 * c).mul_add(wide_at(a, c), lanes[c % 8]);
    }
    let total = lane_tree(lanes);
    (whole..cols).fold(total, |s, c| s + f16_at(w, 2 * c) * wide_at(a, c))
}

#[cfg(test)]
mod tests {
    use crate::{matmul_with, pack, quantize, round_f16, Isa, QMatrix};
    use gguf::GgmlType::F16;
    use rand::{Rng, SeedableRng};

    #[test]
    fn every_isa_equals_the_scalar_twin_and_the_f64_product() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (rows, cols) in [(1, 8), (5, 40), (19, 37), (33, 256), (3, 7), (40, 77)] {
            let wf: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let w = quantize(F16, &wf).unwrap();
            let m = QMatrix::new(F16, &w, rows, cols).unwrap();
            for n in [1, 2, 3, 4, 5, 6, 7, 8, 15] {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let mut want = vec![0.0; n * rows];
                matmul_with(Isa::Scalar, &m, &x, &mut want);
                for (i, want) in want.iter().enumerate() {
                    let (t, r) = (i / rows, i % rows);
                    let exact: f64 = (0..cols)
                        .map(|c| {
                            round_f16(wf[r * cols + c]) as f64 * round_f16(x[t * cols + c]) as f64
                        })
                        .sum();
                    assert!(
                        (*want as f64 - exact).abs() < 1e-4 * cols as f64,
                        "{want} vs {exact}"
                    );
                }
                for isa in [Isa::Avx2, Isa::Avx512] {
                    if isa.is_available() {
                        let mut got = vec![0.0; n * rows];
                        matmul_with(isa, &m, &x, &mut got);
                        let same = got
                            .iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{} rows {rows} cols {cols} tokens {n}", isa.name());
                    }
                }
                if Isa::Avx512.is_available() {
                    let packed = pack(F16, &w, rows, cols);
                    let p = QMatrix::packed(F16, &packed, rows, cols).unwrap();
                    let mut got = vec![0.0; n * rows];
                    matmul_with(Isa::Avx512, &p, &x, &mut got);
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "packed rows {rows} cols {cols} tokens {n}");
                }
            }
        }
    }
}
