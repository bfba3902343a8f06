//! Quantized weights × f32 activations on the CPU.
//!
//! The activations are quantized once per call to the weight type's partner format
//! (see `kernels`), then every (weight row, token) pair is one kernel call. Threads split
//! the weight rows in tiles; inside a tile the rows are reused for every token, so each
//! weight block is read from memory once per call. A row's result never depends on the
//! batch size or the tiling, which keeps results batch-invariant.

use crate::kernels::{activation_type, kernel_for, DotKernel};
use crate::{block_fns, quantize, QuantError, Result};
use gguf::GgmlType;
use rayon::prelude::*;

/// Weight rows per task: small enough to share work between threads, large enough to
/// amortize the task.
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
        if !cols.is_multiple_of(ty.block_size())
            || !cols.is_multiple_of(activation_type(ty).block_size())
        {
            return Err(QuantError::NotBlockAligned {
                ty,
                block: ty.block_size().max(activation_type(ty).block_size()),
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

    pub fn row(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes()..(r + 1) * self.row_bytes()]
    }

    /// Decodes row `r` into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (dequant, _) = block_fns(self.ty).expect("checked in QMatrix::new");
        for (block, values) in self
            .row(r)
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

#[inline(always)]
fn tile(w: &QMatrix, xq: &[u8], n_tokens: usize, kernel: DotKernel, r0: usize, out: OutPtr) {
    let x_row_bytes = xq.len() / n_tokens.max(1);
    let r1 = (r0 + ROW_TILE).min(w.rows);
    for t in 0..n_tokens {
        let xt = &xq[t * x_row_bytes..(t + 1) * x_row_bytes];
        for r in r0..r1 {
            let v = kernel(w.row(r), xt);
            // SAFETY: t·rows + r is in bounds (sizes checked in `matmul`) and row r belongs
            // to this tile only, so no two workers write the same element.
            unsafe { *out.at(t * w.rows + r) = v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn tile_avx2(w: &QMatrix, xq: &[u8], n_tokens: usize, kernel: DotKernel, r0: usize, out: OutPtr) {
    tile(w, xq, n_tokens, kernel, r0, out)
}

/// `out[t·rows + r] = Σ_c w[r][c] · x[t·cols + c]` for every token `t` of `x`.
pub fn matmul(w: &QMatrix, x: &[f32], out: &mut [f32]) {
    let n_tokens = x.len() / w.cols;
    assert_eq!(x.len(), n_tokens * w.cols, "activations are not whole rows");
    assert_eq!(out.len(), n_tokens * w.rows, "output has the wrong size");
    let xq = quantize(activation_type(w.ty), x).expect("row length checked in QMatrix::new");
    let kernel = kernel_for(w.ty);
    let ptr = OutPtr(out.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::is_x86_feature_detected!("avx2");
    (0..w.rows.div_ceil(ROW_TILE))
        .into_par_iter()
        .for_each(|i| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU supports AVX2, checked above.
                unsafe { tile_avx2(w, &xq, n_tokens, kernel, i * ROW_TILE, ptr) };
                return;
            }
            tile(w, &xq, n_tokens, kernel, i * ROW_TILE, ptr);
        });
}
