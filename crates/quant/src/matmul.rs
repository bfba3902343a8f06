//! Quantized weights × f32 activations on the CPU.
//!
//! Rows of the weight matrix are decoded a tile at a time into f32 and reused for every
//! token of the batch, so each weight block is decoded once per call, not once per token.
//! Threads split the weight rows; each output value is one `dot_f32` in a fixed order.

use crate::{block_fns, dot_f32, QuantError, Result};
use gguf::GgmlType;
use rayon::prelude::*;

/// Rows decoded together; 16 rows of 1536 f32 stay within L2.
const ROW_TILE: usize = 16;

/// A row-major matrix of `rows` × `cols` values stored in a GGML block format.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
}

impl<'a> QMatrix<'a> {
    pub fn new(ty: GgmlType, data: &'a [u8], rows: usize, cols: usize) -> Result<Self> {
        if block_fns(ty).is_none() {
            return Err(QuantError::Unsupported(ty));
        }
        if cols % ty.block_size() != 0 {
            return Err(QuantError::NotBlockAligned {
                ty,
                block: ty.block_size(),
                len: cols,
            });
        }
        let expected = rows * cols / ty.block_size() * ty.type_size();
        if data.len() != expected {
            return Err(QuantError::WrongSize {
                ty,
                rows,
                cols,
                expected,
                actual: data.len(),
            });
        }
        Ok(QMatrix {
            ty,
            data,
            rows,
            cols,
        })
    }

    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_size() * self.ty.type_size()
    }

    /// Decodes row `r` into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let bytes = &self.data[r * self.row_bytes()..(r + 1) * self.row_bytes()];
        let (dequant, _) = block_fns(self.ty).expect("checked in QMatrix::new");
        for (block, values) in bytes
            .chunks_exact(self.ty.type_size())
            .zip(out.chunks_exact_mut(self.ty.block_size()))
        {
            dequant(block, values);
        }
    }
}

/// Raw output pointer shared by the workers; each writes only its own rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: workers write disjoint elements (distinct weight rows), see `matmul`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// `out[t·rows + r] = Σ_c w[r][c] · x[t·cols + c]` for every token `t` of `x`.
pub fn matmul(w: &QMatrix, x: &[f32], out: &mut [f32]) {
    let n_tokens = x.len() / w.cols;
    assert_eq!(x.len(), n_tokens * w.cols, "activations are not whole rows");
    assert_eq!(out.len(), n_tokens * w.rows, "output has the wrong size");
    let ptr = OutPtr(out.as_mut_ptr());
    let n_tiles = w.rows.div_ceil(ROW_TILE);
    (0..n_tiles).into_par_iter().for_each_init(
        || vec![0.0f32; ROW_TILE * w.cols],
        |tile, t_idx| {
            let r0 = t_idx * ROW_TILE;
            let r1 = (r0 + ROW_TILE).min(w.rows);
            for r in r0..r1 {
                w.dequantize_row(r, &mut tile[(r - r0) * w.cols..(r - r0 + 1) * w.cols]);
            }
            for t in 0..n_tokens {
                let xt = &x[t * w.cols..(t + 1) * w.cols];
                for r in r0..r1 {
                    let v = dot_f32(&tile[(r - r0) * w.cols..(r - r0 + 1) * w.cols], xt);
                    // SAFETY: index t·rows + r is in bounds (checked sizes above) and row r
                    // belongs to this tile only, so no two workers write the same element.
                    unsafe { *ptr.at(t * w.rows + r) = v };
                }
            }
        },
    );
}
