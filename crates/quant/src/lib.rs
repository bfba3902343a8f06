//! GGML block formats and the CPU math over them: scalar reference dequantize and
//! quantize for every supported type (`legacy` 32-value blocks, `kquants` 256-value
//! super-blocks, `iquants` the non-linear IQ4 formats, `iquants_lattice` the codebook
//! i-quants, which are read but not written; plain floats here), a matmul of quantized
//! weights by f32 activations (`matmul`), and the rest of a transformer layer's
//! arithmetic (`attention`, `rope`, `nonlinear`) rounded as llama.cpp rounds it.

mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_avx2;
#[cfg(target_arch = "x86_64")]
mod attention_avx512;
mod attention_flash;
mod attention_quantized;
#[cfg(target_arch = "x86_64")]
mod attention_quantized_avx2;
mod dot;
mod iquants;
mod iquants_lattice;
mod isa;
mod kernels;
mod kernels_float;
#[cfg(target_arch = "x86_64")]
mod kernels_float_x86;
mod kernels_k;
#[cfg(target_arch = "x86_64")]
mod kernels_k_x86;
#[cfg(target_arch = "x86_64")]
mod kernels_lattice_x86;
#[cfg(target_arch = "x86_64")]
mod kernels_packed;
#[cfg(target_arch = "x86_64")]
mod kernels_packed_avx2;
#[cfg(target_arch = "x86_64")]
mod kernels_packed_f16;
#[cfg(target_arch = "x86_64")]
mod kernels_packed_iq4_xs;
#[cfg(target_arch = "x86_64")]
mod kernels_packed_k;
#[cfg(target_arch = "x86_64")]
mod kernels_packed_k16;
#[cfg(target_arch = "x86_64")]
mod kernels_packed_k_avx2;
#[cfg(target_arch = "x86_64")]
mod kernels_ternary_x86;
#[cfg(target_arch = "x86_64")]
mod kernels_x86;
mod kquants;
mod kquants_search;
mod lattice_codebooks;
mod legacy;
mod matmul;
mod nonlinear;
#[cfg(target_arch = "x86_64")]
mod nonlinear_avx2;
#[cfg(target_arch = "x86_64")]
mod nonlinear_avx512;
mod packed;
mod polling;
mod rope;
mod ternary;

pub use attention::{
    attend, attention_scores, dot_f16, AttendScratch, F16Order, KvHead, Query, KV_BLOCK,
};
pub use attention_flash::flash_attend;
pub use attention_quantized::{quantized_attend, quantized_scores, KvQuant, QuantizedKvHead};
pub use dot::dot_f32;
pub use iquants_lattice::{is_lattice, set_step as set_lattice_step};
pub use isa::{selected_isa, Isa};
pub use kernels::activation_type;
pub use matmul::{matmul, matmul_many, matmul_many_with, matmul_with, Layout, QMatrix, TokenOrder};
pub use nonlinear::{exp_poly, gelu_mul, gelu_tanh, rms_norm_scale, silu_mul, softcap, softmax};
pub use packed::{pack, packable, packed_len};
pub use polling::{for_each_index, for_each_mut, map_indices, PollingWorkers};
pub use rope::{rope_angles, rope_rotate, rope_theta_scale, YarnRamp};
pub use ternary::is_ternary;

use gguf::GgmlType;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    #[error(
        "{0} can be read but not written here: its quantizer (a search over the format's \
         codebook, which llama-quantize runs with an importance matrix) is not implemented"
    )]
    NotWritable(GgmlType),
    #[error("tensor type {0} is not supported for computation (supported: {SUPPORTED})")]
    Unsupported(GgmlType),
    #[error("{ty} needs a multiple of {block} values, got {len}")]
    NotBlockAligned {
        ty: GgmlType,
        block: usize,
        len: usize,
    },
    #[error("{ty} data for {rows}x{cols} values needs {expected} bytes, got {actual}")]
    WrongSize {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },
}

const SUPPORTED: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, \
     IQ4_XS, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, TQ1_0, TQ2_0";

pub type Result<T, E = QuantError> = std::result::Result<T, E>;

type BlockFn = fn(&[u8], &mut [f32]);
type QuantFn = fn(&[f32], &mut [u8]);

/// The scalar reference dequantizer of a block type, and its quantizer where we write
/// the type.
fn block_fns(ty: GgmlType) -> Option<(BlockFn, Option<QuantFn>)> {
    use GgmlType::*;
    let read_only: BlockFn = match ty {
        IQ2_XXS => iquants_lattice::dequantize_iq2_xxs,
        IQ2_XS => iquants_lattice::dequantize_iq2_xs,
        IQ2_S => iquants_lattice::dequantize_iq2_s,
        IQ3_XXS => iquants_lattice::dequantize_iq3_xxs,
        IQ3_S => iquants_lattice::dequantize_iq3_s,
        IQ1_S => iquants_lattice::dequantize_iq1_s,
        IQ1_M => iquants_lattice::dequantize_iq1_m,
        _ => return read_write_fns(ty).map(|(read, write)| (read, Some(write))),
    };
    Some((read_only, None))
}

fn read_write_fns(ty: GgmlType) -> Option<(BlockFn, QuantFn)> {
    use GgmlType::*;
    Some(match ty {
        F32 => (
            |b, o| o[0] = f32_at(b, 0),
            |x, b| b.copy_from_slice(&x[0].to_le_bytes()),
        ),
        F16 => (|b, o| o[0] = f16_at(b, 0), |x, b| put_f16(b, 0, x[0])),
        BF16 => (
            |b, o| o[0] = half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            |x, b| b.copy_from_slice(&half::bf16::from_f32(x[0]).to_le_bytes()),
        ),
        Q4_0 => (legacy::dequantize_q4_0, legacy::quantize_q4_0),
        Q4_1 => (legacy::dequantize_q4_1, legacy::quantize_q4_1),
        Q5_0 => (legacy::dequantize_q5_0, legacy::quantize_q5_0),
        Q5_1 => (legacy::dequantize_q5_1, legacy::quantize_q5_1),
        Q8_0 => (legacy::dequantize_q8_0, legacy::quantize_q8_0),
        Q8_1 => (legacy::dequantize_q8_1, legacy::quantize_q8_1),
        Q2_K => (kquants::dequantize_q2_k, kquants::quantize_q2_k),
        Q3_K => (kquants::dequantize_q3_k, kquants::quantize_q3_k),
        Q4_K => (kquants::dequantize_q4_k, kquants::quantize_q4_k),
        Q5_K => (kquants::dequantize_q5_k, kquants::quantize_q5_k),
        Q6_K => (kquants::dequantize_q6_k, kquants::quantize_q6_k),
        Q8_K => (kquants::dequantize_q8_k, kquants::quantize_q8_k),
        IQ4_NL => (iquants::dequantize_iq4_nl, iquants::quantize_iq4_nl),
        IQ4_XS => (iquants::dequantize_iq4_xs, iquants::quantize_iq4_xs),
        TQ1_0 => (ternary::dequantize_tq1_0, ternary::quantize_tq1_0),
        TQ2_0 => (ternary::dequantize_tq2_0, ternary::quantize_tq2_0),
        _ => return None,
    })
}

/// Whether this crate can dequantize `ty` and multiply by it.
pub fn is_supported(ty: GgmlType) -> bool {
    block_fns(ty).is_some()
}

/// Whether this crate can also write `ty` (`quantize`).
pub fn can_quantize(ty: GgmlType) -> bool {
    matches!(block_fns(ty), Some((_, Some(_))))
}

fn check_len(ty: GgmlType, len: usize) -> Result<()> {
    if !len.is_multiple_of(ty.block_size()) {
        return Err(QuantError::NotBlockAligned {
            ty,
            block: ty.block_size(),
            len,
        });
    }
    Ok(())
}

/// Decodes `out.len()` values from `data` (which must hold exactly that many).
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    let (dequant, _) = block_fns(ty).ok_or(QuantError::Unsupported(ty))?;
    check_len(ty, out.len())?;
    let expected = out.len() / ty.block_size() * ty.type_size();
    if data.len() != expected {
        return Err(QuantError::WrongSize {
            ty,
            rows: 1,
            cols: out.len(),
            expected,
            actual: data.len(),
        });
    }
    for (block, values) in data
        .chunks_exact(ty.type_size())
        .zip(out.chunks_exact_mut(ty.block_size()))
    {
        dequant(block, values);
    }
    Ok(())
}

/// Encodes `x` (a whole number of blocks) as `ty`, as activations are quantized for a
/// product (and a quantized KV cache is written).
pub fn quantize(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>> {
    match block_fns(ty) {
        Some((_, Some(quant))) => quantize_with(quant, ty, x),
        Some((_, None)) => Err(QuantError::NotWritable(ty)),
        None => Err(QuantError::Unsupported(ty)),
    }
}

/// Encodes weights `x` as `ty` the way llama-quantize writes them into a file: as
/// `quantize`, except Q8_0, whose file quantizer in GGML rounds differently from its
/// activation quantizer (`legacy::quantize_q8_0_weights`).
pub fn quantize_weights(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>> {
    match ty {
        GgmlType::Q8_0 => quantize_with(legacy::quantize_q8_0_weights, ty, x),
        _ => quantize(ty, x),
    }
}

fn quantize_with(quant: QuantFn, ty: GgmlType, x: &[f32]) -> Result<Vec<u8>> {
    use rayon::prelude::*;
    // Blocks are independent, so a long input (a prompt's or a batch's activations, a
    // weight matrix) is split across threads in runs of this many; the bytes are the same.
    const BLOCKS_PER_TASK: usize = 64;
    check_len(ty, x.len())?;
    let mut out = vec![0u8; x.len() / ty.block_size() * ty.type_size()];
    if x.len() < 2 * BLOCKS_PER_TASK * ty.block_size() {
        quantize_blocks(quant, ty, x, &mut out);
    } else {
        out.par_chunks_mut(BLOCKS_PER_TASK * ty.type_size())
            .zip(x.par_chunks(BLOCKS_PER_TASK * ty.block_size()))
            .for_each(|(out, x)| quantize_blocks(quant, ty, x, out));
    }
    Ok(out)
}

fn quantize_blocks(quant: QuantFn, ty: GgmlType, x: &[f32], out: &mut [u8]) {
    for (values, block) in x
        .chunks_exact(ty.block_size())
        .zip(out.chunks_exact_mut(ty.type_size()))
    {
        quant(values, block);
    }
}

pub(crate) fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The little-endian f16 at `b[at..at + 2]`, as f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// f16 → f32 without a lookup or a CPU feature, so it inlines into every kernel copy.
/// Normal values are re-biased bit by bit; subnormals are scaled integers (never a
/// subnormal float operand, which would take the CPU's slow path).
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exponent = ((h >> 10) & 0x1f) as u32;
    let mantissa = (h & 0x3ff) as u32;
    let magnitude = match exponent {
        0 => (mantissa as f32 * f32::from_bits(0x3380_0000)).to_bits(), // × 2^-24
        31 => 0x7f80_0000 | (mantissa << 13),
        _ => ((exponent + 112) << 23) | (mantissa << 13),
    };
    f32::from_bits(magnitude | sign)
}

/// Rounds every value to the nearest f16 (ties to even), as f32: what GGML does to a
/// tensor it multiplies with an f16 one. Vectorized (F16C) where the CPU has it.
pub fn round_to_f16(values: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    let mut halves = [half::f16::ZERO; 64];
    for chunk in values.chunks_mut(64) {
        let halves = &mut halves[..chunk.len()];
        halves.convert_from_f32_slice(chunk);
        halves.convert_to_f32_slice(chunk);
    }
}

pub(crate) fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
}

/// `v` as it reads back after a round trip through f16.
pub(crate) fn round_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
#[test]
fn f16_conversion_matches_the_half_crate_for_every_value() {
    for bits in 0..=u16::MAX {
        let ours = f16_bits_to_f32(bits);
        let theirs = half::f16::from_bits(bits).to_f32();
        assert!(
            ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan()),
            "{bits:#x}"
        );
    }
}

#[cfg(test)]
use kquants::pack_scale_min_k4 as kquants_test_pack;
