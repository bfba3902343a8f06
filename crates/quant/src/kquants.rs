//! Scalar reference for GGML's 256-value "k-quant" super-blocks: Q2_K, Q3_K, Q4_K,
//! Q5_K, Q6_K and Q8_K. Each super-block holds sub-blocks of 16 or 32 values whose own
//! scales (and mins) are quantized against the super-block's f16 `d` (and `dmin`).
//!
//! The quantizers here pick scales from each sub-block's range (no iterative search as
//! in GGML's reference), so they are a little less accurate but write the same layout.

use crate::legacy::{round_half_even, signed_absmax};
use crate::{f16_at, put_f16, round_f16};

pub const QK_K: usize = 256;

fn sub_min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((0.0f32, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn div_or_zero(a: f32, b: f32) -> f32 {
    if b != 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Quantizes each sub-block's (scale, -min) pair to `levels`-level codes against
/// shared maxima; returns (d, dmin, scale codes, min codes).
fn affine_scales(x: &[f32], sub: usize, q_max: f32, levels: f32) -> (f32, f32, Vec<u8>, Vec<u8>) {
    let ranges: Vec<(f32, f32)> = x
        .chunks(sub)
        .map(|c| {
            let (lo, hi) = sub_min_max(c);
            ((hi - lo) / q_max, -lo)
        })
        .collect();
    let max_scale = ranges.iter().fold(0.0f32, |m, r| m.max(r.0));
    let max_min = ranges.iter().fold(0.0f32, |m, r| m.max(r.1));
    let d = round_f16(max_scale / levels);
    let dmin = round_f16(max_min / levels);
    let code = |v: f32, step: f32| div_or_zero(v, step).round().clamp(0.0, levels) as u8;
    let ls = ranges.iter().map(|r| code(r.0, d)).collect();
    let lm = ranges.iter().map(|r| code(r.1, dmin)).collect();
    (d, dmin, ls, lm)
}

fn affine_code(x: f32, dl: f32, ml: f32, q_max: u8) -> u8 {
    div_or_zero(x + ml, dl).round().clamp(0.0, q_max as f32) as u8
}

// ---- Q2_K: scales[16] (scale | min<<4), qs[64], d, dmin ----

pub fn dequantize_q2_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (i, y) in out[..QK_K].iter_mut().enumerate() {
        let sc = b[i / 16];
        let q = (b[16 + (i / 128) * 32 + i % 32] >> (2 * ((i % 128) / 32))) & 3;
        *y = d * (sc & 0xf) as f32 * q as f32 - dmin * (sc >> 4) as f32;
    }
}

pub fn quantize_q2_k(x: &[f32], b: &mut [u8]) {
    let (d, dmin, ls, lm) = affine_scales(x, 16, 3.0, 15.0);
    b[..84].fill(0);
    for j in 0..16 {
        b[j] = ls[j] | (lm[j] << 4);
    }
    for (i, &v) in x[..QK_K].iter().enumerate() {
        let s = i / 16;
        let q = affine_code(v, d * ls[s] as f32, dmin * lm[s] as f32, 3);
        b[16 + (i / 128) * 32 + i % 32] |= q << (2 * ((i % 128) / 32));
    }
    put_f16(b, 80, d);
    put_f16(b, 82, dmin);
}

// ---- Q3_K: hmask[32], qs[64], scales[12] (16 six-bit codes), d ----

pub(crate) fn q3_k_scales(packed: &[u8]) -> [i32; 16] {
    let mut s = [0i32; 16];
    for i in 0..4 {
        let (a0, a1, t) = (packed[i], packed[4 + i], packed[8 + i]);
        s[i] = ((a0 & 0xf) | ((t & 3) << 4)) as i32 - 32;
        s[4 + i] = ((a1 & 0xf) | (((t >> 2) & 3) << 4)) as i32 - 32;
        s[8 + i] = ((a0 >> 4) | (((t >> 4) & 3) << 4)) as i32 - 32;
        s[12 + i] = ((a1 >> 4) | (((t >> 6) & 3) << 4)) as i32 - 32;
    }
    s
}

pub fn dequantize_q3_k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 108);
    let scales = q3_k_scales(&b[96..108]);
    for (i, y) in out[..QK_K].iter_mut().enumerate() {
        let (n, j, l) = (i / 128, (i % 128) / 32, i % 32);
        let low = (b[32 + n * 32 + l] >> (2 * j)) & 3;
        let high = b[l] & (1 << (n * 4 + j)) != 0;
        let q = low as i32 - if high { 0 } else { 4 };
        *y = d * scales[i / 16] as f32 * q as f32;
    }
}

pub fn quantize_q3_k(x: &[f32], b: &mut [u8]) {
    let sub_scales: Vec<f32> = x.chunks(16).map(|c| signed_absmax(c) / -4.0).collect();
    let d = round_f16(signed_absmax(&sub_scales) / -32.0);
    let ls: Vec<i32> = sub_scales
        .iter()
        .map(|&s| div_or_zero(s, d).round().clamp(-32.0, 31.0) as i32)
        .collect();
    b[..110].fill(0);
    for i in 0..4 {
        let s = |k: usize| (ls[k] + 32) as u8;
        b[96 + i] = (s(i) & 0xf) | ((s(8 + i) & 0xf) << 4);
        b[100 + i] = (s(4 + i) & 0xf) | ((s(12 + i) & 0xf) << 4);
        b[104 + i] =
            (s(i) >> 4) | ((s(4 + i) >> 4) << 2) | ((s(8 + i) >> 4) << 4) | ((s(12 + i) >> 4) << 6);
    }
    for (i, &v) in x[..QK_K].iter().enumerate() {
        let dl = d * ls[i / 16] as f32;
        let q = (div_or_zero(v, dl).round().clamp(-4.0, 3.0) as i32 + 4) as u8;
        let (n, j, l) = (i / 128, (i % 128) / 32, i % 32);
        b[32 + n * 32 + l] |= (q & 3) << (2 * j);
        b[l] |= (q >> 2) << (n * 4 + j);
    }
    put_f16(b, 108, d);
}

// ---- Q4_K / Q5_K: d, dmin, scales[12] (eight 6-bit scale/min pairs), [qh[32]], qs[128] ----

pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

pub(crate) fn pack_scale_min_k4(ls: &[u8], lm: &[u8], q: &mut [u8]) {
    for j in 0..4 {
        q[j] = ls[j] | ((ls[j + 4] >> 4) << 6);
        q[j + 4] = lm[j] | ((lm[j + 4] >> 4) << 6);
        q[j + 8] = (ls[j + 4] & 0xf) | ((lm[j + 4] & 0xf) << 4);
    }
}

/// Value `i`'s low nibble in a Q4_K/Q5_K `qs` array.
pub(crate) fn k4_nibble(qs: &[u8], i: usize) -> u8 {
    let byte = qs[(i / 64) * 32 + i % 32];
    if (i % 64) < 32 {
        byte & 0xf
    } else {
        byte >> 4
    }
}

pub fn dequantize_q4_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    for (i, y) in out[..QK_K].iter_mut().enumerate() {
        let (sc, m) = scale_min_k4(i / 32, &b[4..16]);
        *y = d * sc as f32 * k4_nibble(&b[16..], i) as f32 - dmin * m as f32;
    }
}

pub fn dequantize_q5_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    for (i, y) in out[..QK_K].iter_mut().enumerate() {
        let (sc, m) = scale_min_k4(i / 32, &b[4..16]);
        let high = (b[16 + i % 32] >> (i / 32)) & 1;
        let q = k4_nibble(&b[48..], i) | (high << 4);
        *y = d * sc as f32 * q as f32 - dmin * m as f32;
    }
}

fn quantize_k4(x: &[f32], b: &mut [u8], q_max: u8, qs_at: usize) -> Vec<u8> {
    let (d, dmin, ls, lm) = affine_scales(x, 32, q_max as f32, 63.0);
    put_f16(b, 0, d);
    put_f16(b, 2, dmin);
    pack_scale_min_k4(&ls, &lm, &mut b[4..16]);
    b[qs_at..qs_at + 128].fill(0);
    let mut codes = vec![0u8; QK_K];
    for (i, &v) in x[..QK_K].iter().enumerate() {
        let s = i / 32;
        let q = affine_code(v, d * ls[s] as f32, dmin * lm[s] as f32, q_max);
        codes[i] = q;
        let shift = if (i % 64) < 32 { 0 } else { 4 };
        b[qs_at + (i / 64) * 32 + i % 32] |= (q & 0xf) << shift;
    }
    codes
}

pub fn quantize_q4_k(x: &[f32], b: &mut [u8]) {
    quantize_k4(x, b, 15, 16);
}

pub fn quantize_q5_k(x: &[f32], b: &mut [u8]) {
    let codes = quantize_k4(x, b, 31, 48);
    b[16..48].fill(0);
    for (i, q) in codes.iter().enumerate() {
        b[16 + i % 32] |= (q >> 4) << (i / 32);
    }
}

// ---- Q6_K: ql[128], qh[64], scales[16] (i8), d ----

/// (ql index, ql high nibble?, qh index, qh shift) of value `i`.
pub(crate) fn q6_k_position(i: usize) -> (usize, bool, usize, usize) {
    let (n, r) = (i / 128, i % 128);
    let (quarter, l) = (r / 32, r % 32);
    let ql = n * 64 + l + if quarter % 2 == 1 { 32 } else { 0 };
    (ql, quarter >= 2, n * 32 + l, 2 * quarter)
}

pub fn dequantize_q6_k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 208);
    for (i, y) in out[..QK_K].iter_mut().enumerate() {
        let (ql, high, qh, shift) = q6_k_position(i);
        let low = if high { b[ql] >> 4 } else { b[ql] & 0xf };
        let q = (low | (((b[128 + qh] >> shift) & 3) << 4)) as i32 - 32;
        *y = d * (b[192 + i / 16] as i8) as f32 * q as f32;
    }
}

pub fn quantize_q6_k(x: &[f32], b: &mut [u8]) {
    let sub_scales: Vec<f32> = x.chunks(16).map(|c| signed_absmax(c) / -32.0).collect();
    let d = round_f16(signed_absmax(&sub_scales) / -128.0);
    b[..210].fill(0);
    for (j, &s) in sub_scales.iter().enumerate() {
        b[192 + j] = div_or_zero(s, d).round().clamp(-128.0, 127.0) as i8 as u8;
    }
    for (i, &v) in x[..QK_K].iter().enumerate() {
        let dl = d * (b[192 + i / 16] as i8) as f32;
        let q = (div_or_zero(v, dl).round().clamp(-32.0, 31.0) as i32 + 32) as u8;
        let (ql, high, qh, shift) = q6_k_position(i);
        b[ql] |= if high { (q & 0xf) << 4 } else { q & 0xf };
        b[128 + qh] |= (q >> 4) << shift;
    }
    put_f16(b, 208, d);
}

// ---- Q8_K: d (f32), qs[256] (i8), bsums[16] (i16) ----

pub fn dequantize_q8_k(b: &[u8], out: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (i, y) in out[..QK_K].iter_mut().enumerate() {
        *y = d * (b[4 + i] as i8) as f32;
    }
}

/// Q8_K, the activations of every K-quant matrix: with AVX2 where the CPU has it (the
/// same operations, vectorized; the portable build's baseline is SSE2).
pub fn quantize_q8_k(x: &[f32], b: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { quantize_q8_k_avx2(x, b) };
    }
    quantize_q8_k_block(x, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_q8_k_avx2(x: &[f32], b: &mut [u8]) {
    quantize_q8_k_block(x, b)
}

#[inline(always)]
fn quantize_q8_k_block(x: &[f32], b: &mut [u8]) {
    let max = signed_absmax(&x[..QK_K]);
    b[..292].fill(0);
    if max == 0.0 {
        return;
    }
    let iscale = -127.0 / max;
    for (i, &v) in x[..QK_K].iter().enumerate() {
        // GGML rounds halves to even here (its `nearest_int`).
        b[4 + i] = (round_half_even(iscale * v) as i32).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let sum: i32 = (0..16).map(|k| b[4 + 16 * j + k] as i8 as i32).sum();
        b[260 + 2 * j..262 + 2 * j].copy_from_slice(&(sum as i16).to_le_bytes());
    }
    b[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}
