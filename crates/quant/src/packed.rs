//! Weights repacked at load time for the AVX-512 and AVX2 kernels (`kernels_packed`,
//! `kernels_packed_k`, `kernels_packed_avx2`, `kernels_packed_k_avx2`): rows interleaved
//! block by block, so one load feeds several rows' dot products while each thread still
//! streams one contiguous range of memory. A group is one block of `group_rows`
//! consecutive rows:
//!
//! | type | rows | bytes | layout |
//! |---|---:|---:|---|
//! | Q4_1 | 4 | 80 | d[4] · m[4] (f16) · qs[4][16] |
//! | Q8_0 | 4 | 136 | d[4] (f16) · (q+128)[4][0..16] · (q+128)[4][16..32] |
//! | Q5_0 | 4 | 88 | d[4] (f16) · qh[4][0..2] · qh[4][2..4] · qs[4][16] |
//! | Q4_0, IQ4_NL | 16 | 288 | d[16] (f16) · qs[4][16][4] |
//! | Q4_K | 16 | 2304 | d[16] · dmin[16] (f16) · scales[3][16][4] · qs[32][16][4] |
//! | Q2_K | 16 | 1344 | d[16] · dmin[16] (f16) · scales[4][16][4] · qs[16][16][4] |
//! | IQ4_XS | 16 | 2176 | d[16] · scales_h[16] (u16) · scales_l[16][4] · qs[32][16][4] |
//! | Q3_K | 16 | 1760 | d[16] (f16) · scales[3][16][4] · hmask[8][16][4] · qs[16][16][4] |
//! | Q5_K | 16 | 2816 | d[16] · dmin[16] (f16) · scales[3][16][4] · qh[8][16][4] · qs[32][16][4] |
//! | Q6_K | 16 | 3360 | d[16] (f16) · scales[4][16][4] · ql[32][16][4] · qh[16][16][4] |
//! | F16 | 16 | 256 | w[16][8] (eight values of each row) |
//!
//! Q4_1, Q5_0 and Q8_0 keep GGML's lanes (their kernel reproduces llama.cpp's float
//! order): a 512-bit register holds the first (or last) 16 values of each of four rows;
//! Q5_0's fifth bits of the first (last) 16 values of the four rows make one 64-bit
//! byte mask. Q4_0 and
//! IQ4_NL (blocks of the same shape) put four bytes of each of 16 rows in a register
//! (`[k][row][4]`: bytes 4k..4k+4 of every row's codes), so one `vpdpbusd` adds four
//! products to each of 16 rows' block sums; AVX2 takes half a group (eight rows, 32
//! bytes) per register. Q4 nibbles keep GGML's order, where byte j holds values j and
//! j + 16. The K-quants (256-value blocks) are laid out the same way: a register holds
//! four bytes of each of sixteen rows (AVX-512) or eight (AVX2, and Q2_K on AVX-512
//! too), of their codes (and high bits) or of one 32-bit word of their packed scales
//! and mins, so the kernel unpacks all its rows' scales at once. Q8_0 weights are stored
//! plus 128, as unsigned bytes, because `vpdpbusd` multiplies unsigned by signed bytes;
//! the kernel subtracts 128·Σx. Q5_0's kernel builds its values plus 128 in registers
//! (q − 16 + 128) and subtracts the same 128·Σx. F16 is packed in units of eight values
//! (one lane group of `kernels_float`'s order), so that one 512-bit register holds the
//! unit of two neighbouring rows; a row's last unit is padded with zeros when its length
//! is not a multiple of eight. A matrix is `cols / unit` groups per group of rows; the
//! last group's missing rows are zeros.

use crate::Isa;
use gguf::GgmlType::{
    self, F16, IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_K, Q6_K, Q8_0,
};
use rayon::prelude::*;

/// Whether `isa` has kernels for `ty` in the packed layout: AVX-512 for the five 32-value
/// types, the K-quants (Q2_K through the AVX2 kernel), IQ4_XS and F16; AVX2 for Q4_0,
/// IQ4_NL, Q2_K, Q4_K and Q5_K (as two halves of eight rows).
pub fn packable(ty: GgmlType, isa: Isa) -> bool {
    match isa {
        Isa::Avx512 => matches!(
            ty,
            Q4_0 | IQ4_NL | Q4_1 | Q5_0 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ4_XS | F16
        ),
        Isa::Avx2 => matches!(ty, Q4_0 | IQ4_NL | Q2_K | Q4_K | Q5_K),
        _ => false,
    }
}

/// Whether `ty` has a packed layout (`packable` on some ISA).
pub(crate) fn has_packed_layout(ty: GgmlType) -> bool {
    packable(ty, Isa::Avx512) || packable(ty, Isa::Avx2)
}

/// Rows interleaved in one group of a packed `ty` matrix.
pub(crate) fn group_rows(ty: GgmlType) -> usize {
    match ty {
        Q4_0 | IQ4_NL | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ4_XS | F16 => WIDE_GROUP_ROWS,
        _ => 4,
    }
}

/// F16's unit: eight values (one lane group of `kernels_float`'s order), 16 bytes.
pub(crate) const F16_UNIT_VALUES: usize = 8;
pub(crate) const F16_UNIT_BYTES: usize = 2 * F16_UNIT_VALUES;

/// Rows of a group of the sixteen-row layouts (F16's among them).
pub(crate) const WIDE_GROUP_ROWS: usize = 16;

/// What the layout interleaves, as (values, bytes): one GGML block, or for F16 a unit of
/// eight values.
pub(crate) fn unit(ty: GgmlType) -> (usize, usize) {
    match ty {
        F16 => (F16_UNIT_VALUES, F16_UNIT_BYTES),
        _ => (ty.block_size(), ty.type_size()),
    }
}

/// Bytes of one group (one unit of each of its rows).
pub(crate) fn group_bytes(ty: GgmlType) -> usize {
    group_rows(ty) * unit(ty).1
}

/// Bytes of one group of rows across all `cols` columns.
pub(crate) fn group_row_bytes(ty: GgmlType, cols: usize) -> usize {
    cols.div_ceil(unit(ty).0) * group_bytes(ty)
}

/// Bytes of a packed `rows` × `cols` matrix.
pub fn packed_len(ty: GgmlType, rows: usize, cols: usize) -> usize {
    rows.div_ceil(group_rows(ty)) * group_row_bytes(ty, cols)
}

/// Where byte `j` of row `i`'s GGML block goes in its group.
fn position(ty: GgmlType, i: usize, j: usize) -> usize {
    match (ty, j) {
        (Q2_K, 80..82) => 2 * i + j - 80,
        (Q2_K, 82..84) => 32 + 2 * i + j - 82,
        (Q2_K, 0..16) => 64 + j / 4 * 64 + 4 * i + j % 4,
        (Q2_K, _) => 320 + (j - 16) / 4 * 64 + 4 * i + (j - 16) % 4,
        (Q3_K, 108..110) => 2 * i + j - 108,
        (Q3_K, 96..108) => 32 + (j - 96) / 4 * 64 + 4 * i + (j - 96) % 4,
        (Q3_K, 0..32) => 224 + j / 4 * 64 + 4 * i + j % 4,
        (Q3_K, _) => 736 + (j - 32) / 4 * 64 + 4 * i + (j - 32) % 4,
        (Q6_K, 208..210) => 2 * i + j - 208,
        (IQ4_XS, 2..4) => 32 + 2 * i + j - 2,
        (IQ4_XS, 4..8) => 64 + 4 * i + j - 4,
        (IQ4_XS, 8..) => 128 + (j - 8) / 4 * 64 + 4 * i + (j - 8) % 4,
        (Q6_K, 192..208) => 32 + (j - 192) / 4 * 64 + 4 * i + (j - 192) % 4,
        (Q6_K, 128..192) => 2336 + (j - 128) / 4 * 64 + 4 * i + (j - 128) % 4,
        (Q6_K, _) => 288 + j / 4 * 64 + 4 * i + j % 4,
        (F16, _) => 16 * i + j,
        (_, 0..2) => 2 * i + j,
        (Q4_1, 2..4) => 8 + 2 * i + j - 2,
        (Q4_1, _) => 16 + 16 * i + j - 4,
        (Q5_0, 2..4) => 8 + 2 * i + j - 2,
        (Q5_0, 4..6) => 16 + 2 * i + j - 4,
        (Q5_0, _) => 24 + 16 * i + j - 6,
        (Q8_0, 2..18) => 8 + 16 * i + j - 2,
        (Q8_0, _) => 72 + 16 * i + j - 18,
        (Q4_K | Q5_K, 2..4) => 32 + 2 * i + j - 2,
        (Q4_K | Q5_K, 4..16) => 64 + (j - 4) / 4 * 64 + 4 * i + (j - 4) % 4,
        (Q4_K, _) | (Q5_K, 16..48) => 256 + (j - 16) / 4 * 64 + 4 * i + (j - 16) % 4,
        (Q5_K, _) => 768 + (j - 48) / 4 * 64 + 4 * i + (j - 48) % 4,
        (_, _) => 32 + (j - 2) / 4 * 64 + 4 * i + (j - 2) % 4,
    }
}

/// A weight byte as stored: Q8_0's values (past the 2-byte scale) plus 128.
fn stored(ty: GgmlType, j: usize, byte: u8) -> u8 {
    if ty == Q8_0 && j >= 2 {
        byte ^ 0x80
    } else {
        byte
    }
}

/// Repacks row-major GGML blocks (`rows` × `cols` of `ty`, which must be `packable` on
/// some ISA) into the interleaved layout.
pub fn pack(ty: GgmlType, data: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    assert!(has_packed_layout(ty), "{ty} has no packed layout");
    let ((_, size), n) = (unit(ty), group_rows(ty));
    let row_bytes = cols / ty.block_size() * ty.type_size();
    // `position` once per byte of a group, not once per byte of the matrix.
    let positions: Vec<u16> = (0..n * size)
        .map(|k| position(ty, k / size, k % size) as u16)
        .collect();
    let mut out = vec![0u8; packed_len(ty, rows, cols)];
    // Groups of rows on all threads: a model's load is mostly packing.
    let group_rows = out.par_chunks_exact_mut(group_row_bytes(ty, cols));
    group_rows.enumerate().for_each(|(g, group_row)| {
        for (b, group) in group_row.chunks_exact_mut(group_bytes(ty)).enumerate() {
            for i in 0..n.min(rows - g * n) {
                // A row's last F16 unit may be short; the rest of it stays zero.
                let row = &data[(g * n + i) * row_bytes..][..row_bytes];
                let block = &row[b * size..row_bytes.min((b + 1) * size)];
                let at = &positions[i * size..(i + 1) * size];
                for (j, (&byte, &to)) in block.iter().zip(at).enumerate() {
                    group[to as usize] = stored(ty, j, byte);
                }
            }
        }
    });
    out
}

/// Rebuilds unit `b` of row `r` of a packed matrix (`unit`: a GGML block, or eight F16
/// values) into `block` (`unit(ty).1` bytes): the inverse of `pack`.
pub(crate) fn unpack_block(
    ty: GgmlType,
    packed: &[u8],
    cols: usize,
    r: usize,
    b: usize,
    block: &mut [u8],
) {
    let n = group_rows(ty);
    let at = (r / n) * group_row_bytes(ty, cols) + b * group_bytes(ty);
    let group = &packed[at..][..group_bytes(ty)];
    for (j, byte) in block.iter_mut().enumerate() {
        *byte = stored(ty, j, group[position(ty, r % n, j)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_inverts_pack_for_every_packable_type_and_odd_row_counts() {
        for ty in [
            Q4_0, IQ4_NL, Q4_1, Q5_0, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS, F16,
        ] {
            let (values, size) = unit(ty);
            // F16 also with a short last unit (29 = 3 · 8 + 5 values).
            for cols in [3 * values, if ty == F16 { 29 } else { values }] {
                let rows = 19;
                let row_bytes = cols / ty.block_size() * ty.type_size();
                let data: Vec<u8> = (0..rows * row_bytes)
                    .map(|i| (i * 7919 % 251) as u8)
                    .collect();
                let packed = pack(ty, &data, rows, cols);
                assert_eq!(packed.len(), packed_len(ty, rows, cols));
                let mut block = vec![0u8; size];
                for r in 0..rows {
                    let row = &data[r * row_bytes..][..row_bytes];
                    for (b, want) in row.chunks(size).enumerate() {
                        unpack_block(ty, &packed, cols, r, b, &mut block);
                        assert_eq!(&block[..want.len()], want, "{ty} r{r} b{b}");
                        assert!(block[want.len()..].iter().all(|&z| z == 0), "{ty} padding");
                    }
                }
            }
        }
    }
}
