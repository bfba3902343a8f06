//! GGML's ternary formats, TQ1_0 and TQ2_0 (BitNet b1.58 and TriLM models): super-blocks
//! of 256 values, each −1, 0 or +1 times the block's f16 scale `d`. A value is stored
//! as a code 0, 1 or 2 (the value + 1):
//!
//! - TQ2_0 (66 bytes): `qs[64]` (2 bits per code), `d`. Byte m of each 32-byte half
//!   holds values m, m + 32, m + 64, m + 96 of that half's 128, lowest bits first.
//! - TQ1_0 (54 bytes): `qs[48]` (5 codes per byte), `qh[4]` (4 codes per byte), `d`.
//!   A byte holds its codes as a base-3 number scaled to 0..256 (the first code the most
//!   significant trit), so code n is the top two bits of 3 · (byte · 3ⁿ mod 256). Byte m
//!   of `qs[..32]` holds values m + 32n (n < 5), byte m of `qs[32..]` values 160 + m +
//!   16n, byte j of `qh` values 240 + j + 4n (n < 4).
//!
//! The dot product with Q8_K activations follows llama.cpp's only kernel for these types
//! (its AVX2 `vec_dot`, run for every batch size): per block, eight integer lanes, lane
//! k = Σ code · a over the values whose position in their 32 is 4k..4k+4, minus the
//! activations of values 32k..32k+32 (the −1 of every code, taken from Q8_K's sums of
//! 16); then one fused multiply-add per lane by d_w · d_a; the lanes summed at the end
//! (`LaneSums`). The x86 twin (`kernels_ternary_x86`) computes the same integers.

use crate::f16_at;
use crate::kernels::LaneSums;
use crate::kernels_k::{q8k_bsum, q8k_d, Q8K_BLOCK};
use crate::put_f16;
use gguf::GgmlType;

/// Where a block of `ty` keeps its f16 scale: after the codes, at byte 52 of TQ1_0's 54
/// and byte 64 of TQ2_0's 66.
pub(crate) fn scale_at(ty: GgmlType) -> usize {
    ty.type_size() - 2
}

/// Code n (0..5) of a TQ1_0 byte.
#[inline(always)]
pub(crate) fn trit(byte: u8, n: u32) -> u8 {
    let shifted = byte.wrapping_mul(3u8.pow(n));
    ((shifted as u16 * 3) >> 8) as u8
}

/// The codes (0..3; 3 only in a TQ2_0 block no quantizer writes) of a block, in value
/// order, and its scale.
#[inline(always)]
pub(crate) fn codes(ty: GgmlType, b: &[u8]) -> ([u8; 256], f32) {
    let mut out = [0u8; 256];
    match ty {
        GgmlType::TQ2_0 => {
            for (i, code) in out.iter_mut().enumerate() {
                let (half, l, m) = (i / 128, (i % 128) / 32, i % 32);
                *code = (b[32 * half + m] >> (2 * l)) & 3;
            }
            (out, f16_at(b, scale_at(ty)))
        }
        GgmlType::TQ1_0 => {
            for (i, code) in out.iter_mut().enumerate() {
                *code = match i {
                    0..160 => trit(b[i % 32], (i / 32) as u32),
                    160..240 => trit(b[32 + (i - 160) % 16], ((i - 160) / 16) as u32),
                    _ => trit(b[48 + (i - 240) % 4], ((i - 240) / 4) as u32),
                };
            }
            (out, f16_at(b, scale_at(ty)))
        }
        _ => unreachable!("{ty} is not a ternary type"),
    }
}

/// Whether `ty` is TQ1_0 or TQ2_0.
pub fn is_ternary(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::TQ1_0 | GgmlType::TQ2_0)
}

fn dequantize(ty: GgmlType, b: &[u8], out: &mut [f32]) {
    let (codes, d) = codes(ty, b);
    for (y, code) in out.iter_mut().zip(codes) {
        *y = (code as i32 - 1) as f32 * d;
    }
}

pub fn dequantize_tq1_0(b: &[u8], out: &mut [f32]) {
    dequantize(GgmlType::TQ1_0, b, out)
}

pub fn dequantize_tq2_0(b: &[u8], out: &mut [f32]) {
    dequantize(GgmlType::TQ2_0, b, out)
}

/// The block's scale (its largest magnitude, which becomes ±1) and every value's code:
/// x / scale rounded half away from zero, + 1, as GGML's reference quantizer does.
fn scale_and_codes(x: &[f32], b: &mut [u8], d_at: usize) -> [u8; 256] {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let inverse = if amax != 0.0 { 1.0 / amax } else { 0.0 };
    put_f16(b, d_at, amax);
    std::array::from_fn(|i| ((x[i] * inverse).round() as i32 + 1) as u8)
}

pub fn quantize_tq2_0(x: &[f32], b: &mut [u8]) {
    let codes = scale_and_codes(x, b, scale_at(GgmlType::TQ2_0));
    for (m, byte) in b[..64].iter_mut().enumerate() {
        let (half, m) = (m / 32, m % 32);
        *byte = (0..4).fold(0, |q, l| {
            q | (codes[128 * half + 32 * l + m] & 3) << (2 * l)
        });
    }
}

pub fn quantize_tq1_0(x: &[f32], b: &mut [u8]) {
    let codes = scale_and_codes(x, b, scale_at(GgmlType::TQ1_0));
    // Codes as a base-3 number (first most significant), padded to five trits, then
    // scaled to 0..256 rounding up, so that `trit` reads them back.
    let pack = |values: &mut dyn Iterator<Item = u8>, trits: u32| {
        let q = values.fold(0u16, |q, c| 3 * q + c as u16) * 3u16.pow(5 - trits);
        ((q * 256).div_ceil(243)) as u8
    };
    for m in 0..32 {
        b[m] = pack(&mut (0..5).map(|n| codes[m + 32 * n]), 5);
    }
    for m in 0..16 {
        b[32 + m] = pack(&mut (0..5).map(|n| codes[160 + m + 16 * n]), 5);
    }
    for j in 0..4 {
        b[48 + j] = pack(&mut (0..4).map(|n| codes[240 + j + 4 * n]), 4);
    }
}

/// One weight row of `ty` against N Q8_K activation rows, each block decoded once, in
/// llama.cpp's `vec_dot` order (the module docs).
#[inline(always)]
pub fn dot_ternary_q8_k<const N: usize>(ty: GgmlType, w: &[u8], rows: [&[u8]; N]) -> [f32; N] {
    let mut sums: [LaneSums; N] = std::array::from_fn(|_| LaneSums::default());
    let size = ty.type_size();
    for (b, wb) in w.chunks_exact(size).enumerate() {
        let (codes, d_w) = codes(ty, wb);
        for (sums, a) in sums.iter_mut().zip(rows) {
            let ab = &a[b * Q8K_BLOCK..][..Q8K_BLOCK];
            let x = |i: usize| ab[4 + i] as i8 as i32;
            let mut lanes: [i32; 8] =
                std::array::from_fn(|k| -q8k_bsum(ab, 2 * k) - q8k_bsum(ab, 2 * k + 1));
            for (i, &code) in codes.iter().enumerate() {
                lanes[(i % 32) / 4] += code as i32 * x(i);
            }
            sums.add_block(q8k_d(ab) * d_w, lanes);
        }
    }
    sums.map(LaneSums::total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Every code pattern a quantizer can write reads back: values that are exactly
    /// −1, 0 or +1 times the scale survive a round trip through either format.
    #[test]
    fn ternary_values_survive_a_round_trip() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for ty in [GgmlType::TQ1_0, GgmlType::TQ2_0] {
            for _ in 0..50 {
                let mut x: Vec<f32> = (0..256)
                    .map(|_| rng.gen_range(-1..=1) as f32 * 0.5)
                    .collect();
                x[rng.gen_range(0..256)] = 0.5;
                let mut b = vec![0u8; ty.type_size()];
                let mut back = vec![0f32; 256];
                match ty {
                    GgmlType::TQ1_0 => {
                        quantize_tq1_0(&x, &mut b);
                        dequantize_tq1_0(&b, &mut back);
                    }
                    _ => {
                        quantize_tq2_0(&x, &mut b);
                        dequantize_tq2_0(&b, &mut back);
                    }
                }
                assert_eq!(back, x, "{ty}");
            }
        }
    }

    /// Random bytes (every byte value, so codes no quantizer writes too) multiply the
    /// same on every ISA as in the scalar twin, for odd row counts and 1–15 tokens.
    #[test]
    fn every_isa_equals_the_scalar_twin_on_random_blocks() {
        use crate::{matmul_many_with, Isa, QMatrix, TokenOrder};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for ty in [GgmlType::TQ1_0, GgmlType::TQ2_0] {
            for (rows, blocks) in [(1, 1), (7, 2), (19, 3)] {
                let cols = 256 * blocks;
                let mut w: Vec<u8> = (0..rows * blocks * ty.type_size())
                    .map(|_| rng.gen())
                    .collect();
                for block in w.chunks_exact_mut(ty.type_size()) {
                    put_f16(block, scale_at(ty), rng.gen_range(-0.05..0.05));
                }
                let m = QMatrix::new(ty, &w, rows, cols).unwrap();
                for n in [1, 3, 8, 15] {
                    let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
                    let orders = vec![TokenOrder::OneToken; n];
                    let mut scalar = vec![0.0; n * rows];
                    matmul_many_with(Isa::Scalar, &[m], &x, &mut [&mut scalar], &orders);
                    for isa in [Isa::Avx2, Isa::Avx512]
                        .into_iter()
                        .filter(|i| i.is_available())
                    {
                        let what = format!("{ty} rows {rows} tokens {n}");
                        crate::tests::assert_matmul_bits(isa, m, &x, &orders, &scalar, &what);
                    }
                }
            }
        }
    }
}
