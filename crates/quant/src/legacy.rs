//! Scalar reference for GGML's 32-value block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1.
//!
//! Layouts (little-endian, `d`/`m`/`s` are f16):
//! Q4_0 `d, qs[16]`: x = (q - 8)·d, low nibbles hold values 0..16, high nibbles 16..32.
//! Q4_1 `d, m, qs[16]`: x = q·d + m.
//! Q5_0 `d, qh[4], qs[16]`: a fifth bit per value in `qh`; x = (q - 16)·d.
//! Q5_1 `d, m, qh[4], qs[16]`: x = q·d + m.
//! Q8_0 `d, qs[32]` (i8): x = q·d.   Q8_1 `d, s, qs[32]`: s = d·Σq.

use crate::isa::isa_dispatch;
use crate::{f16_at, put_f16};

pub const QK: usize = 32;

pub fn dequantize_q4_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for j in 0..16 {
        let q = block[2 + j];
        out[j] = ((q & 0xf) as i32 - 8) as f32 * d;
        out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

pub fn dequantize_q4_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    for j in 0..16 {
        let q = block[4 + j];
        out[j] = (q & 0xf) as f32 * d + m;
        out[j + 16] = (q >> 4) as f32 * d + m;
    }
}

fn fifth_bits(qh: u32, j: usize) -> (u8, u8) {
    let low = (((qh >> j) << 4) & 0x10) as u8;
    let high = ((qh >> (j + 12)) & 0x10) as u8;
    (low, high)
}

pub fn dequantize_q5_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
    for j in 0..16 {
        let q = block[6 + j];
        let (hl, hh) = fifth_bits(qh, j);
        out[j] = (((q & 0xf) | hl) as i32 - 16) as f32 * d;
        out[j + 16] = (((q >> 4) | hh) as i32 - 16) as f32 * d;
    }
}

pub fn dequantize_q5_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    let qh = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
    for j in 0..16 {
        let q = block[8 + j];
        let (hl, hh) = fifth_bits(qh, j);
        out[j] = ((q & 0xf) | hl) as f32 * d + m;
        out[j + 16] = ((q >> 4) | hh) as f32 * d + m;
    }
}

pub fn dequantize_q8_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for j in 0..QK {
        out[j] = block[2 + j] as i8 as f32 * d;
    }
}

pub fn dequantize_q8_1(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for j in 0..QK {
        out[j] = block[4 + j] as i8 as f32 * d;
    }
}

/// The largest magnitude in `x`, in sixteen independent maxima that vectorize (a running
/// maximum does not), then across them: the same value in any order.
#[inline(always)]
fn abs_max(x: &[f32]) -> f32 {
    let mut maxima = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, v) in maxima.iter_mut().zip(chunk) {
            *m = m.max(v.abs());
        }
    }
    // Halving across the sixteen, which vectorizes (a running fold over them does not).
    for half in [8, 4, 2, 1] {
        for i in 0..half {
            maxima[i] = maxima[i].max(maxima[i + half]);
        }
    }
    rest.iter().fold(maxima[0], |m, v| m.max(v.abs()))
}

/// The first value of largest magnitude (0 if there is none but zeros), as GGML picks
/// it: the largest magnitude first (`abs_max`), then the first value that has it.
#[inline]
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let largest = abs_max(x);
    match largest {
        0.0 => 0.0,
        _ => x
            .iter()
            .copied()
            .find(|v| v.abs() == largest)
            .unwrap_or(0.0),
    }
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

pub fn quantize_q4_0(x: &[f32], block: &mut [u8]) {
    let d = signed_absmax(x) / -8.0;
    let id = inverse(d);
    put_f16(block, 0, d);
    for j in 0..16 {
        let q0 = ((x[j] * id + 8.5) as i32).clamp(0, 15) as u8;
        let q1 = ((x[j + 16] * id + 8.5) as i32).clamp(0, 15) as u8;
        block[2 + j] = q0 | (q1 << 4);
    }
}

pub fn quantize_q4_1(x: &[f32], block: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    put_f16(block, 0, d);
    put_f16(block, 2, min);
    for j in 0..16 {
        let q0 = (((x[j] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
        let q1 = (((x[j + 16] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
        block[4 + j] = q0 | (q1 << 4);
    }
}

fn pack_q5(q: impl Fn(usize) -> u8, qh_at: usize, block: &mut [u8]) {
    let mut qh = 0u32;
    for j in 0..16 {
        let (q0, q1) = (q(j), q(j + 16));
        block[qh_at + 4 + j] = (q0 & 0xf) | ((q1 & 0xf) << 4);
        qh |= (((q0 & 0x10) >> 4) as u32) << j;
        qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
    }
    block[qh_at..qh_at + 4].copy_from_slice(&qh.to_le_bytes());
}

pub fn quantize_q5_0(x: &[f32], block: &mut [u8]) {
    let d = signed_absmax(x) / -16.0;
    let id = inverse(d);
    put_f16(block, 0, d);
    pack_q5(|j| ((x[j] * id + 16.5) as i32).clamp(0, 31) as u8, 2, block);
}

pub fn quantize_q5_1(x: &[f32], block: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    put_f16(block, 0, d);
    put_f16(block, 2, min);
    pack_q5(
        |j| (((x[j] - min) * id + 0.5) as i32).clamp(0, 31) as u8,
        4,
        block,
    );
}

/// 1.5·2^23: added to |x| < 2^22 it leaves no fraction bits, so the FPU's own rounding
/// (halves to even) does the work, and the sum's bits are `ROUNDING_BITS` + the integer.
const ROUNDING_MAGIC: f32 = 12_582_912.0;
const ROUNDING_BITS: i32 = 0x4B40_0000;

/// Rounds to the nearest integer, halves to even, for |x| < 2^22 (inline, where
/// `round_ties_even` may become a library call).
#[inline(always)]
pub(crate) fn round_half_even(x: f32) -> f32 {
    (x + ROUNDING_MAGIC) - ROUNDING_MAGIC
}

isa_dispatch! {
    /// Rounds to int8 codes with scale amax/127; returns (d, Σq). Like GGML's x86 code
    /// (whose results our reference logits come from) it multiplies by 127/amax and
    /// rounds halves to even. Compiled for the selected ISA too: the same operations,
    /// vectorized.
    fn q8_codes(x: &[f32], codes: &mut [u8]) -> (f32, i32) => q8_codes_block
}

#[inline(always)]
fn q8_codes_block(x: &[f32], codes: &mut [u8]) -> (f32, i32) {
    let amax = abs_max(x);
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0;
    for (c, v) in codes.iter_mut().zip(x) {
        let q = round_to_int(v * id);
        sum += q;
        *c = q as i8 as u8;
    }
    (d, sum)
}

/// `round_half_even(x) as i32` for |x| < 2^22 (NaN: 0), read from the sum's bits rather
/// than converted, so that a block's loop vectorizes.
#[inline(always)]
pub(crate) fn round_to_int(x: f32) -> i32 {
    let n = (x + ROUNDING_MAGIC).to_bits() as i32 - ROUNDING_BITS;
    if x.is_nan() {
        0
    } else {
        n
    }
}

/// Q8_0 as activations and a quantized KV cache are written (GGML's x86 code).
pub fn quantize_q8_0(x: &[f32], block: &mut [u8]) {
    let (d, _) = q8_codes(x, &mut block[2..34]);
    put_f16(block, 0, d);
}

/// Q8_0 as llama-quantize writes weights into a file (GGML's reference quantizer): codes
/// are x · (1/d) rounded halves away from zero, which differs from `quantize_q8_0` where
/// a value lands on a half (as values re-quantized from a 4-bit file do).
pub fn quantize_q8_0_weights(x: &[f32], block: &mut [u8]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (c, v) in block[2..34].iter_mut().zip(x) {
        *c = (v * id).round() as i8 as u8;
    }
    put_f16(block, 0, d);
}

pub fn quantize_q8_1(x: &[f32], block: &mut [u8]) {
    let (d, sum) = q8_codes(x, &mut block[4..36]);
    put_f16(block, 0, d);
    put_f16(block, 2, d * sum as f32);
}

#[cfg(test)]
mod tests {
    #[test]
    fn magic_rounding_matches_round_ties_even() {
        for i in -100_000..100_000 {
            let x = i as f32 * 0.00137 + (i % 7) as f32 * 0.5;
            assert_eq!(super::round_half_even(x), x.round_ties_even(), "{x}");
        }
        for x in [0.5f32, 1.5, 2.5, -0.5, -1.5, 126.5, -127.5, 127.49999] {
            assert_eq!(super::round_half_even(x), x.round_ties_even(), "{x}");
        }
    }

    #[test]
    fn q8_codes_match_the_one_value_at_a_time_loop() {
        let reference = |x: &[f32], codes: &mut [u8]| {
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut sum = 0;
            for (c, v) in codes.iter_mut().zip(x) {
                let q = super::round_half_even(v * id) as i32;
                sum += q;
                *c = q as i8 as u8;
            }
            (amax / 127.0, sum)
        };
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for block in 0..500 {
            let x: Vec<f32> = (0..32)
                .map(|i| match block % 5 {
                    // Halves after scaling by 127 / 127: ties to even.
                    0 if i == 5 => -127.0,
                    0 => (next() * 250.0).round() + 0.5,
                    1 => 0.0,
                    // A NaN among the values rounds to 0 and leaves the scale alone.
                    2 if i == 9 => f32::NAN,
                    _ => next() * 10f32.powi(block % 7 - 3),
                })
                .collect();
            let (mut fast, mut slow) = ([0u8; 32], [0u8; 32]);
            let got = super::q8_codes(&x, &mut fast);
            let want = reference(&x, &mut slow);
            assert_eq!(
                (got.0.to_bits(), got.1),
                (want.0.to_bits(), want.1),
                "{x:?}"
            );
            assert_eq!(fast, slow, "{x:?}");
        }
    }

    #[test]
    fn signed_absmax_is_the_first_value_of_largest_magnitude() {
        let mut x: Vec<f32> = (0..37)
            .map(|i| ((i * 7919 % 23) as f32 - 11.0) / 4.0)
            .collect();
        let naive = |x: &[f32]| {
            x.iter()
                .fold(0.0f32, |b, &v| if v.abs() > b.abs() { v } else { b })
        };
        assert_eq!(super::signed_absmax(&x), naive(&x));
        x[30] = -9.0;
        x[33] = 9.0;
        assert_eq!(super::signed_absmax(&x), -9.0);
        x[3] = 9.0;
        assert_eq!(super::signed_absmax(&x), 9.0);
        assert_eq!(
            super::signed_absmax(&[0.0, -0.0]).to_bits(),
            0.0f32.to_bits()
        );
    }
}
