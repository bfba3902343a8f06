//! GGML's 1-, 2- and 3-bit i-quants: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S and
//! IQ1_M, super-blocks of 256 values. Each group of 8 (or 4) values is the index of a
//! point of a codebook (`lattice_codebooks`) with stored signs (IQ2, IQ3) or a ±1/8
//! shift (IQ1); each 32 or 16 values share an odd integer scale; the block has one f16
//! step. Three accessors (`group`, `scale`, `step`) are the only code that knows a
//! format's bytes; the scalar kernels read a block through them as one `LatticeBlock`,
//! the SIMD ones (`kernels_lattice_x86`) straight into registers. In their terms:
//!
//! value i = step · scale(i) · code(i) · `factor(ty)`, code = the signed codebook
//! coordinate, or 8·coordinate ± 1 for IQ1 (its shift of ±1/8 made an integer).
//!
//! The kernels multiply those integers with Q8_K activations in llama.cpp's two orders,
//! chosen by the token's role as for Q3_K (`kernels_k::dot_by_order`): for a decoding
//! token its AVX2 `vec_dot` kernels' eight lanes per block (`LaneSums`, the sum × the
//! factor at the end; IQ1's shifts summed apart and added last), for a prompt's its tiled
//! kernels' `TiledSums`, one exact integer per block scaled by step · factor and d_a.
//! Nothing here quantizes: that searches the codebook for every group, which
//! llama-quantize does with an importance matrix for most of these types; `quantize`
//! refuses them (see docs/architecture.md).

use crate::f16_at;
use crate::kernels::{lane_tree, LaneSums};
use crate::kernels_k::{q8k_d, TiledSums, Q8K_BLOCK};
use crate::lattice_codebooks::{
    even_signs, IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID,
};
use gguf::GgmlType;

/// One super-block decoded as 32 groups of 8 values (`group`): what the scalar kernels
/// and the dequantizer read.
#[derive(Default)]
pub struct LatticeBlock {
    /// The block's f16 step, widened.
    pub step: f32,
    pub groups: [Group; 32],
    /// The odd integer scale of each 16 values.
    pub scales: [i16; 16],
}

/// This module's types.
pub const LATTICE_TYPES: [GgmlType; 7] = {
    use GgmlType::*;
    [IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M]
};

/// Whether `ty` is one of this module's types.
pub fn is_lattice(ty: GgmlType) -> bool {
    LATTICE_TYPES.contains(&ty)
}

/// Sets the f16 step of a block of `ty` (IQ1_M keeps it in the top nibbles of its four
/// scale words): with random bytes around it, a random block of the type.
pub fn set_step(ty: GgmlType, block: &mut [u8], step: f32) {
    let bits = half::f16::from_f32(step).to_bits();
    if ty == GgmlType::IQ1_M {
        for k in 0..4 {
            let top = &mut block[49 + 2 * k];
            *top = (*top & 0x0f) | ((((bits >> (4 * k)) & 15) as u8) << 4);
        }
    } else {
        block[..2].copy_from_slice(&bits.to_le_bytes());
    }
}

/// The power of two that turns step · scale · code into the value.
pub fn factor(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::IQ3_XXS => 0.25,
        GgmlType::IQ3_S => 1.0,
        _ => 0.125,
    }
}

#[inline(always)]
fn u16_at(b: &[u8], at: usize) -> u32 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("two bytes")) as u32
}

#[inline(always)]
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("four bytes"))
}

/// Entry `i` of a codebook. Read as a volatile load: as an ordinary indexed load LLVM
/// turns a group's neighbouring lookups into a gather instruction, several times slower
/// than the loads on the CPUs we measured (IQ3_S decoded at half the speed).
#[inline(always)]
fn point(codebook: &[u64], i: usize) -> u64 {
    let entry = &codebook[i];
    // SAFETY: `entry` is a valid reference to initialized, immutable data.
    unsafe { std::ptr::read_volatile(entry) }
}

/// Two IQ3 points of 4 as one group of 8.
#[inline(always)]
fn word4x2(first: u64, second: u64) -> u64 {
    first | (second << 32)
}

/// Group g of a block (values 8g..8g+8): its codebook coordinates as bytes, first in
/// the low byte (magnitudes for IQ2 and IQ3, whose IQ3 groups are two points of 4;
/// −1, 0 or 1 for IQ1), the sign bits of IQ2 and IQ3 (bit j negates coordinate j), and
/// IQ1's shift (±1 eighth; 0 for the other types).
#[derive(Clone, Copy, Default)]
pub struct Group {
    pub point: u64,
    pub signs: u8,
    pub shift: i8,
}

/// Group `g` of a block of `ty`.
#[inline(always)]
pub fn group(ty: GgmlType, b: &[u8], g: usize) -> Group {
    use GgmlType::*;
    let (s, l) = (g / 4, g % 4);
    let signed = |point: u64, signs: u8| Group {
        point,
        signs,
        shift: 0,
    };
    let shifted = |point: u64, negative: bool| Group {
        point,
        signs: 0,
        shift: if negative { -1 } else { 1 },
    };
    match ty {
        IQ2_XXS => {
            let meta = u32_at(b, 6 + 8 * s);
            let point = point(&IQ2XXS_GRID, b[2 + 8 * s + l] as usize);
            signed(point, even_signs(meta >> (7 * l)))
        }
        IQ2_XS => {
            let q = u16_at(b, 2 + 2 * g);
            signed(point(&IQ2XS_GRID, (q & 511) as usize), even_signs(q >> 9))
        }
        IQ2_S => {
            let high = (b[66 + s] as usize) << (8 - 2 * l);
            signed(
                point(&IQ2S_GRID, b[2 + g] as usize | (high & 0x300)),
                b[34 + g],
            )
        }
        IQ3_XXS => {
            let meta = u32_at(b, 66 + 4 * s);
            let at = 2 + 8 * s + 2 * l;
            let point = word4x2(
                point(&IQ3XXS_GRID, b[at] as usize),
                point(&IQ3XXS_GRID, b[at + 1] as usize),
            );
            signed(point, even_signs(meta >> (7 * l)))
        }
        IQ3_S => {
            let (at, high) = (2 + 8 * s + 2 * l, b[66 + s] as usize);
            let first = b[at] as usize | ((high << (8 - 2 * l)) & 256);
            let second = b[at + 1] as usize | ((high << (7 - 2 * l)) & 256);
            signed(
                word4x2(point(&IQ3S_GRID, first), point(&IQ3S_GRID, second)),
                b[74 + g],
            )
        }
        IQ1_S => {
            let high = u16_at(b, 34 + 2 * s) as usize;
            let index = b[2 + g] as usize | (((high >> (3 * l)) & 7) << 8);
            shifted(point(&IQ1S_GRID, index), high & 0x8000 != 0)
        }
        IQ1_M => {
            let high = b[32 + 2 * s + l / 2] as usize >> (4 * (l % 2));
            shifted(
                point(&IQ1S_GRID, b[g] as usize | ((high & 7) << 8)),
                high & 8 != 0,
            )
        }
        _ => unreachable!("{ty} is not a lattice i-quant"),
    }
}

/// The odd integer scale of values 16h..16h+16 of a block of `ty`.
#[inline(always)]
pub fn scale(ty: GgmlType, b: &[u8], h: usize) -> i16 {
    use GgmlType::*;
    let (s, half) = (h / 2, h % 2);
    let code = match ty {
        IQ2_XXS => u32_at(b, 6 + 8 * s) >> 28,
        IQ2_XS => (b[66 + s] as u32 >> (4 * half)) & 15,
        IQ2_S => (b[74 + s] as u32 >> (4 * half)) & 15,
        IQ3_XXS => u32_at(b, 66 + 4 * s) >> 28,
        IQ3_S => (b[106 + s / 2] as u32 >> (4 * (s % 2))) & 15,
        IQ1_S => (u16_at(b, 34 + 2 * s) >> 12) & 7,
        IQ1_M => (u16_at(b, 48 + 2 * (s / 2)) >> (6 * (s % 2) + 3 * half)) & 7,
        _ => unreachable!("{ty} is not a lattice i-quant"),
    };
    2 * code as i16 + 1
}

/// The f16 step of a block of `ty`, widened (IQ1_M spreads it over the top nibbles of
/// its four scale words).
#[inline(always)]
pub fn step(ty: GgmlType, b: &[u8]) -> f32 {
    if ty != GgmlType::IQ1_M {
        return f16_at(b, 0);
    }
    let sc: [u32; 4] = std::array::from_fn(|k| u16_at(b, 48 + 2 * k));
    let bits = (sc[0] >> 12) | ((sc[1] >> 8) & 0xf0) | ((sc[2] >> 4) & 0xf00) | (sc[3] & 0xf000);
    crate::f16_bits_to_f32(bits as u16)
}

/// Decodes one block of `ty` (one of `is_lattice`'s types).
#[inline(always)]
pub fn decode(ty: GgmlType, b: &[u8], out: &mut LatticeBlock) {
    out.step = step(ty, b);
    for (g, slot) in out.groups.iter_mut().enumerate() {
        *slot = group(ty, b, g);
    }
    for h in 0..16 {
        out.scales[h] = scale(ty, b, h);
    }
}

/// Value i's signed codebook coordinate.
#[inline(always)]
fn value(block: &LatticeBlock, i: usize) -> i32 {
    let Group { point, signs, .. } = block.groups[i / 8];
    let v = (point >> (8 * (i % 8))) as u8 as i8 as i32;
    if (signs >> (i % 8)) & 1 == 1 {
        -v
    } else {
        v
    }
}

/// Value i's integer code: the coordinate, or 8 · coordinate + shift for IQ1.
#[inline(always)]
fn code(block: &LatticeBlock, i: usize) -> i32 {
    match block.groups[i / 8].shift as i32 {
        0 => value(block, i),
        shift => 8 * value(block, i) + shift,
    }
}

/// The scalar reference dequantizer of `ty`: step · scale is rounded once, as in
/// llama.cpp, and the exact code · factor multiplies it.
pub fn dequantize(ty: GgmlType, b: &[u8], out: &mut [f32]) {
    let mut block = LatticeBlock::default();
    decode(ty, b, &mut block);
    for (i, y) in out.iter_mut().enumerate() {
        let step = block.step * block.scales[i / 16] as f32;
        *y = step * (code(&block, i) as f32 * factor(ty));
    }
}

macro_rules! dequantizers {
    ($($name:ident: $ty:ident),*) => {
        $(pub fn $name(b: &[u8], out: &mut [f32]) {
            dequantize(GgmlType::$ty, b, out)
        })*
    };
}

dequantizers!(
    dequantize_iq2_xxs: IQ2_XXS, dequantize_iq2_xs: IQ2_XS, dequantize_iq2_s: IQ2_S,
    dequantize_iq3_xxs: IQ3_XXS, dequantize_iq3_s: IQ3_S, dequantize_iq1_s: IQ1_S,
    dequantize_iq1_m: IQ1_M
);

/// Per-token state of the `vec_dot` order: the lanes of the values, and IQ1's shifts
/// (IQ1_M: eight lanes of their own; IQ1_S: one float sum).
#[derive(Default)]
struct VecDotSums {
    values: LaneSums,
    shift_lanes: LaneSums,
    shift_sum: f32,
}

/// Σ scale · value · activation over each lane (positions 4k..4k+4 of every 32), and
/// the same for the shifts.
#[inline(always)]
fn lanes(block: &LatticeBlock, a: &[u8]) -> ([i32; 8], [i32; 8]) {
    let x = |i: usize| a[4 + i] as i8 as i32;
    let mut values = [0i32; 8];
    let mut shifts = [0i32; 8];
    for s in 0..8 {
        for k in 0..8 {
            let scale = block.scales[2 * s + k / 4] as i32;
            let at = 32 * s + 4 * k;
            let v: i32 = (at..at + 4).map(|i| value(block, i) * x(i)).sum();
            let x_sum: i32 = (at..at + 4).map(x).sum();
            values[k] += scale * v;
            shifts[k] += scale * block.groups[at / 8].shift as i32 * x_sum;
        }
    }
    (values, shifts)
}

/// Σ scale · code · activation over the block: the tiled kernels' integer.
#[inline(always)]
fn block_sum(block: &LatticeBlock, a: &[u8]) -> i32 {
    let x = |i: usize| a[4 + i] as i8 as i32;
    let half = |h: usize| {
        (16 * h..16 * h + 16)
            .map(|i| code(block, i) * x(i))
            .sum::<i32>()
    };
    (0..16).map(|h| block.scales[h] as i32 * half(h)).sum()
}

/// One weight row of `ty` against N Q8_K activation rows, each block decoded once, in
/// the order of the tokens' role (`batched`: the tiled kernels').
#[inline(always)]
pub fn dot_lattice_q8_k<const N: usize>(
    ty: GgmlType,
    w: &[u8],
    rows: [&[u8]; N],
    batched: bool,
) -> [f32; N] {
    let mut block = LatticeBlock::default();
    let size = ty.type_size();
    let factor = factor(ty);
    if batched {
        let mut sums: [TiledSums; N] = std::array::from_fn(|_| TiledSums::default());
        for (b, wb) in w.chunks_exact(size).enumerate() {
            decode(ty, wb, &mut block);
            let d_w = block.step * factor;
            for (sums, a) in sums.iter_mut().zip(rows) {
                let ab = &a[b * Q8K_BLOCK..][..Q8K_BLOCK];
                sums.add_block(d_w, block_sum(&block, ab), 0.0, 0, q8k_d(ab));
            }
        }
        return sums.map(|s| s.acc);
    }
    let mut sums: [VecDotSums; N] = std::array::from_fn(|_| VecDotSums::default());
    for (b, wb) in w.chunks_exact(size).enumerate() {
        decode(ty, wb, &mut block);
        for (sums, a) in sums.iter_mut().zip(rows) {
            let ab = &a[b * Q8K_BLOCK..][..Q8K_BLOCK];
            let d = block.step * q8k_d(ab);
            let (values, shifts) = lanes(&block, ab);
            sums.values.add_block(d, values);
            match ty {
                GgmlType::IQ1_M => sums.shift_lanes.add_block(d, shifts),
                GgmlType::IQ1_S => {
                    let shift_sum: i32 = shifts.iter().sum();
                    sums.shift_sum = d.mul_add(shift_sum as f32, sums.shift_sum);
                }
                _ => {}
            }
        }
    }
    sums.map(|s| match ty {
        GgmlType::IQ1_M => lane_tree(s.values.acc) + 0.125 * lane_tree(s.shift_lanes.acc),
        GgmlType::IQ1_S => lane_tree(s.values.acc) + 0.125 * s.shift_sum,
        _ => factor * lane_tree(s.values.acc),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dequantize, matmul_many_with, quantize, Isa, QMatrix, TokenOrder};
    use rand::{Rng, SeedableRng};

    /// Random blocks of `ty`: any bytes are a block once its f16 step is finite.
    fn random_blocks(ty: GgmlType, blocks: usize, rng: &mut impl Rng) -> Vec<u8> {
        let mut w: Vec<u8> = (0..blocks * ty.type_size()).map(|_| rng.gen()).collect();
        for block in w.chunks_exact_mut(ty.type_size()) {
            set_step(ty, block, rng.gen_range(-0.02..0.02));
        }
        w
    }

    /// Both orders, for odd row counts and 1–15 tokens: the scalar twin against the f64 dot
    /// of the dequantized weights and activations (what the integer sums must give up to
    /// the rounding of the float steps), and every SIMD ISA against the scalar twin, bit
    /// for bit.
    #[test]
    fn every_order_and_isa_equals_the_dot_of_dequantized_values() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for ty in LATTICE_TYPES {
            for (rows, blocks) in [(1, 1), (7, 2), (19, 3)] {
                let cols = 256 * blocks;
                let w = random_blocks(ty, rows * blocks, &mut rng);
                let m = QMatrix::new(ty, &w, rows, cols).unwrap();
                let mut wf = vec![0.0f32; rows * cols];
                dequantize(ty, &w, &mut wf).unwrap();
                for n in [1, 3, 8, 15] {
                    let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
                    let mut xq = vec![0.0f32; x.len()];
                    dequantize(
                        GgmlType::Q8_K,
                        &quantize(GgmlType::Q8_K, &x).unwrap(),
                        &mut xq,
                    )
                    .unwrap();
                    let orders: Vec<TokenOrder> = (0..n)
                        .map(|t| match t % 2 {
                            0 => TokenOrder::Batched,
                            _ => TokenOrder::OneToken,
                        })
                        .collect();
                    let mut scalar = vec![0.0; n * rows];
                    matmul_many_with(Isa::Scalar, &[m], &x, &mut [&mut scalar], &orders);
                    for t in 0..n {
                        for r in 0..rows {
                            let (wr, xr) = (&wf[r * cols..][..cols], &xq[t * cols..][..cols]);
                            let products = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64);
                            let want: f64 = products.clone().sum();
                            let size: f64 = products.map(f64::abs).sum();
                            let got = scalar[t * rows + r] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * size + 1e-6,
                                "{ty} row {r} token {t} ({:?}): {got} vs {want}",
                                orders[t]
                            );
                        }
                    }
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

    #[test]
    fn writing_a_lattice_type_is_refused_with_its_name() {
        let err = quantize(GgmlType::IQ2_XXS, &[0.0; 256]).unwrap_err();
        assert!(err.to_string().contains("IQ2_XXS"), "{err}");
    }
}
