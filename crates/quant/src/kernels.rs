//! Dot products of one quantized weight row with one quantized activation row, the
//! way GGML computes them: activations are quantized to the weight type's partner
//! format (`activation_type`), blocks are multiplied in integers, and each block's
//! result is scaled and summed in a fixed order. For every type but Q4_0 that order is
//! GGML's own (`LaneSums`), which keeps our logits, and so greedy output, in step with
//! llama.cpp's. Q4_0 uses a shorter order (`BlockSums`: one float operation per block
//! instead of eight) that lets its AVX-512 kernel take sixteen rows per pass; its results
//! differ from llama.cpp's only in rounding. The K-quant kernels (`kernels_k`) follow
//! llama.cpp's orders for those types, `LaneSums` and `MinSums`.
//!
//! Each kernel is plain Rust written so the compiler vectorizes it; `matmul` inlines it
//! into copies compiled for AVX2 and AVX-512 and picks one at run time. Every copy
//! computes the same integer sums and float operations in the same order, so all give
//! the same bits.

use crate::f16_at;
use crate::iquants::{iq4_code, IQ4_LEVELS};
use crate::iquants_lattice::dot_lattice_q8_k;
use crate::kernels_float::dot_f16_f16;
use crate::kernels_k::{
    dot_iq4_xs_q8_k, dot_q2_k_q8_k, dot_q3_k_q8_k, dot_q4_k_q8_k, dot_q5_k_q8_k, dot_q6_k_q8_k,
};
use crate::ternary::dot_ternary_q8_k;
use gguf::GgmlType;

/// The format activations are quantized to before a dot product with `weight`.
pub fn activation_type(weight: GgmlType) -> GgmlType {
    use GgmlType::*;
    match weight {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL => Q8_0,
        Q4_1 | Q5_1 => Q8_1,
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ4_XS => Q8_K,
        IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S | IQ1_S | IQ1_M | TQ1_0 | TQ2_0 => Q8_K,
        F16 => F16,
        BF16 => BF16,
        _ => F32,
    }
}

/// The quantized activations of N consecutive tokens as the kernels read them: each
/// token's row of blocks, and the blocks' scales as f32 in block-major order (`d[b·N +
/// i]` is block b of token i: Q8_0's and Q8_1's f16 widened, Q8_K's f32 copied; `s`
/// likewise for Q8_1's block sums), so
/// one load gives a block's scales for every token. Widening is exact, so kernels that
/// read these give the same bits as kernels that read the f16 in the rows.
pub struct TokenGroup<'a, const N: usize> {
    pub rows: [&'a [u8]; N],
    /// Whether the tokens' products follow llama.cpp's order for batches of 8 tokens or
    /// more (`TokenOrder::Batched`; a group never mixes the two).
    pub batched: bool,
    /// Q8_0 and Q8_1 activations: the 32 values of every block again, in `d`'s order
    /// (block b of token i at `(b·N + i)·32`), so that a kernel walks one pointer
    /// through the group instead of keeping one per token.
    pub qs: &'a [u8],
    /// Q8_0 and Q8_1 activations: `d` with each scale repeated eight times, so that a
    /// kernel multiplies it into a vector of weight scales straight from memory.
    pub d_wide: &'a [f32],
    pub d: &'a [f32],
    pub s: &'a [f32],
    /// Q8_0 activations only, for the packed kernels' correction of weights stored plus
    /// 128: −128 × Σ of each lane's four values, eight per block, in `d`'s order (Q8_0
    /// and Q5_0 weights).
    pub lane_bias: &'a [i32],
    /// For the packed kernels, in `d`'s order: Σ of each Q8_0 block's 32 values (Q4_0
    /// weights); each Q8_K block's eight sums of 32 values as four i32 of two i16 (Q4_K
    /// weights' mins).
    pub sums: &'a [i32],
}

/// A dot-product kernel: one weight row (in `ty`) · one activation row (in its partner
/// format). A trait with static functions, not a closure, so that `#[inline(always)]`
/// reaches into each ISA-specific copy of the matmul loop.
pub trait Kernel {
    /// Whether the kernel asks for its weights ahead itself (else `matmul` does, a few
    /// rows at a time).
    const PREFETCHES: bool = false;

    fn dot(ty: GgmlType, w: &[u8], a: &[u8]) -> f32;

    /// One weight row against N activation rows; each result equals `dot`'s.
    #[inline(always)]
    fn dotn<const N: usize>(ty: GgmlType, w: &[u8], g: &TokenGroup<N>) -> [f32; N] {
        g.rows.map(|a| Self::dot(ty, w, a))
    }

    /// R weight rows against N activation rows (`[token][row]`); each result equals
    /// `dot`'s. Kernels that interleave the rows, so that their dependency chains
    /// overlap, override it.
    #[inline(always)]
    fn dot_rows<const R: usize, const N: usize>(
        ty: GgmlType,
        w: [&[u8]; R],
        g: &TokenGroup<N>,
    ) -> [[f32; R]; N] {
        let by_row = w.map(|w| Self::dotn(ty, w, g));
        std::array::from_fn(|n| std::array::from_fn(|r| by_row[r][n]))
    }
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
kernel!(IQ4NLQ8_0, dot_iq4_nl_q8_0);
kernel!(Q2KQ8K, dot_q2_k_q8_k);
kernel!(Q4KQ8K, dot_q4_k_q8_k);
kernel!(Q5KQ8K, dot_q5_k_q8_k);

/// A kernel whose order follows its tokens' `TokenOrder` (`kernels_k::dot_by_order`).
macro_rules! ordered_kernel {
    ($name:ident, $f:ident) => {
        pub struct $name;
        impl Kernel for $name {
            #[inline(always)]
            fn dot(_: GgmlType, w: &[u8], a: &[u8]) -> f32 {
                $f(w, a, false)
            }

            #[inline(always)]
            fn dotn<const N: usize>(_: GgmlType, w: &[u8], g: &TokenGroup<N>) -> [f32; N] {
                g.rows.map(|a| $f(w, a, g.batched))
            }
        }
    };
}

ordered_kernel!(Q3KQ8K, dot_q3_k_q8_k);
ordered_kernel!(Q6KQ8K, dot_q6_k_q8_k);
ordered_kernel!(IQ4XSQ8K, dot_iq4_xs_q8_k);
kernel!(F16F16, dot_f16_f16);

/// The codebook i-quants (`iquants_lattice`): each block decoded once for all tokens.
pub struct LatticeQ8K;
impl Kernel for LatticeQ8K {
    #[inline(always)]
    fn dot(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
        dot_lattice_q8_k(ty, w, [a], false)[0]
    }

    #[inline(always)]
    fn dotn<const N: usize>(ty: GgmlType, w: &[u8], g: &TokenGroup<N>) -> [f32; N] {
        dot_lattice_q8_k(ty, w, g.rows, g.batched)
    }
}

/// The ternary types (`ternary`): each block decoded once for all tokens.
pub struct TernaryQ8K;
impl Kernel for TernaryQ8K {
    #[inline(always)]
    fn dot(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
        dot_ternary_q8_k(ty, w, [a])[0]
    }

    #[inline(always)]
    fn dotn<const N: usize>(ty: GgmlType, w: &[u8], g: &TokenGroup<N>) -> [f32; N] {
        dot_ternary_q8_k(ty, w, g.rows)
    }
}

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

/// The fixed summation order every 32-value kernel uses, in its scalar and SIMD forms:
/// each block's 32 products are summed in eight integer lanes of four consecutive
/// values; lane k of every block is multiplied by the block's d_w·d_a and added to float
/// accumulator k in one fused multiply-add; the eight accumulators are summed as a tree (k + k+4, then + k+2,
/// then + k+1), and block offsets (m_w·s_a) are summed separately and added last.
#[derive(Default)]
pub struct LaneSums {
    pub acc: [f32; 8],
    pub offsets: f32,
}

impl LaneSums {
    #[inline(always)]
    pub fn add_block(&mut self, scale: f32, lanes: [i32; 8]) {
        for (acc, lane) in self.acc.iter_mut().zip(lanes) {
            *acc = scale.mul_add(lane as f32, *acc);
        }
    }

    #[inline(always)]
    pub fn total(self) -> f32 {
        lane_tree(self.acc) + self.offsets
    }
}

/// Eight lanes summed as (k + k+4), then (+ k+2), then (+ k+1).
#[inline(always)]
pub(crate) fn lane_tree(l: [f32; 8]) -> f32 {
    let s: [f32; 4] = std::array::from_fn(|k| l[k] + l[k + 4]);
    (s[0] + s[2]) + (s[1] + s[3])
}

/// The summation order of the Q4_0 kernels: each block's 32 products are summed
/// in integers (exact), multiplied by the block's d_w·d_a and added to one float
/// accumulator in one fused multiply-add, block after block.
#[derive(Default)]
pub struct BlockSums {
    pub acc: f32,
}

impl BlockSums {
    #[inline(always)]
    pub fn add_block(&mut self, scale: f32, sum: i32) {
        self.acc = scale.mul_add(sum as f32, self.acc);
    }
}

/// Σ value(j)·a[j] over each lane of four consecutive values of a 32-value block.
#[inline(always)]
fn lanes(value: impl Fn(usize) -> i32, a: &[u8]) -> [i32; 8] {
    let mut out = [0i32; 8];
    for (k, lane) in out.iter_mut().enumerate() {
        for j in 4 * k..4 * k + 4 {
            *lane += value(j) * i8_at(a, j);
        }
    }
    out
}

#[inline(always)]
fn nibble(qs: &[u8], j: usize) -> i32 {
    if j < 16 {
        (qs[j] & 0xf) as i32
    } else {
        (qs[j - 16] >> 4) as i32
    }
}

#[inline(always)]
fn five_bits(qs: &[u8], qh: u32, j: usize) -> i32 {
    nibble(qs, j) | ((((qh >> j) & 1) << 4) as i32)
}

/// Q4_0 × Q8_0: d_w·d_a·Σ(q_w − 8)·q_a per block.
#[inline(always)]
pub fn dot_q4_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sums = BlockSums::default();
    for (wb, ab) in w.chunks_exact(18).zip(a.chunks_exact(34)) {
        let l = lanes(|j| nibble(&wb[2..], j) - 8, &ab[2..]);
        sums.add_block(f16_at(wb, 0) * f16_at(ab, 0), l.iter().sum());
    }
    sums.acc
}

/// Q4_1 × Q8_1: d_w·d_a·Σq_w·q_a + m_w·s_a per block (s_a = d_a·Σq_a).
#[inline(always)]
pub fn dot_q4_1_q8_1(w: &[u8], a: &[u8]) -> f32 {
    let mut sums = LaneSums::default();
    for (wb, ab) in w.chunks_exact(20).zip(a.chunks_exact(36)) {
        let l = lanes(|j| nibble(&wb[4..], j), &ab[4..]);
        sums.add_block(f16_at(wb, 0) * f16_at(ab, 0), l);
        sums.offsets += f16_at(wb, 2) * f16_at(ab, 2);
    }
    sums.total()
}

/// Q5_0 × Q8_0.
#[inline(always)]
pub fn dot_q5_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sums = LaneSums::default();
    for (wb, ab) in w.chunks_exact(22).zip(a.chunks_exact(34)) {
        let qh = u32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]);
        let l = lanes(|j| five_bits(&wb[6..], qh, j) - 16, &ab[2..]);
        sums.add_block(f16_at(wb, 0) * f16_at(ab, 0), l);
    }
    sums.total()
}

/// Q5_1 × Q8_1.
#[inline(always)]
pub fn dot_q5_1_q8_1(w: &[u8], a: &[u8]) -> f32 {
    let mut sums = LaneSums::default();
    for (wb, ab) in w.chunks_exact(24).zip(a.chunks_exact(36)) {
        let qh = u32::from_le_bytes([wb[4], wb[5], wb[6], wb[7]]);
        let l = lanes(|j| five_bits(&wb[8..], qh, j), &ab[4..]);
        sums.add_block(f16_at(wb, 0) * f16_at(ab, 0), l);
        sums.offsets += f16_at(wb, 2) * f16_at(ab, 2);
    }
    sums.total()
}

/// Q8_0 × Q8_0.
#[inline(always)]
pub fn dot_q8_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sums = LaneSums::default();
    for (wb, ab) in w.chunks_exact(34).zip(a.chunks_exact(34)) {
        let l = lanes(|j| i8_at(&wb[2..], j), &ab[2..]);
        sums.add_block(f16_at(wb, 0) * f16_at(ab, 0), l);
    }
    sums.total()
}

/// IQ4_NL × Q8_0: d_w·d_a·Σ level(q_w)·q_a per block, in `BlockSums`' order (llama.cpp's
/// repacked eight-row kernel for this type is its Q4_0 kernel with the level table).
#[inline(always)]
pub fn dot_iq4_nl_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sums = BlockSums::default();
    for (wb, ab) in w.chunks_exact(18).zip(a.chunks_exact(34)) {
        let l = lanes(|j| IQ4_LEVELS[iq4_code(&wb[2..], j)] as i32, &ab[2..]);
        sums.add_block(f16_at(wb, 0) * f16_at(ab, 0), l.iter().sum());
    }
    sums.acc
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
