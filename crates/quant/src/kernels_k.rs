//! Dot products of one K-quant weight row (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, and IQ4_XS:
//! 256-value super-blocks) with one Q8_K activation row, in the orders of llama.cpp's x86 CPU build,
//! so that our results equal its results bit for bit. Each super-block is multiplied in
//! integers (exact in any order); only the float steps, which these functions spell
//! out, decide the bits:
//!
//! - Q2_K and Q4_K (llama.cpp repacks them and multiplies eight rows at a time): per block, the whole
//!   block's Σ scale·q·a and Σ min·a as two integers, each added to its own accumulator
//!   with one fused multiply-add; the result is `acc − acc_min` (`MinSums`).
//! - Q5_K (its tiled kernels for batches of eight tokens or more): `TiledSums`, the
//!   block's integers scaled by d_w, dmin_w and d_a and added to one accumulator.
//! - Q3_K, Q6_K and IQ4_XS both, by the token's `TokenOrder` (`dot_by_order`): for a
//!   decoding token its `vec_dot` kernels' `LaneSums`, eight integer lanes per block
//!   (lane k holds the values whose position in their 32 is 4k..4k+4), one fused
//!   multiply-add per lane and block; for a prompt's its tiled kernels' `TiledSums`.
//!
//! The x86 twins (`kernels_k_x86`) compute the same integers with SIMD and the same
//! float operations, and tests compare them on random data.

use crate::f16_at;
use crate::iquants::{iq4_code, iq4_xs_scale, IQ4_LEVELS};
use crate::kernels::LaneSums;
use crate::kquants::{k4_nibble, q3_k_scales, q6_k_position, scale_min_k4};

/// Bytes of a Q8_K block: d (f32), 256 values (i8), 16 sums of 16 values (i16).
pub const Q8K_BLOCK: usize = 292;

#[inline(always)]
pub(crate) fn q8k_d(a: &[u8]) -> f32 {
    f32::from_le_bytes([a[0], a[1], a[2], a[3]])
}

#[inline(always)]
fn q8k_value(a: &[u8], i: usize) -> i32 {
    a[4 + i] as i8 as i32
}

/// Σ of activation values 16j..16j+16 (stored in the block).
#[inline(always)]
pub(crate) fn q8k_bsum(a: &[u8], j: usize) -> i32 {
    i16::from_le_bytes([a[260 + 2 * j], a[261 + 2 * j]]) as i32
}

/// Value i's 2-bit code (0..4) in a Q2_K block.
#[inline(always)]
fn q2_code(wb: &[u8], i: usize) -> i32 {
    ((wb[16 + (i / 128) * 32 + i % 32] >> (2 * ((i % 128) / 32))) & 3) as i32
}

/// The eight 6-bit scales and mins of a Q4_K/Q5_K block (`scales[12]`).
#[inline(always)]
fn k4_scales_mins(q: &[u8]) -> ([i32; 8], [i32; 8]) {
    let pairs: [(u8, u8); 8] = std::array::from_fn(|j| scale_min_k4(j, q));
    (pairs.map(|p| p.0 as i32), pairs.map(|p| p.1 as i32))
}

/// Σ of `min_j · (activation sum of sub-block j)` over the eight 32-value sub-blocks.
#[inline(always)]
fn min_sum(mins: &[i32; 8], a: &[u8]) -> i32 {
    (0..8)
        .map(|j| mins[j] * (q8k_bsum(a, 2 * j) + q8k_bsum(a, 2 * j + 1)))
        .sum()
}

/// `LaneSums`' eight lanes of a block: lane k = Σ term(i) over the values i with
/// i mod 32 in 4k..4k+4.
#[inline(always)]
fn lanes(term: impl Fn(usize) -> i32) -> [i32; 8] {
    let mut out = [0; 8];
    for i in 0..256 {
        out[(i % 32) / 4] += term(i);
    }
    out
}

/// The summation order of Q4_K: two block-wise accumulators (see the module docs).
#[derive(Default)]
pub struct MinSums {
    pub acc: f32,
    pub acc_min: f32,
}

impl MinSums {
    #[inline(always)]
    pub fn add_block(&mut self, scale: f32, sum: i32, min_scale: f32, min_sum: i32) {
        self.acc = (sum as f32).mul_add(scale, self.acc);
        self.acc_min = (min_sum as f32).mul_add(min_scale, self.acc_min);
    }

    #[inline(always)]
    pub fn total(self) -> f32 {
        self.acc - self.acc_min
    }
}

/// The summation order of llama.cpp's tiled kernels (`ggml-cpu/tiled`, which its
/// AVX-512 VNNI build runs for batches of eight tokens or more), used for Q5_K, and for
/// the `TokenOrder::Batched` tokens of Q3_K, Q6_K and IQ4_XS (no min):
/// per block, the exact integers Σ scale·q·a and Σ min·a become
/// `(sum · d_w − dmin_w · min_sum) · d_a` (a product, a fused multiply-add, a product)
/// added to one accumulator. Its `vec_dot` kernels, which it runs for fewer tokens, add
/// eight lanes per block instead: one order had to be chosen, and this one lets the
/// packed kernels take sixteen rows at a time.
#[derive(Default)]
pub struct TiledSums {
    pub acc: f32,
}

impl TiledSums {
    #[inline(always)]
    pub fn add_block(&mut self, d_w: f32, sum: i32, dmin_w: f32, min_sum: i32, d_a: f32) {
        let block = (-dmin_w).mul_add(min_sum as f32, sum as f32 * d_w);
        self.acc += block * d_a;
    }
}

/// Q4_K × Q8_K.
#[inline(always)]
pub fn dot_q4_k_q8_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sums = MinSums::default();
    for (wb, ab) in w.chunks_exact(144).zip(a.chunks_exact(Q8K_BLOCK)) {
        let (scales, mins) = k4_scales_mins(&wb[4..16]);
        let sum = (0..256)
            .map(|i| scales[i / 32] * k4_nibble(&wb[16..], i) as i32 * q8k_value(ab, i))
            .sum();
        let d = q8k_d(ab);
        sums.add_block(
            f16_at(wb, 0) * d,
            sum,
            f16_at(wb, 2) * d,
            min_sum(&mins, ab),
        );
    }
    sums.total()
}

/// Q2_K × Q8_K, in `MinSums`' order (llama.cpp's repacked eight-row kernel for this type,
/// which its AVX-512 build uses; its AVX2 build's `vec_dot` adds the two products of a
/// block to eight shared lanes instead, so there results differ in rounding).
#[inline(always)]
pub fn dot_q2_k_q8_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sums = MinSums::default();
    for (wb, ab) in w.chunks_exact(84).zip(a.chunks_exact(Q8K_BLOCK)) {
        let sum = (0..256)
            .map(|i| (wb[i / 16] & 0xf) as i32 * q2_code(wb, i) * q8k_value(ab, i))
            .sum();
        let min_sum = (0..16).map(|j| (wb[j] >> 4) as i32 * q8k_bsum(ab, j)).sum();
        let d = q8k_d(ab);
        sums.add_block(f16_at(wb, 80) * d, sum, f16_at(wb, 82) * d, min_sum);
    }
    sums.total()
}

/// Q5_K × Q8_K, in `TiledSums`' order.
#[inline(always)]
pub fn dot_q5_k_q8_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sums = TiledSums::default();
    for (wb, ab) in w.chunks_exact(176).zip(a.chunks_exact(Q8K_BLOCK)) {
        let (scales, mins) = k4_scales_mins(&wb[4..16]);
        let sum = (0..256)
            .map(|i| {
                let high = ((wb[16 + i % 32] >> (i / 32)) & 1) as i32;
                let code = k4_nibble(&wb[48..], i) as i32 | (high << 4);
                scales[i / 32] * code * q8k_value(ab, i)
            })
            .sum();
        let min_sum = min_sum(&mins, ab);
        sums.add_block(f16_at(wb, 0), sum, f16_at(wb, 2), min_sum, q8k_d(ab));
    }
    sums.acc
}

/// A Q3_K block's `LaneSums` lanes against a Q8_K block: Σ scale·(code − 4)·a, the
/// code's third bit from `hmask`.
#[inline(always)]
fn q3_k_lanes(wb: &[u8], ab: &[u8]) -> [i32; 8] {
    let scales = q3_k_scales(&wb[96..108]);
    lanes(|i| {
        let (chunk, l) = (i / 32, i % 32);
        let low = ((wb[32 + (chunk / 4) * 32 + l] >> (2 * (chunk % 4))) & 3) as i32;
        let high = wb[l] & (1 << chunk) != 0;
        scales[i / 16] * (low - if high { 0 } else { 4 }) * q8k_value(ab, i)
    })
}

/// An IQ4_XS block's `LaneSums` lanes against a Q8_K block.
#[inline(always)]
fn iq4_xs_lanes(wb: &[u8], ab: &[u8]) -> [i32; 8] {
    lanes(|i| {
        let level = IQ4_LEVELS[iq4_code(&wb[8 + 16 * (i / 32)..], i % 32)] as i32;
        iq4_xs_scale(wb, i / 32) * level * q8k_value(ab, i)
    })
}

/// Value i's unsigned 6-bit code (0..64) in a Q6_K block.
#[inline(always)]
fn q6_code(wb: &[u8], i: usize) -> i32 {
    let (ql, high_nibble, qh, shift) = q6_k_position(i);
    let low = if high_nibble {
        wb[ql] >> 4
    } else {
        wb[ql] & 0xf
    };
    (low | (((wb[128 + qh] >> shift) & 3) << 4)) as i32
}

/// A Q6_K block's `LaneSums` lanes against a Q8_K block. Codes are multiplied unsigned;
/// the 32 they are offset by comes off each lane as 32 · Σ scale·a over sub-blocks 2k
/// and 2k+1, as llama.cpp subtracts it. The lanes' sum is the block's exact
/// Σ scale·(code − 32)·a.
#[inline(always)]
fn q6_k_lanes(wb: &[u8], ab: &[u8]) -> [i32; 8] {
    let scale = |j: usize| wb[192 + j] as i8 as i32;
    let mut l = lanes(|i| scale(i / 16) * q6_code(wb, i) * q8k_value(ab, i));
    for (k, lane) in l.iter_mut().enumerate() {
        let bias = scale(2 * k) * q8k_bsum(ab, 2 * k) + scale(2 * k + 1) * q8k_bsum(ab, 2 * k + 1);
        *lane -= bias << 5;
    }
    l
}

/// One weight row (blocks of `size` bytes, whose f16 d is at `d_at`) × one Q8_K row,
/// for the types without a min whose order follows the token's role: `LaneSums` of the
/// block's lanes (`block_lanes`) for a decoding token (llama.cpp's `vec_dot`), or
/// `TiledSums` of their exact total for a prompt's (`batched`, its tiled kernels).
#[inline(always)]
fn dot_by_order(
    w: &[u8],
    a: &[u8],
    (size, d_at): (usize, usize),
    block_lanes: impl Fn(&[u8], &[u8]) -> [i32; 8],
    batched: bool,
) -> f32 {
    let blocks = w.chunks_exact(size).zip(a.chunks_exact(Q8K_BLOCK));
    if batched {
        let mut sums = TiledSums::default();
        for (wb, ab) in blocks {
            let sum = block_lanes(wb, ab).iter().sum();
            sums.add_block(f16_at(wb, d_at), sum, 0.0, 0, q8k_d(ab));
        }
        sums.acc
    } else {
        let mut sums = LaneSums::default();
        for (wb, ab) in blocks {
            sums.add_block(q8k_d(ab) * f16_at(wb, d_at), block_lanes(wb, ab));
        }
        sums.total()
    }
}

/// Q3_K × Q8_K (`dot_by_order`).
#[inline(always)]
pub fn dot_q3_k_q8_k(w: &[u8], a: &[u8], batched: bool) -> f32 {
    dot_by_order(w, a, (110, 108), q3_k_lanes, batched)
}

/// IQ4_XS × Q8_K (`dot_by_order`).
#[inline(always)]
pub fn dot_iq4_xs_q8_k(w: &[u8], a: &[u8], batched: bool) -> f32 {
    dot_by_order(w, a, (136, 0), iq4_xs_lanes, batched)
}

/// Q6_K × Q8_K (`dot_by_order`).
#[inline(always)]
pub fn dot_q6_k_q8_k(w: &[u8], a: &[u8], batched: bool) -> f32 {
    dot_by_order(w, a, (210, 208), q6_k_lanes, batched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::has_packed_layout;
    use crate::{pack, packable, quantize, Isa, QMatrix, TokenOrder};
    use gguf::GgmlType::{self, *};
    use rand::{Rng, SeedableRng};

    /// A scalar kernel (whether the token is `TokenOrder::Batched`).
    type Dot = fn(&[u8], &[u8], bool) -> f32;

    /// Where each type keeps its f16 scales, and its scalar kernel.
    fn layout(ty: GgmlType) -> (&'static [usize], Dot) {
        match ty {
            Q2_K => (&[80, 82], |w, a, _| dot_q2_k_q8_k(w, a)),
            Q3_K => (&[108], dot_q3_k_q8_k),
            Q4_K => (&[0, 2], |w, a, _| dot_q4_k_q8_k(w, a)),
            Q5_K => (&[0, 2], |w, a, _| dot_q5_k_q8_k(w, a)),
            IQ4_XS => (&[0], dot_iq4_xs_q8_k),
            _ => (&[208], dot_q6_k_q8_k),
        }
    }

    #[test]
    fn every_isa_equals_the_scalar_twin_on_random_blocks() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for ty in [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS] {
            let (scales_at, scalar) = layout(ty);
            for (rows, blocks) in [(1, 1), (7, 2), (19, 3), (33, 2)] {
                let cols = 256 * blocks;
                // Any bytes are a valid block once its f16 scales are finite.
                let mut w: Vec<u8> = (0..rows * blocks * ty.type_size())
                    .map(|_| rng.gen())
                    .collect();
                for block in w.chunks_exact_mut(ty.type_size()) {
                    for &at in scales_at {
                        let v = half::f16::from_f32(rng.gen_range(-0.02..0.02));
                        block[at..at + 2].copy_from_slice(&v.to_le_bytes());
                    }
                }
                let m = QMatrix::new(ty, &w, rows, cols).unwrap();
                for (n, pattern) in [1, 2, 3, 5, 8, 15].into_iter().flat_map(|n| {
                    // Every token one-token, every token batched, and a mix.
                    [0, 1, 2].map(|p| (n, p))
                }) {
                    let orders: Vec<TokenOrder> = (0..n)
                        .map(|t| match (pattern, t % 3) {
                            (1, _) | (2, 0) => TokenOrder::Batched,
                            _ => TokenOrder::OneToken,
                        })
                        .collect();
                    let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
                    let act = quantize(Q8_K, &x).unwrap();
                    let act_row = act.len() / n;
                    let want: Vec<f32> = (0..n * rows)
                        .map(|i| {
                            let (t, r) = (i / rows, i % rows);
                            let batched = orders[t] == TokenOrder::Batched;
                            scalar(m.row(r), &act[t * act_row..(t + 1) * act_row], batched)
                        })
                        .collect();
                    let packed = has_packed_layout(ty).then(|| pack(ty, &w, rows, cols));
                    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                        if !isa.is_available() {
                            continue;
                        }
                        let mut layouts = vec![("row-major", m)];
                        if let (true, Some(p)) = (packable(ty, isa), &packed) {
                            layouts.push(("packed", QMatrix::packed(ty, p, rows, cols).unwrap()));
                        }
                        for (layout, m) in layouts {
                            let what = format!(
                                "{ty} {layout} rows {rows} cols {cols} tokens {n} {orders:?}"
                            );
                            crate::tests::assert_matmul_bits(isa, m, &x, &orders, &want, &what);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn q8_k_rounds_halves_to_even_as_ggml_does() {
        // max 127 gives iscale −1: the codes are −x, and ±0.5, ±1.5, ±2.5 are ties.
        let mut x = vec![0.0f32; 256];
        x[0] = 127.0;
        x[1..7].copy_from_slice(&[0.5, 1.5, 2.5, -0.5, -1.5, -2.5]);
        let b = quantize(Q8_K, &x).unwrap();
        let codes: Vec<i8> = b[5..11].iter().map(|&c| c as i8).collect();
        assert_eq!(codes, [0, -2, -2, 0, 2, 2]);
    }
}
