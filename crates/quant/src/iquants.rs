//! Scalar reference for GGML's non-linear 4-bit formats, IQ4_NL and IQ4_XS. A 4-bit code
//! does not stand for an evenly spaced level but indexes a fixed table of sixteen signed
//! levels (`IQ4_LEVELS`), denser near zero where weights are dense; a block's value is
//! `d · level[code]`.
//!
//! - IQ4_NL: blocks of 32, `d` (f16) then 16 bytes of codes in GGML's Q4 order (byte j
//!   holds value j in its low nibble and value j + 16 in its high nibble).
//! - IQ4_XS: super-blocks of 256, `d` (f16), the high two bits of eight 6-bit sub-block
//!   scales (`scales_h`, u16), their low four bits (`scales_l[4]`), and eight sub-blocks
//!   of 32 codes as in IQ4_NL. Sub-block j's step is `d · (scale_j − 32)`.
//!
//! The quantizers choose each block's step by a weighted least-squares search over
//! candidate steps, as GGML's do without an importance matrix (weights x²).

use crate::kquants_search::{nearest, ZERO_GROUP};
use crate::legacy::signed_absmax;
use crate::{f16_at, put_f16};

/// The sixteen levels a 4-bit code stands for (the format's definition).
pub const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Code of the level nearest to `v` (the upper one on a tie, as GGML picks).
fn nearest_level(v: f32) -> u8 {
    let above = IQ4_LEVELS.partition_point(|&l| (l as f32) < v);
    match above {
        0 => 0,
        16 => 15,
        _ => {
            let (lo, hi) = (IQ4_LEVELS[above - 1] as f32, IQ4_LEVELS[above] as f32);
            if v - lo < hi - v {
                above as u8 - 1
            } else {
                above as u8
            }
        }
    }
}

/// Value i (0..32) of a 32-value block of codes `qs[16]`.
#[inline(always)]
pub(crate) fn iq4_code(qs: &[u8], i: usize) -> usize {
    if i < 16 {
        (qs[i] & 0xf) as usize
    } else {
        (qs[i - 16] >> 4) as usize
    }
}

fn pack_codes(codes: &[u8], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = codes[j] | (codes[16 + j] << 4);
    }
}

/// Codes for `x` at step `d` (0 for a zero step).
fn codes_at(x: &[f32], d: f32, codes: &mut [u8]) {
    let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = nearest_level(v * inverse);
    }
}

/// The step of the best weighted least-squares fit of `x` by the table's levels: tries
/// the steps that map the block's largest magnitude onto level 0 (−127) shifted by
/// −7..=7, and for each the step that best fits the codes it picks.
fn best_step(x: &[f32]) -> f32 {
    let extreme = signed_absmax(x);
    if extreme.abs() < ZERO_GROUP {
        return 0.0;
    }
    let fit = |inverse: f32| {
        let (mut qx, mut qq) = (0.0f32, 0.0f32);
        for &v in x {
            let q = IQ4_LEVELS[nearest_level(v * inverse) as usize] as f32;
            let w = v * v;
            qx += w * q * v;
            qq += w * q * q;
        }
        (qx, qq)
    };
    let first = IQ4_LEVELS[0] as f32;
    let (qx, qq) = fit(1.0 / (-extreme / first));
    let mut step = if qq > 0.0 { qx / qq } else { 0.0 };
    let mut best = step * qx;
    for shift in -7..=7 {
        let (qx, qq) = fit((shift as f32 + first) / extreme);
        if qq > 0.0 && qx * qx > best * qq {
            step = qx / qq;
            best = step * qx;
        }
    }
    step
}

// ---- IQ4_NL: d, qs[16] ----

pub fn dequantize_iq4_nl(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (i, y) in out[..32].iter_mut().enumerate() {
        *y = d * IQ4_LEVELS[iq4_code(&b[2..], i)] as f32;
    }
}

pub fn quantize_iq4_nl(x: &[f32], b: &mut [u8]) {
    // Codes are picked against the step before its rounding to f16, as GGML does.
    let d = best_step(&x[..32]);
    let mut codes = [0u8; 32];
    codes_at(&x[..32], d, &mut codes);
    put_f16(b, 0, d);
    pack_codes(&codes, &mut b[2..18]);
}

// ---- IQ4_XS: d, scales_h (u16), scales_l[4], qs[128] ----

/// Sub-block j's 6-bit scale code (the step is d · (code − 32)).
#[inline(always)]
pub(crate) fn iq4_xs_scale(b: &[u8], j: usize) -> i32 {
    let high = u16::from_le_bytes([b[2], b[3]]) >> (2 * j) & 3;
    let low = (b[4 + j / 2] >> (4 * (j % 2))) & 0xf;
    (low as i32 | (high as i32) << 4) - 32
}

pub fn dequantize_iq4_xs(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, sub) in out[..256].chunks_exact_mut(32).enumerate() {
        let step = d * iq4_xs_scale(b, j) as f32;
        let qs = &b[8 + 16 * j..];
        for (i, y) in sub.iter_mut().enumerate() {
            *y = step * IQ4_LEVELS[iq4_code(qs, i)] as f32;
        }
    }
}

pub fn quantize_iq4_xs(x: &[f32], b: &mut [u8]) {
    let steps: [f32; 8] = std::array::from_fn(|j| best_step(&x[32 * j..32 * j + 32]));
    // The largest step becomes scale code −32, the end of the range with room for it.
    // Scales and codes are picked against d before its rounding to f16, as GGML does.
    let d = -signed_absmax(&steps) / 32.0;
    let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
    b[..136].fill(0);
    put_f16(b, 0, d);
    let mut high = 0u16;
    for (j, &step) in steps.iter().enumerate() {
        let scale = nearest(step * inverse).clamp(-32, 31);
        let mut codes = [0u8; 32];
        codes_at(&x[32 * j..32 * j + 32], d * scale as f32, &mut codes);
        pack_codes(&codes, &mut b[8 + 16 * j..24 + 16 * j]);
        let code = (scale + 32) as u16;
        b[4 + j / 2] |= ((code & 0xf) as u8) << (4 * (j % 2));
        high |= (code >> 4) << (2 * j);
    }
    b[2..4].copy_from_slice(&high.to_le_bytes());
}
