//! Scalar reference for GGML's 256-value "k-quant" super-blocks: Q2_K, Q3_K, Q4_K,
//! Q5_K, Q6_K and Q8_K. Each super-block holds sub-blocks of 16 or 32 values whose own
//! scales (and mins) are quantized against the super-block's f16 `d` (and `dmin`).
//!
//! The quantizers search each sub-block's scale as GGML's reference quantizers do
//! (`kquants_search.rs`), then quantize the sub-block scales against the super-block's
//! and re-round every value against the scale it will be read with: the bytes are
//! llama.cpp's (without an importance matrix).

use crate::kquants_search::{
    affine_search, nearest, refined_search, symmetric_search, Miss, ScaleGrid, ZERO_GROUP,
};
use crate::legacy::{round_to_int, signed_absmax};
use crate::{f16_at, put_f16};

pub const QK_K: usize = 256;

/// The largest of `values` and zero (a sub-block search's scales and offsets are ≥ 0).
fn positive_max(values: &[f32]) -> f32 {
    values.iter().fold(0.0, |m, &v| if v > m { v } else { m })
}

/// Writes the 2-bit codes of Q2_K and Q3_K: value `i` at bits 2·((i % 128) / 32) of byte
/// (i / 128)·32 + i % 32 of `qs`.
fn pack_2bit(codes: &[u8; QK_K], qs: &mut [u8]) {
    qs[..64].fill(0);
    for (i, &q) in codes.iter().enumerate() {
        qs[(i / 128) * 32 + i % 32] |= (q & 3) << (2 * ((i % 128) / 32));
    }
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
    let mut codes = [0u8; QK_K];
    let (mut scales, mut offsets) = ([0.0f32; 16], [0.0f32; 16]);
    for (j, (x, codes)) in x[..QK_K].chunks(16).zip(codes.chunks_mut(16)).enumerate() {
        let weights: [f32; 16] = std::array::from_fn(|i| x[i].abs());
        let grid = ScaleGrid {
            first: -0.5,
            step: 0.1,
            steps: 15,
        };
        (scales[j], offsets[j]) = affine_search(x, &weights, 3, grid, Miss::Absolute, codes);
    }
    let (max_scale, max_offset) = (positive_max(&scales), positive_max(&offsets));
    b[..16].fill(0);
    let (mut d, mut dmin) = (0.0, 0.0);
    if max_scale > 0.0 {
        let inverse = 15.0 / max_scale;
        for (packed, &scale) in b.iter_mut().zip(&scales) {
            *packed = nearest(inverse * scale) as u8;
        }
        d = max_scale / 15.0;
    }
    if max_offset > 0.0 {
        let inverse = 15.0 / max_offset;
        for (packed, &offset) in b.iter_mut().zip(&offsets) {
            *packed |= (nearest(inverse * offset) as u8) << 4;
        }
        dmin = max_offset / 15.0;
    }
    put_f16(b, 80, d);
    put_f16(b, 82, dmin);
    for (j, (x, codes)) in x[..QK_K].chunks(16).zip(codes.chunks_mut(16)).enumerate() {
        let step = f16_at(b, 80) * (b[j] & 0xf) as f32;
        if step == 0.0 {
            continue;
        }
        let offset = f16_at(b, 82) * (b[j] >> 4) as f32;
        for (q, &v) in codes.iter_mut().zip(x) {
            *q = nearest((v + offset) / step).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&codes, &mut b[16..80]);
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
    let mut codes = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    for (j, (x, codes)) in x[..QK_K].chunks(16).zip(codes.chunks_mut(16)).enumerate() {
        scales[j] = refined_search(x, 4, codes);
    }
    let max_scale = signed_absmax(&scales);
    b[..110].fill(0);
    if max_scale != 0.0 {
        let inverse = -32.0 / max_scale;
        let s = |j: usize| (nearest(inverse * scales[j]).clamp(-32, 31) + 32) as u8;
        for i in 0..4 {
            b[96 + i] = (s(i) & 0xf) | ((s(8 + i) & 0xf) << 4);
            b[100 + i] = (s(4 + i) & 0xf) | ((s(12 + i) & 0xf) << 4);
            b[104 + i] = (s(i) >> 4)
                | ((s(4 + i) >> 4) << 2)
                | ((s(8 + i) >> 4) << 4)
                | ((s(12 + i) >> 4) << 6);
        }
        put_f16(b, 108, 1.0 / inverse);
    }
    let sub_scales = q3_k_scales(&b[96..108]);
    for (j, (x, codes)) in x[..QK_K].chunks(16).zip(codes.chunks_mut(16)).enumerate() {
        let step = f16_at(b, 108) * sub_scales[j] as f32;
        if step == 0.0 {
            continue;
        }
        for (q, &v) in codes.iter_mut().zip(x) {
            *q = (nearest(v / step).clamp(-4, 3) + 4) as u8;
        }
    }
    pack_2bit(&codes, &mut b[32..96]);
    for (i, &q) in codes.iter().enumerate() {
        b[i % 32] |= (q >> 2) << (i / 32);
    }
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

/// Q4_K and Q5_K's scales and codes (in [0, nmax]); writes d, dmin and the scales and
/// returns the codes for the caller to pack.
fn quantize_k4(x: &[f32], b: &mut [u8], nmax: i32, grid_first: f32, grid_steps: i32) -> [u8; QK_K] {
    let mut codes = [0u8; QK_K];
    let (mut scales, mut offsets) = ([0.0f32; 8], [0.0f32; 8]);
    for (j, (x, codes)) in x[..QK_K].chunks(32).zip(codes.chunks_mut(32)).enumerate() {
        let mut sum_x2 = 0.0f32;
        for &v in x {
            sum_x2 += v * v;
        }
        let spread = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|i| spread + x[i].abs());
        let grid = ScaleGrid {
            first: grid_first,
            step: 0.1,
            steps: grid_steps,
        };
        (scales[j], offsets[j]) = affine_search(x, &weights, nmax, grid, Miss::Squared, codes);
    }
    let (max_scale, max_offset) = (positive_max(&scales), positive_max(&offsets));
    let to_code = |v: f32, max: f32| {
        let inverse = if max > 0.0 { 63.0 / max } else { 0.0 };
        (nearest(inverse * v) as u8).min(63)
    };
    let ls: [u8; 8] = std::array::from_fn(|j| to_code(scales[j], max_scale));
    let lm: [u8; 8] = std::array::from_fn(|j| to_code(offsets[j], max_offset));
    pack_scale_min_k4(&ls, &lm, &mut b[4..16]);
    put_f16(b, 0, max_scale / 63.0);
    put_f16(b, 2, max_offset / 63.0);
    for (j, (x, codes)) in x[..QK_K].chunks(32).zip(codes.chunks_mut(32)).enumerate() {
        let (sc, m) = scale_min_k4(j, &b[4..16]);
        let step = f16_at(b, 0) * sc as f32;
        if step == 0.0 {
            continue;
        }
        let offset = f16_at(b, 2) * m as f32;
        for (q, &v) in codes.iter_mut().zip(x) {
            *q = nearest((v + offset) / step).clamp(0, nmax) as u8;
        }
    }
    codes
}

/// Writes the low nibbles of Q4_K/Q5_K codes: value `i` in byte (i / 64)·32 + i % 32,
/// the high nibble for the second 32 of each 64.
fn pack_k4_nibbles(codes: &[u8; QK_K], qs: &mut [u8]) {
    qs[..128].fill(0);
    for (i, &q) in codes.iter().enumerate() {
        let shift = if (i % 64) < 32 { 0 } else { 4 };
        qs[(i / 64) * 32 + i % 32] |= (q & 0xf) << shift;
    }
}

pub fn quantize_q4_k(x: &[f32], b: &mut [u8]) {
    let codes = quantize_k4(x, b, 15, -1.0, 20);
    pack_k4_nibbles(&codes, &mut b[16..144]);
}

pub fn quantize_q5_k(x: &[f32], b: &mut [u8]) {
    let codes = quantize_k4(x, b, 31, -0.5, 15);
    pack_k4_nibbles(&codes, &mut b[48..176]);
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
    let mut codes = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    for (j, (x, codes)) in x[..QK_K].chunks(16).zip(codes.chunks_mut(16)).enumerate() {
        scales[j] = symmetric_search(x, 32, codes);
    }
    b[..210].fill(0);
    let max_scale = signed_absmax(&scales);
    if max_scale.abs() < ZERO_GROUP {
        return;
    }
    let inverse = -128.0 / max_scale;
    put_f16(b, 208, 1.0 / inverse);
    for (packed, &scale) in b[192..208].iter_mut().zip(&scales) {
        *packed = nearest(inverse * scale).min(127) as i8 as u8;
    }
    for (j, (x, codes)) in x[..QK_K].chunks(16).zip(codes.chunks_mut(16)).enumerate() {
        let step = f16_at(b, 208) * (b[192 + j] as i8) as f32;
        if step == 0.0 {
            continue;
        }
        for (q, &v) in codes.iter_mut().zip(x) {
            *q = (nearest(v / step).clamp(-32, 31) + 32) as u8;
        }
    }
    for (i, &q) in codes.iter().enumerate() {
        let (ql, high, qh, shift) = q6_k_position(i);
        b[ql] |= if high { (q & 0xf) << 4 } else { q & 0xf };
        b[128 + qh] |= (q >> 4) << shift;
    }
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
        b[4 + i] = round_to_int(iscale * v).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let sum: i32 = (0..16).map(|k| b[4 + 16 * j + k] as i8 as i32).sum();
        b[260 + 2 * j..262 + 2 * j].copy_from_slice(&(sum as i16).to_le_bytes());
    }
    b[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}
