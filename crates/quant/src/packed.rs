//! Weights repacked at load time for the AVX-512 kernels (`kernels_packed`): four rows
//! interleaved block by block, so one 64-byte load feeds four rows' dot products while
//! each thread still streams one contiguous range of memory.
//!
//! A group is four rows × one 32-value block:
//!
//! | type | bytes | layout |
//! |---|---:|---|
//! | Q4_0 | 72 | d[4] (f16) · qs[4][16] |
//! | Q4_1 | 80 | d[4] · m[4] (f16) · qs[4][16] |
//! | Q8_0 | 136 | d[4] · (q+128)[4][0..16] · (q+128)[4][16..32] |
//!
//! so a 512-bit register holds the first (or last) 16 values of each of the four rows —
//! the halves the kernels' lanes 0–3 (or 4–7) sum. Q4 nibbles keep GGML's order, where
//! byte j holds values j and j + 16. Q8_0 weights are stored plus 128, as unsigned bytes,
//! because `vpdpbusd` multiplies unsigned by signed bytes; the kernel subtracts 128·Σx.
//! Only bytes move (and Q8_0's exact offset), so the kernels reproduce the row-major
//! kernels' integer sums and float operations bit for bit. A group of the matrix's rows
//! is `cols / 32` groups in a row; rows are padded to a multiple of four with zeros.

use gguf::GgmlType;

/// Rows interleaved in one group.
pub const PACK_ROWS: usize = 4;

/// Whether `ty` has a packed layout.
pub fn packable(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
}

/// Bytes of one group (four rows of one block).
pub(crate) fn group_bytes(ty: GgmlType) -> usize {
    PACK_ROWS * ty.type_size()
}

/// Bytes of a packed `rows` × `cols` matrix.
pub fn packed_len(ty: GgmlType, rows: usize, cols: usize) -> usize {
    rows.div_ceil(PACK_ROWS) * (cols / ty.block_size()) * group_bytes(ty)
}

/// Where the parts of row `i`'s block (scale, min, values) go in a group: (start in the
/// GGML block, length, start in the group). Unused parts have length 0.
fn parts(ty: GgmlType, i: usize) -> [(usize, usize, usize); 3] {
    match ty {
        GgmlType::Q4_0 => [(0, 2, 2 * i), (2, 16, 8 + 16 * i), (0, 0, 0)],
        GgmlType::Q4_1 => [(0, 2, 2 * i), (2, 2, 8 + 2 * i), (4, 16, 16 + 16 * i)],
        GgmlType::Q8_0 => [(0, 2, 2 * i), (2, 16, 8 + 16 * i), (18, 16, 72 + 16 * i)],
        _ => [(0, 0, 0); 3],
    }
}

/// Whether part `p` of `ty` holds weights stored plus 128.
fn offset_by_128(ty: GgmlType, p: usize) -> bool {
    ty == GgmlType::Q8_0 && p > 0
}

/// Repacks row-major GGML blocks (`rows` × `cols` of `ty`, which must be `packable`)
/// into the interleaved layout.
pub fn pack(ty: GgmlType, data: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    assert!(packable(ty), "{ty} has no packed layout");
    let (blocks, size) = (cols / ty.block_size(), ty.type_size());
    let mut out = vec![0u8; packed_len(ty, rows, cols)];
    for (g, group_row) in out.chunks_exact_mut(blocks * group_bytes(ty)).enumerate() {
        for (b, group) in group_row.chunks_exact_mut(group_bytes(ty)).enumerate() {
            for i in 0..PACK_ROWS {
                let r = g * PACK_ROWS + i;
                if r >= rows {
                    break;
                }
                let block = &data[(r * blocks + b) * size..][..size];
                for (p, (from, len, to)) in parts(ty, i).into_iter().enumerate() {
                    let (src, dst) = (&block[from..from + len], &mut group[to..to + len]);
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = if offset_by_128(ty, p) { s ^ 0x80 } else { s };
                    }
                }
            }
        }
    }
    out
}

/// Rebuilds GGML block `b` of row `r` of a packed matrix into `block` (`ty.type_size()`
/// bytes): the inverse of `pack`.
pub(crate) fn unpack_block(
    ty: GgmlType,
    packed: &[u8],
    cols: usize,
    r: usize,
    b: usize,
    block: &mut [u8],
) {
    let blocks = cols / ty.block_size();
    let (g, i) = (r / PACK_ROWS, r % PACK_ROWS);
    let group = &packed[(g * blocks + b) * group_bytes(ty)..][..group_bytes(ty)];
    for (p, (from, len, to)) in parts(ty, i).into_iter().enumerate() {
        for (d, &s) in block[from..from + len].iter_mut().zip(&group[to..to + len]) {
            *d = if offset_by_128(ty, p) { s ^ 0x80 } else { s };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_inverts_pack_for_every_packable_type_and_odd_row_counts() {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let (rows, cols) = (7, 96);
            let size = ty.type_size();
            let data: Vec<u8> = (0..rows * cols / 32 * size)
                .map(|i| (i * 7919 % 251) as u8)
                .collect();
            let packed = pack(ty, &data, rows, cols);
            assert_eq!(packed.len(), packed_len(ty, rows, cols));
            let mut block = vec![0u8; size];
            for r in 0..rows {
                for b in 0..cols / 32 {
                    unpack_block(ty, &packed, cols, r, b, &mut block);
                    assert_eq!(
                        block,
                        &data[(r * cols / 32 + b) * size..][..size],
                        "{ty} r{r} b{b}"
                    );
                }
            }
        }
    }
}
