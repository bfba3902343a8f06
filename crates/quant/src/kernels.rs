//! Dot products of one quantized weight row with one quantized activation row, the
//! way GGML computes them: activations are quantized to the weight type's partner
//! format (`activation_type`), blocks are multiplied in integers, and each block's
//! result is scaled and summed in a fixed order. Matching GGML's rounding keeps our
//! logits, and so greedy output, in step with llama.cpp.
//!
//! Each kernel is plain Rust written so the compiler vectorizes it; `matmul` inlines it
//! into copies compiled for AVX2 and AVX-512 and picks one at run time. Every copy
//! computes the same integer sums and float operations in the same order, so all give
//! the same bits.

use crate::f16_at;
use gguf::GgmlType;

/// The format activations are quantized to before a dot product with `weight`.
pub fn activation_type(weight: GgmlType) -> GgmlType {
    use GgmlType::*;
    match weight {
        Q4_0 | Q5_0 | Q8_0 => Q8_0,
        Q4_1 | Q5_1 => Q8_1,
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K => Q8_K,
        F16 => F16,
        BF16 => BF16,
        _ => F32,
    }
}

/// A dot-product kernel: one weight row (in `ty`) · one activation row (in its partner
/// format). A trait with static functions, not a closure, so that `#[inline(always)]`
/// reaches into each ISA-specific copy of the matmul loop.
pub trait Kernel {
    fn dot(ty: GgmlType, w: &[u8], a: &[u8]) -> f32;
}

macro_rules! kernel {
    ($name:ident, $f:ident) => {
        pub struct $name;
        impl Kernel for $name {
            #[inline(always)]
            fn dot(_: GgmlType, w: &[u8], a: &[u8]) -> f32 {
                $f(w, a)
            }
        }
    };
}

kernel!(Q4_0Q8_0, dot_q4_0_q8_0);
kernel!(Q4_1Q8_1, dot_q4_1_q8_1);
kernel!(Q5_0Q8_0, dot_q5_0_q8_0);
kernel!(Q5_1Q8_1, dot_q5_1_q8_1);
kernel!(Q8_0Q8_0, dot_q8_0_q8_0);

/// Every other weight type: decode both sides to f32.
pub struct Dequantizing;
impl Kernel for Dequantizing {
    #[inline(always)]
    fn dot(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
        dot_by_dequantizing(ty, w, a)
    }
}

#[inline(always)]
fn i8_at(b: &[u8], i: usize) -> i32 {
    b[i] as i8 as i32
}

/// Q4_0 × Q8_0: d_w·d_a·Σ(q_w − 8)·q_a per block.
#[inline(always)]
pub fn dot_q4_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(18).zip(a.chunks_exact(34)) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let q = wb[2 + j];
            sumi += ((q & 0xf) as i32 - 8) * i8_at(ab, 2 + j);
            sumi += ((q >> 4) as i32 - 8) * i8_at(ab, 18 + j);
        }
        sum += f16_at(wb, 0) * f16_at(ab, 0) * sumi as f32;
    }
    sum
}

/// Q4_1 × Q8_1: d_w·d_a·Σq_w·q_a + m_w·s_a per block (s_a = d_a·Σq_a).
#[inline(always)]
pub fn dot_q4_1_q8_1(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(20).zip(a.chunks_exact(36)) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let q = wb[4 + j];
            sumi += (q & 0xf) as i32 * i8_at(ab, 4 + j);
            sumi += (q >> 4) as i32 * i8_at(ab, 20 + j);
        }
        sum += f16_at(wb, 0) * f16_at(ab, 0) * sumi as f32 + f16_at(wb, 2) * f16_at(ab, 2);
    }
    sum
}

#[inline(always)]
fn q5_value(qs: &[u8], qh: u32, j: usize) -> (i32, i32) {
    let low = ((qs[j] & 0xf) as u32 | (((qh >> j) << 4) & 0x10)) as i32;
    let high = ((qs[j] >> 4) as u32 | ((qh >> (j + 12)) & 0x10)) as i32;
    (low, high)
}

/// Q5_0 × Q8_0.
#[inline(always)]
pub fn dot_q5_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(22).zip(a.chunks_exact(34)) {
        let qh = u32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]);
        let mut sumi = 0i32;
        for j in 0..16 {
            let (lo, hi) = q5_value(&wb[6..], qh, j);
            sumi += (lo - 16) * i8_at(ab, 2 + j) + (hi - 16) * i8_at(ab, 18 + j);
        }
        sum += f16_at(wb, 0) * f16_at(ab, 0) * sumi as f32;
    }
    sum
}

/// Q5_1 × Q8_1.
#[inline(always)]
pub fn dot_q5_1_q8_1(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(24).zip(a.chunks_exact(36)) {
        let qh = u32::from_le_bytes([wb[4], wb[5], wb[6], wb[7]]);
        let mut sumi = 0i32;
        for j in 0..16 {
            let (lo, hi) = q5_value(&wb[8..], qh, j);
            sumi += lo * i8_at(ab, 4 + j) + hi * i8_at(ab, 20 + j);
        }
        sum += f16_at(wb, 0) * f16_at(ab, 0) * sumi as f32 + f16_at(wb, 2) * f16_at(ab, 2);
    }
    sum
}

/// Q8_0 × Q8_0.
#[inline(always)]
pub fn dot_q8_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(34).zip(a.chunks_exact(34)) {
        let mut sumi = 0i32;
        for j in 0..32 {
            sumi += i8_at(wb, 2 + j) * i8_at(ab, 2 + j);
        }
        sum += f16_at(wb, 0) * f16_at(ab, 0) * sumi as f32;
    }
    sum
}

/// Any other pair: decode a stretch of each side to f32 and multiply.
pub fn dot_by_dequantizing(weight: GgmlType, w: &[u8], a: &[u8]) -> f32 {
    let act = activation_type(weight);
    let cols = w.len() / weight.type_size() * weight.block_size();
    let unit = weight.block_size().max(act.block_size()).max(32);
    let bytes = |ty: GgmlType, from: usize, to: usize| {
        from / ty.block_size() * ty.type_size()..to / ty.block_size() * ty.type_size()
    };
    let mut wf = [0.0f32; 256];
    let mut af = [0.0f32; 256];
    let mut sum = 0.0f32;
    let mut i = 0;
    while i < cols {
        let len = unit.min(cols - i);
        // The ranges are whole blocks: `len` is a multiple of both block sizes.
        let _ = crate::dequantize(weight, &w[bytes(weight, i, i + len)], &mut wf[..len]);
        let _ = crate::dequantize(act, &a[bytes(act, i, i + len)], &mut af[..len]);
        sum += crate::dot::dot_f32(&wf[..len], &af[..len]);
        i += len;
    }
    sum
}
