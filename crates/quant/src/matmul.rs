//! Quantized weights × f32 activations on the CPU.
//!
//! The activations are quantized once per call to the weight type's partner format
//! (see `kernels`), then every (weight row, token) pair is one kernel call. Threads split
//! the weight rows in tiles; inside a tile the rows are reused for every token, so each
//! weight block is read from memory once per call. A row's result never depends on the
//! batch size or the tiling, which keeps results batch-invariant.

use crate::iquants_lattice::is_lattice;
use crate::isa::{selected_isa, Isa};
use crate::kernels::*;
use crate::kernels_k::{q8k_d, Q8K_BLOCK};
use crate::packed::{
    group_row_bytes, group_rows, has_packed_layout, packable, packed_len, unit, unpack_block,
};
use crate::polling::for_each_index;
use crate::ternary::is_ternary;
use crate::{block_fns, f16_at, quantize, QuantError, Result};
use gguf::GgmlType;

/// Weight rows per task at least, and what a task's rows are a multiple of (the
/// packed layouts' groups are 16 rows).
const ROW_TILE: usize = 16;

/// Tasks per thread and matrix at most when the call is one group of tokens: enough to
/// share the work out evenly, few enough that a task's setup (its group's slices)
/// stays out of the profile. One task per 16 rows was 2 % of Gemma 3's decoding, whose
/// output matrix has 262,144.
const TASKS_PER_THREAD: usize = 8;

/// Rows per task for a matrix of `rows` rows on `threads` threads. Several token
/// groups (a prompt) keep 16 rows a task, whose weights stay in L1 while every group
/// passes over them.
fn tile_rows(rows: usize, threads: usize, token_groups: usize) -> usize {
    match token_groups {
        0 | 1 => (rows / (threads.max(1) * TASKS_PER_THREAD))
            .next_multiple_of(ROW_TILE)
            .max(ROW_TILE),
        _ => ROW_TILE,
    }
}

/// The weight rows `start..end` that one task computes.
#[derive(Clone, Copy)]
struct RowSpan {
    start: usize,
    end: usize,
}

/// Tokens whose dot products share one pass over a weight row (prefill and batches):
/// each weight block is loaded and unpacked once for all of them.
const TOKEN_BLOCK: usize = 8;

/// How a matrix's blocks are ordered in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// GGML's: row after row.
    RowMajor,
    /// Rows interleaved block by block (`packed`), for the AVX-512 kernels.
    Packed,
}

/// A matrix of `rows` × `cols` values stored in a GGML block format.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
    pub layout: Layout,
}

impl<'a> QMatrix<'a> {
    /// A row-major matrix (GGML's layout).
    pub fn new(ty: GgmlType, data: &'a [u8], rows: usize, cols: usize) -> Result<Self> {
        QMatrix::with_layout(ty, data, rows, cols, Layout::RowMajor)
    }

    /// A matrix in the packed layout (see `packed::pack`).
    pub fn packed(ty: GgmlType, data: &'a [u8], rows: usize, cols: usize) -> Result<Self> {
        if !has_packed_layout(ty) {
            return Err(QuantError::Unsupported(ty));
        }
        QMatrix::with_layout(ty, data, rows, cols, Layout::Packed)
    }

    fn with_layout(
        ty: GgmlType,
        data: &'a [u8],
        rows: usize,
        cols: usize,
        layout: Layout,
    ) -> Result<Self> {
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
        let expected = match layout {
            Layout::RowMajor => rows * cols / ty.block_size() * ty.type_size(),
            Layout::Packed => packed_len(ty, rows, cols),
        };
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
            layout,
        })
    }

    #[inline]
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_size() * self.ty.type_size()
    }

    #[inline]
    pub fn row(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes()..(r + 1) * self.row_bytes()]
    }

    /// Decodes row `r` into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (dequant, _) = block_fns(self.ty).expect("checked in QMatrix::new");
        match self.layout {
            Layout::RowMajor => {
                let values = out.chunks_exact_mut(self.ty.block_size());
                for (block, values) in self.row(r).chunks_exact(self.ty.type_size()).zip(values) {
                    dequant(block, values);
                }
            }
            Layout::Packed => {
                // A unit is one block, or eight F16 values (the last maybe fewer).
                let (unit_values, unit_bytes) = unit(self.ty);
                let mut block = [0u8; 256];
                let block = &mut block[..unit_bytes];
                for (b, values) in out[..self.cols].chunks_mut(unit_values).enumerate() {
                    unpack_block(self.ty, self.data, self.cols, r, b, block);
                    let blocks = block.chunks_exact(self.ty.type_size());
                    for (block, values) in blocks.zip(values.chunks_exact_mut(self.ty.block_size()))
                    {
                        dequant(block, values);
                    }
                }
            }
        }
    }
}

/// Raw output pointer shared by the workers; each writes only its own rows.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(*mut f32);
// SAFETY: workers write disjoint elements (distinct weight rows), see `matmul`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Activations quantized for one matmul call: every token's row of blocks, and the
/// blocks' scales widened to f32, laid out per token group (see `TokenGroup`).
pub(crate) struct Activations {
    bytes: Vec<u8>,
    n_tokens: usize,
    groups: Vec<TokenRun>,
    /// Group starting at token t: its scales start at `t · blocks_per_row`.
    d: Vec<f32>,
    s: Vec<f32>,
    /// Q8_0 and Q8_1: the blocks' values again, laid out like `d`, 32 bytes each.
    qs: Vec<u8>,
    /// Q8_0 and Q8_1: `d` with every scale repeated eight times.
    d_wide: Vec<f32>,
    /// Q8_0 only, laid out like `d`, for the packed kernels' correction of weights
    /// stored plus 128: −128 × each lane's sum of four values, eight lanes per block
    /// (Q8_0 and Q5_0 weights).
    lane_bias: Vec<i32>,
    /// Laid out like `d`, for the packed kernels: each Q8_0 block's Σ of values (one
    /// i32, for Q4_0 weights), each Q8_K block's eight sums of 32 values (four i32 of
    /// two i16, for Q4_K weights' mins).
    sums: Vec<i32>,
}

/// The token groups of a call: 8 at a time, then the rest in one group, so that every
/// batch of up to eight tokens (a few decoding sequences, a speculative check) is one
/// pass over the weights; a group never mixes tokens of both `TokenOrder`s (`orders[t]`
/// for token t; all `OneToken` when `orders` is empty).
fn token_groups(orders: &[TokenOrder], n_tokens: usize) -> Vec<TokenRun> {
    let is_batched = |t: usize| orders.get(t) == Some(&TokenOrder::Batched);
    let mut groups = Vec::with_capacity(n_tokens.div_ceil(TOKEN_BLOCK));
    let mut t = 0;
    while t < n_tokens {
        let run = (t..n_tokens)
            .take(TOKEN_BLOCK)
            .take_while(|&u| is_batched(u) == is_batched(t))
            .count();
        groups.push(TokenRun {
            start: t,
            len: run,
            batched: is_batched(t),
        });
        t += run;
    }
    groups
}

/// One token group of a call (`token_groups`).
#[derive(Clone, Copy)]
struct TokenRun {
    start: usize,
    len: usize,
    batched: bool,
}

impl Activations {
    fn new(ty: GgmlType, x: &[f32], n_tokens: usize, orders: &[TokenOrder]) -> Activations {
        let bytes = if ty == GgmlType::F16 {
            // Rounded to f16 and widened back to f32 once (exact): see `kernels_float`.
            // The half crate's slice conversions use F16C where the CPU has it.
            use half::slice::HalfFloatSliceExt;
            let mut halves = vec![half::f16::ZERO; x.len()];
            halves.convert_from_f32_slice(x);
            let mut wide = vec![0.0f32; x.len()];
            halves.convert_to_f32_slice(&mut wide);
            let mut bytes = Vec::with_capacity(4 * wide.len());
            for v in wide {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            bytes
        } else {
            quantize(ty, x).expect("row length checked in QMatrix::new")
        };
        let block = match ty {
            GgmlType::Q8_0 => 34,
            GgmlType::Q8_1 => 36,
            GgmlType::Q8_K => Q8K_BLOCK,
            _ => 0,
        };
        let per_row = bytes.len() / n_tokens.max(1) / block.max(1);
        // Sized up front: a decoding step makes these a few hundred times.
        let blocks = n_tokens * per_row;
        let each = |q8_0: usize, q8_1: usize, q8_k: usize| match ty {
            GgmlType::Q8_0 => blocks * q8_0,
            GgmlType::Q8_1 => blocks * q8_1,
            GgmlType::Q8_K => blocks * q8_k,
            _ => 0,
        };
        let mut d = Vec::with_capacity(blocks);
        let mut s = Vec::with_capacity(each(0, 1, 0));
        let mut qs = Vec::with_capacity(each(32, 32, 0));
        let mut d_wide = Vec::with_capacity(each(8, 8, 0));
        let mut lane_bias = Vec::with_capacity(each(8, 0, 0));
        let mut sums = Vec::with_capacity(each(1, 0, 4));
        let groups = token_groups(orders, n_tokens);
        for g in groups.iter().filter(|_| block > 0) {
            for b in 0..per_row {
                for t in g.start..g.start + g.len {
                    let at = (t * per_row + b) * block;
                    let values = &bytes[at..at + block];
                    match ty {
                        GgmlType::Q8_0 => {
                            let scale = f16_at(values, 0);
                            d.push(scale);
                            d_wide.extend([scale; 8]);
                            qs.extend_from_slice(&values[2..34]);
                            let lanes: [i32; 8] = std::array::from_fn(|k| {
                                values[2 + 4 * k..6 + 4 * k]
                                    .iter()
                                    .map(|&q| q as i8 as i32)
                                    .sum()
                            });
                            lane_bias.extend(lanes.map(|l| -128 * l));
                            sums.push(lanes.iter().sum());
                        }
                        GgmlType::Q8_1 => {
                            let scale = f16_at(values, 0);
                            d.push(scale);
                            s.push(f16_at(values, 2));
                            d_wide.extend([scale; 8]);
                            qs.extend_from_slice(&values[4..36]);
                        }
                        _ => {
                            d.push(q8k_d(values));
                            // Σ of each 32 values (two of the block's sums of 16), two
                            // to an i32 as the i16 pairs the packed Q4_K kernel reads.
                            let sum16 = |j: usize| {
                                i16::from_le_bytes([values[260 + 2 * j], values[261 + 2 * j]])
                            };
                            let sum32 = |j: usize| sum16(2 * j) + sum16(2 * j + 1);
                            sums.extend((0..4).map(|e| {
                                (sum32(2 * e) as u16 as u32
                                    | (sum32(2 * e + 1) as u16 as u32) << 16)
                                    as i32
                            }));
                        }
                    }
                }
            }
        }
        Activations {
            bytes,
            n_tokens,
            groups,
            d,
            s,
            qs,
            d_wide,
            lane_bias,
            sums,
        }
    }

    /// The group of N tokens starting at token t, which `token_groups` made.
    fn group<const N: usize>(&self, t: usize, batched: bool) -> TokenGroup<'_, N> {
        let row = self.bytes.len() / self.n_tokens;
        let scales = self.d.len() / self.n_tokens.max(1);
        let range = t * scales..(t + N) * scales;
        let sums_per_block = self.sums.len() / self.d.len().max(1);
        TokenGroup {
            rows: std::array::from_fn(|i| &self.bytes[(t + i) * row..(t + i + 1) * row]),
            batched,
            d: self.d.get(range.clone()).unwrap_or(&[]),
            s: self.s.get(range.clone()).unwrap_or(&[]),
            qs: self.qs.get(range.start * 32..range.end * 32).unwrap_or(&[]),
            d_wide: self
                .d_wide
                .get(range.start * 8..range.end * 8)
                .unwrap_or(&[]),
            lane_bias: self
                .lane_bias
                .get(range.start * 8..range.end * 8)
                .unwrap_or(&[]),
            sums: self
                .sums
                .get(range.start * sums_per_block..range.end * sums_per_block)
                .unwrap_or(&[]),
        }
    }
}

/// Computes rows `span` of the output for every token, group by group:
/// fewer tokens take more rows at a time, so that there are always several
/// independent sums in flight. One token takes two rows, not four: on the Zen 1 EPYC,
/// Gemma 3's 262,144 × 640 Q8_0 output matmul read 13.9 GB/s with two or one rows at a
/// time and 10.5 GB/s with four (2 threads; four streams of rows 680 bytes apart).
#[inline(always)]
fn tile<K: Kernel>(w: &QMatrix, x: &Activations, span: RowSpan, out: OutPtr) {
    for &run in &x.groups {
        match run.len {
            TOKEN_BLOCK => tokens::<K, TOKEN_BLOCK, 1>(w, x, run, span, out),
            7 => tokens::<K, 7, 1>(w, x, run, span, out),
            6 => tokens::<K, 6, 1>(w, x, run, span, out),
            5 => tokens::<K, 5, 1>(w, x, run, span, out),
            4 => tokens::<K, 4, 2>(w, x, run, span, out),
            3 => tokens::<K, 3, 2>(w, x, run, span, out),
            2 => tokens::<K, 2, 2>(w, x, run, span, out),
            _ => tokens::<K, 1, 2>(w, x, run, span, out),
        }
    }
}

/// Rows `span` of the output for tokens `t..t + N`, R rows at a time
/// (the last few one by one).
#[inline(always)]
fn tokens<K: Kernel, const N: usize, const R: usize>(
    w: &QMatrix,
    x: &Activations,
    run: TokenRun,
    span: RowSpan,
    out: OutPtr,
) {
    let t = run.start;
    let group = x.group::<N>(t, run.batched);
    let end = span.end;
    // Once per tile: `QMatrix::row` recomputes it (two divisions) and was not inlined
    // here, 3 % of Gemma 3's decoding with its 262,144 rows.
    let row_bytes = w.row_bytes();
    let row = |r: usize| &w.data[r * row_bytes..(r + 1) * row_bytes];
    let mut r = span.start;
    // Two spelled-out branches: one generic step for both made the compiler's code for
    // prompts slower (default model pp512 449 → 385 tok/s).
    while r < end {
        if r + R <= end {
            if !K::PREFETCHES {
                prefetch_ahead(w.data, r * row_bytes, R * row_bytes);
            }
            let rows = std::array::from_fn(|k| row(r + k));
            write_group(K::dot_rows::<R, N>(w.ty, rows, &group), w.rows, t, r, out);
            r += R;
        } else {
            if !K::PREFETCHES {
                prefetch_ahead(w.data, r * row_bytes, row_bytes);
            }
            write_group(
                K::dot_rows::<1, N>(w.ty, [row(r)], &group),
                w.rows,
                t,
                r,
                out,
            );
            r += 1;
        }
    }
}

/// Bytes of weights requested ahead of the row being computed.
const PREFETCH_BYTES: usize = 4096;

/// Asks for the cache lines `PREFETCH_BYTES` ahead of `data[at..at + len]`, the weights
/// about to be used: the dot-product loop is too long for out-of-order execution alone
/// to keep enough loads in flight.
#[inline(always)]
fn prefetch_ahead(data: &[u8], at: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = at + PREFETCH_BYTES;
        let end = (start + len).min(data.len());
        let mut at = start;
        while at < end {
            // SAFETY: `at` is inside `data`; prefetching has no other effect.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    data.as_ptr().add(at) as *const i8,
                )
            };
            at += 64;
        }
    }
}

/// `tile` with the portable kernel of the weight's type.
#[inline(always)]
fn tile_any(w: &QMatrix, x: &Activations, span: RowSpan, out: OutPtr) {
    match w.ty {
        GgmlType::Q4_0 => tile::<Q4_0Q8_0>(w, x, span, out),
        GgmlType::Q4_1 => tile::<Q4_1Q8_1>(w, x, span, out),
        GgmlType::Q5_0 => tile::<Q5_0Q8_0>(w, x, span, out),
        GgmlType::Q5_1 => tile::<Q5_1Q8_1>(w, x, span, out),
        GgmlType::Q8_0 => tile::<Q8_0Q8_0>(w, x, span, out),
        GgmlType::IQ4_NL => tile::<IQ4NLQ8_0>(w, x, span, out),
        GgmlType::Q2_K => tile::<Q2KQ8K>(w, x, span, out),
        GgmlType::Q3_K => tile::<Q3KQ8K>(w, x, span, out),
        GgmlType::Q4_K => tile::<Q4KQ8K>(w, x, span, out),
        GgmlType::Q5_K => tile::<Q5KQ8K>(w, x, span, out),
        GgmlType::Q6_K => tile::<Q6KQ8K>(w, x, span, out),
        GgmlType::IQ4_XS => tile::<IQ4XSQ8K>(w, x, span, out),
        GgmlType::F16 => tile::<F16F16>(w, x, span, out),
        ty if is_lattice(ty) => tile::<LatticeQ8K>(w, x, span, out),
        ty if is_ternary(ty) => tile::<TernaryQ8K>(w, x, span, out),
        _ => tile::<Dequantizing>(w, x, span, out),
    }
}

fn tile_scalar(w: &QMatrix, x: &Activations, span: RowSpan, out: OutPtr) {
    tile_any(w, x, span, out)
}

/// Kernel types for one x86 ISA's SIMD twins, and its `tile` entry point (`$avx512`:
/// whether the ISA is AVX-512).
#[cfg(target_arch = "x86_64")]
macro_rules! x86_tile {
    ($name:ident, $module:ident, $features:literal, $avx512:literal) => {
        mod $module {
            use super::*;
            use crate::kernels_x86::$module as simd;

            /// A legacy kernel: `$f` takes R rows at a time.
            macro_rules! simd_kernel {
                ($k:ident, $f:ident) => {
                    pub struct $k;
                    impl Kernel for $k {
                        #[inline(always)]
                        fn dot(_: GgmlType, w: &[u8], a: &[u8]) -> f32 {
                            // `tile` only calls `dot_rows`; the scalar twin gives the
                            // same bits.
                            crate::kernels::$f(w, a)
                        }

                        #[inline(always)]
                        fn dot_rows<const R: usize, const N: usize>(
                            _: GgmlType,
                            w: [&[u8]; R],
                            g: &TokenGroup<N>,
                        ) -> [[f32; R]; N] {
                            // SAFETY: only reached from `tile` below, whose target
                            // features the caller checked on this CPU.
                            unsafe { simd::$f::<R, N>(w, g) }
                        }
                    }
                };
            }
            /// A K-quant kernel: `$f` takes one row at a time; `$twin` is its portable
            /// twin.
            macro_rules! simd_k_kernel {
                ($k:ident, $f:ident, $twin:ident) => {
                    pub struct $k;
                    impl Kernel for $k {
                        const PREFETCHES: bool = true;

                        #[inline(always)]
                        fn dot(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
                            // `tile` only calls `dotn`; the scalar twin gives the same bits.
                            $twin::dot(ty, w, a)
                        }

                        #[inline(always)]
                        fn dotn<const N: usize>(
                            _: GgmlType,
                            w: &[u8],
                            g: &TokenGroup<N>,
                        ) -> [f32; N] {
                            // SAFETY: as above.
                            unsafe { simd_k::$f::<N>(w, g) }
                        }
                    }
                };
            }
            simd_kernel!(Q4_0, dot_q4_0_q8_0);
            simd_kernel!(Q4_1, dot_q4_1_q8_1);
            simd_kernel!(Q5_0, dot_q5_0_q8_0);
            simd_kernel!(Q5_1, dot_q5_1_q8_1);
            simd_kernel!(Q8_0, dot_q8_0_q8_0);
            simd_kernel!(IQ4NL, dot_iq4_nl_q8_0);
            use crate::kernels_k_x86::$module as simd_k;
            simd_k_kernel!(Q2K, dot_q2_k_q8_k, Q2KQ8K);
            simd_k_kernel!(Q3K, dot_q3_k_q8_k, Q3KQ8K);
            simd_k_kernel!(Q4K, dot_q4_k_q8_k, Q4KQ8K);
            simd_k_kernel!(Q5K, dot_q5_k_q8_k, Q5KQ8K);
            simd_k_kernel!(Q6K, dot_q6_k_q8_k, Q6KQ8K);
            simd_k_kernel!(IQ4XS, dot_iq4_xs_q8_k, IQ4XSQ8K);

            /// A kernel for a family of types, one function for all of them that decodes
            /// each block once for every token of a pass: `$f` in `$file`'s copy for this
            /// ISA; `$twin` is its portable twin.
            macro_rules! family_kernel {
                ($k:ident, $file:ident, $f:ident, $twin:ident) => {
                    pub struct $k;
                    impl Kernel for $k {
                        const PREFETCHES: bool = true;

                        #[inline(always)]
                        fn dot(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
                            // `tile` only calls `dotn`; the scalar twin gives the same bits.
                            $twin::dot(ty, w, a)
                        }

                        #[inline(always)]
                        fn dotn<const N: usize>(
                            ty: GgmlType,
                            w: &[u8],
                            g: &TokenGroup<N>,
                        ) -> [f32; N] {
                            // SAFETY: as above.
                            unsafe { crate::$file::$module::$f::<N>(ty, w, g) }
                        }
                    }
                };
            }
            // The codebook i-quants; TQ1_0 and TQ2_0.
            family_kernel!(Lattice, kernels_lattice_x86, dot_lattice_q8_k, LatticeQ8K);
            family_kernel!(Ternary, kernels_ternary_x86, dot_ternary_q8_k, TernaryQ8K);

            #[target_feature(enable = $features)]
            pub fn $name(w: &QMatrix, x: &Activations, span: RowSpan, out: OutPtr) {
                match w.ty {
                    GgmlType::Q4_0 => tile::<Q4_0>(w, x, span, out),
                    GgmlType::Q4_1 => tile::<Q4_1>(w, x, span, out),
                    GgmlType::Q5_0 => tile::<Q5_0>(w, x, span, out),
                    GgmlType::Q5_1 => tile::<Q5_1>(w, x, span, out),
                    GgmlType::Q8_0 => tile::<Q8_0>(w, x, span, out),
                    GgmlType::IQ4_NL => tile::<IQ4NL>(w, x, span, out),
                    GgmlType::Q2_K => tile::<Q2K>(w, x, span, out),
                    GgmlType::Q3_K => tile::<Q3K>(w, x, span, out),
                    GgmlType::Q4_K => tile::<Q4K>(w, x, span, out),
                    GgmlType::Q5_K => tile::<Q5K>(w, x, span, out),
                    GgmlType::Q6_K => tile::<Q6K>(w, x, span, out),
                    GgmlType::IQ4_XS => tile::<IQ4XS>(w, x, span, out),
                    GgmlType::F16 => f16_tile::<$avx512>(w, x, span, out),
                    ty if is_lattice(ty) => tile::<Lattice>(w, x, span, out),
                    ty if is_ternary(ty) => tile::<Ternary>(w, x, span, out),
                    _ => tile::<Dequantizing>(w, x, span, out),
                }
            }
        }
        use $module::$name;
    };
}

/// `tile` over a packed matrix: one group of rows per kernel call, with the AVX-512
/// kernels (`AVX512`) or the AVX2 ones.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn packed_tile<const AVX512: bool>(w: &QMatrix, x: &Activations, span: RowSpan, out: OutPtr) {
    for &run in &x.groups {
        match run.len {
            TOKEN_BLOCK => packed_tokens::<TOKEN_BLOCK, AVX512>(w, x, run, span, out),
            7 => packed_tokens::<7, AVX512>(w, x, run, span, out),
            6 => packed_tokens::<6, AVX512>(w, x, run, span, out),
            5 => packed_tokens::<5, AVX512>(w, x, run, span, out),
            4 => packed_tokens::<4, AVX512>(w, x, run, span, out),
            3 => packed_tokens::<3, AVX512>(w, x, run, span, out),
            2 => packed_tokens::<2, AVX512>(w, x, run, span, out),
            _ => packed_tokens::<1, AVX512>(w, x, run, span, out),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn packed_tile_avx512(w: &QMatrix, x: &Activations, span: RowSpan, out: OutPtr) {
    packed_tile::<true>(w, x, span, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn packed_tile_avx2(w: &QMatrix, x: &Activations, span: RowSpan, out: OutPtr) {
    packed_tile::<false>(w, x, span, out)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn packed_tokens<const N: usize, const AVX512: bool>(
    w: &QMatrix,
    x: &Activations,
    run: TokenRun,
    span: RowSpan,
    out: OutPtr,
) {
    use crate::kernels_packed_f16 as avx512_f16;
    use crate::kernels_packed_iq4_xs as avx512_iq4_xs;
    use crate::kernels_packed_k as avx512_k;
    use crate::kernels_packed_k16 as avx512_k16;
    use crate::kernels_packed_k_avx2 as avx2_k;
    use crate::{kernels_packed as avx512, kernels_packed_avx2 as avx2};
    let t = run.start;
    let group = x.group::<N>(t, run.batched);
    let rows = group_rows(w.ty);
    let bytes = group_row_bytes(w.ty, w.cols);
    for r in (span.start..span.end).step_by(rows) {
        let at = r / rows * bytes;
        let data = &w.data[at..at + bytes];
        let k_quant = matches!(
            w.ty,
            GgmlType::Q2_K
                | GgmlType::Q3_K
                | GgmlType::Q4_K
                | GgmlType::Q5_K
                | GgmlType::Q6_K
                | GgmlType::IQ4_XS
        );
        if AVX512 && !k_quant {
            // Only the AVX-512 kernels of the 32-value types leave this to the loop; the
            // AVX2 and K-quant kernels prefetch as they go.
            prefetch_ahead(w.data, at, bytes);
        }
        // SAFETY: `matmul` checked that the CPU has the ISA whose kernels run here, and
        // that it has kernels for this type's packed layout.
        let sixteen = |nl: bool| unsafe {
            match (AVX512, nl) {
                (true, false) => avx512::dot16_q4_packed::<N, false>(data, &group),
                (true, true) => avx512::dot16_q4_packed::<N, true>(data, &group),
                (false, false) => avx2::dot16_q4_packed::<N, false>(data, &group),
                (false, true) => avx2::dot16_q4_packed::<N, true>(data, &group),
            }
        };
        match w.ty {
            GgmlType::Q4_0 => write_group(sixteen(false), w.rows, t, r, out),
            GgmlType::IQ4_NL => write_group(sixteen(true), w.rows, t, r, out),
            GgmlType::F16 => write_group(
                // SAFETY: as above (F16 is packed for AVX-512 only).
                unsafe { avx512_f16::dot16_f16_packed::<N>(data, w.cols, &group.rows) },
                w.rows,
                t,
                r,
                out,
            ),
            GgmlType::Q4_K | GgmlType::Q5_K if AVX512 => {
                // SAFETY: as above.
                let v = unsafe {
                    match w.ty {
                        GgmlType::Q4_K => avx512_k::dot16_q4_k_packed::<false, N>(data, &group),
                        _ => avx512_k::dot16_q4_k_packed::<true, N>(data, &group),
                    }
                };
                write_group(v, w.rows, t, r, out)
            }
            GgmlType::IQ4_XS => {
                // SAFETY: as above (IQ4_XS is packed for AVX-512 only).
                let v = unsafe {
                    match run.batched {
                        true => avx512_iq4_xs::dot16_iq4_xs_tiled::<N>(data, &group),
                        false => avx512_iq4_xs::dot16_iq4_xs_lanes::<N>(data, &group.rows),
                    }
                };
                write_group(v, w.rows, t, r, out)
            }
            GgmlType::Q3_K | GgmlType::Q6_K => {
                // SAFETY: as above (Q3_K and Q6_K are packed for AVX-512 only).
                let v = unsafe {
                    match (w.ty == GgmlType::Q3_K, run.batched) {
                        (true, true) => avx512_k16::dot16_k16_tiled::<true, N>(data, &group),
                        (false, true) => avx512_k16::dot16_k16_tiled::<false, N>(data, &group),
                        (true, false) => avx512_k16::dot16_k16_lanes::<true, N>(data, &group.rows),
                        (false, false) => {
                            avx512_k16::dot16_k16_lanes::<false, N>(data, &group.rows)
                        }
                    }
                };
                write_group(v, w.rows, t, r, out)
            }
            _ if k_quant => write_group(
                // SAFETY: as above (an AVX-512 CPU also has AVX2).
                unsafe { avx2_k::dot16_k_packed::<N>(w.ty, data, &group) },
                w.rows,
                t,
                r,
                out,
            ),
            _ => write_group(
                // SAFETY: as above (only the AVX-512 kernels pack other types).
                unsafe { avx512::dot4_packed::<N>(w.ty, data, &group) },
                w.rows,
                t,
                r,
                out,
            ),
        }
    }
}

/// Stores a group's results: `v[i][k]` is row r + k · token t + i (rows past the
/// matrix's last are dropped).
#[inline(always)]
fn write_group<const N: usize, const R: usize>(
    v: [[f32; R]; N],
    rows: usize,
    t: usize,
    r: usize,
    out: OutPtr,
) {
    for (i, v) in v.into_iter().enumerate() {
        for (k, v) in v.into_iter().enumerate().take(rows - r) {
            // SAFETY: (t + i)·rows + r + k is in bounds (sizes checked in `matmul`) and
            // rows r..r + R belong to this tile only, so no two workers write the same
            // element.
            unsafe { *out.at((t + i) * rows + r + k) = v };
        }
    }
}

/// `tile` for row-major F16 weights (the CPU backend packs them for AVX-512: see
/// `kernels_packed_f16`): tiles of R rows × T tokens (`dot_f16_tile`), 8 rows for one
/// token; for batches, one row × up to 6 tokens with AVX2, and 4 × 2, 2 × 3, 2 × 4, 2 × 5
/// or 2 × 6 with AVX-512's registers. Three and five tokens (a speculative check of two
/// or four proposals) take one tile rather than two: each tile widens every weight from
/// f16 again, which on an AVX2 machine cost a 3-row pass 1.6 one-token steps. On the
/// Zen 1 EPYC (AVX2), one row at a time made a pass of two tokens 1.45× faster than 4 × 2
/// tiles, and of three to twelve tokens 1.10–1.15× faster than two rows at a time
/// (`bench -m F16 -p 1,2,3,4,5,6,12 -n 0`, alternating). On the Intel Xeon (AVX-512),
/// three tokens ran 3–7 % faster in 2 × 3 tiles than in 4 × 3 (pp3, four alternations);
/// fewer rows for two, four or five tokens measured no faster or slower.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn f16_tile<const AVX512: bool>(w: &QMatrix, x: &Activations, span: RowSpan, out: OutPtr) {
    let mut t = 0;
    while t < x.n_tokens {
        t += match (x.n_tokens - t, AVX512) {
            (1, _) => f16_rows::<8, 1, AVX512>(w, x, t, span, out),
            (2, true) => f16_rows::<4, 2, AVX512>(w, x, t, span, out),
            (3, true) => f16_rows::<2, 3, AVX512>(w, x, t, span, out),
            (4, true) => f16_rows::<2, 4, AVX512>(w, x, t, span, out),
            (5, true) => f16_rows::<2, 5, AVX512>(w, x, t, span, out),
            (_, true) => f16_rows::<2, 6, AVX512>(w, x, t, span, out),
            (2, false) => f16_rows::<1, 2, AVX512>(w, x, t, span, out),
            (3, false) => f16_rows::<1, 3, AVX512>(w, x, t, span, out),
            (4, false) => f16_rows::<1, 4, AVX512>(w, x, t, span, out),
            (5, false) => f16_rows::<1, 5, AVX512>(w, x, t, span, out),
            (_, false) => f16_rows::<1, 6, AVX512>(w, x, t, span, out),
        };
    }
}

/// Rows `span` of F16 weights for tokens `t..t + T`, R rows at a time (a
/// group past the last row repeats it, and its results are dropped); returns T.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn f16_rows<const R: usize, const T: usize, const AVX512: bool>(
    w: &QMatrix,
    x: &Activations,
    t: usize,
    span: RowSpan,
    out: OutPtr,
) -> usize {
    use crate::kernels_float_x86::{avx2, avx512};
    let row = x.bytes.len() / x.n_tokens;
    let xs: [&[u8]; T] = std::array::from_fn(|i| &x.bytes[(t + i) * row..(t + i + 1) * row]);
    let end = span.end;
    for r in (span.start..end).step_by(R) {
        if t == 0 {
            prefetch_ahead(w.data, r * w.row_bytes(), R * w.row_bytes());
        }
        let ws: [&[u8]; R] = std::array::from_fn(|i| w.row((r + i).min(end - 1)));
        // SAFETY: `matmul` checked that the CPU has the ISA whose kernels run here.
        let v = unsafe {
            if AVX512 {
                avx512::dot_f16_tile::<R, T>(ws, xs)
            } else {
                avx2::dot_f16_tile::<R, T>(ws, xs)
            }
        };
        write_group(v, w.rows, t, r, out);
    }
    T
}

#[cfg(target_arch = "x86_64")]
x86_tile!(tile_avx2, avx2, "avx2,fma,f16c", false);
#[cfg(target_arch = "x86_64")]
x86_tile!(
    tile_avx512,
    avx512,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    true
);

/// Which of llama.cpp's two float orders a token's products follow, for the weight types
/// for which its CPU backend has two (Q6_K: its tiled kernels for batches of 8 tokens or
/// more, its `vec_dot` for fewer; see `kernels_k`). Callers pick it by the token's role,
/// never by the batch it is in, so that results stay batch-invariant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenOrder {
    /// llama.cpp's order for a batch of fewer than 8 tokens (a decoding token).
    #[default]
    OneToken,
    /// llama.cpp's order for a batch of 8 tokens or more (a prompt).
    Batched,
}

/// `out[t·rows + r] = Σ_c w[r][c] · x[t·cols + c]` for every token `t` of `x`, each in
/// `TokenOrder::OneToken`.
pub fn matmul(w: &QMatrix, x: &[f32], out: &mut [f32]) {
    matmul_many_with(selected_isa(), &[*w], x, &mut [out], &[])
}

/// `matmul` with the kernels compiled for `isa` (which must be available).
pub fn matmul_with(isa: Isa, w: &QMatrix, x: &[f32], out: &mut [f32]) {
    matmul_many_with(isa, &[*w], x, &mut [out], &[])
}

/// Several matrices applied to the same activations (Q, K and V; gate and up) in one
/// parallel pass: one fork/join and one activation quantization per activation format,
/// instead of one per matrix. Results are those of separate `matmul` calls. Token t's
/// products follow `orders[t]` (`TokenOrder::OneToken` for all when `orders` is empty).
pub fn matmul_many(ws: &[QMatrix], x: &[f32], outs: &mut [&mut [f32]], orders: &[TokenOrder]) {
    matmul_many_with(selected_isa(), ws, x, outs, orders)
}

pub fn matmul_many_with(
    isa: Isa,
    ws: &[QMatrix],
    x: &[f32],
    outs: &mut [&mut [f32]],
    orders: &[TokenOrder],
) {
    assert_eq!(ws.len(), outs.len(), "one output per matrix");
    assert!(
        isa.is_available(),
        "{} is not available on this CPU",
        isa.name()
    );
    let Some(first) = ws.first() else { return };
    assert!(
        ws.iter()
            .all(|w| w.layout == Layout::RowMajor || packable(w.ty, isa)),
        "{} has no kernels for these packed weights",
        isa.name()
    );
    let n_tokens = x.len() / first.cols;
    assert!(
        orders.is_empty() || orders.len() == n_tokens,
        "one order per token"
    );
    let mut quantized: Vec<(GgmlType, Activations)> = Vec::new();
    let mut tiles = Vec::new();
    let mut ptrs = Vec::with_capacity(ws.len());
    for (m, (w, out)) in ws.iter().zip(outs.iter_mut()).enumerate() {
        assert_eq!(w.cols, first.cols, "matrices share the activations");
        assert_eq!(x.len(), n_tokens * w.cols, "activations are not whole rows");
        assert_eq!(out.len(), n_tokens * w.rows, "output has the wrong size");
        let act = activation_type(w.ty);
        let q = match quantized.iter().position(|(t, _)| *t == act) {
            Some(i) => i,
            None => {
                quantized.push((act, Activations::new(act, x, n_tokens, orders)));
                quantized.len() - 1
            }
        };
        ptrs.push((OutPtr(out.as_mut_ptr()), q));
        let groups = quantized[q].1.groups.len();
        let span = tile_rows(w.rows, rayon::current_num_threads(), groups);
        tiles.extend((0..w.rows).step_by(span).map(|start| {
            let end = (start + span).min(w.rows);
            (m, RowSpan { start, end })
        }));
    }
    for_each_index(tiles.len(), |t| {
        let (m, span) = tiles[t];
        let (w, (ptr, q)) = (&ws[m], ptrs[m]);
        let x = &quantized[q].1;
        match isa {
            // SAFETY: `isa` is available on this CPU (asserted above).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if w.layout == Layout::Packed => unsafe {
                packed_tile_avx512(w, x, span, ptr)
            },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if w.layout == Layout::Packed => unsafe { packed_tile_avx2(w, x, span, ptr) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { tile_avx512(w, x, span, ptr) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { tile_avx2(w, x, span, ptr) },
            _ => tile_scalar(w, x, span, ptr),
        }
    });
}
