//! Attention over the CPU backend's f16 KV cache — a query against each cached key, and
//! the weighted sum of cached values — summed in the orders llama.cpp's CPU backend uses,
//! so that our logits match its logits bit for bit.
//!
//! The cache stays f16: kernels widen a block of 16 positions at a time as they read it.
//! The query and the attention weights are f16 values too (GGML rounds them to f16; the
//! caller rounds the query, `attend` the weights), so every product is exact in f32 and
//! the summation order alone decides the rounding. llama.cpp has two orders, picked by
//! the size of the batch:
//! - `Batched` (its tinyBLAS kernel, used when a batch has several tokens — every prompt):
//!   term i goes into accumulator i % 16, each accumulator adds its terms in order, and
//!   the 16 are summed as a halving tree (+8, +4, +2, +1).
//! - `OneToken` (`ggml_vec_dot_f16`, used for a single token — every generated one, AVX-512
//!   build): the terms before the last multiple of 64 go into 64 accumulators (term i into
//!   i % 64), summed as a halving tree (+32 … +1); the rest are added one by one in f64.
//!   For the values, the terms are the keys padded with zero weights to a multiple of 32.
//!
//! For the values a term is a position, so a block's 16 positions are the 16 accumulators
//! of the batched order (or one quarter of the one-token order's 64): that is why the
//! cache stores each block's values transposed, a column's 16 positions side by side.
//! Every query of a KV head's group reads a block while it is in the L1 cache.

use crate::dot::{dot_lanes, tree_sum, LANES};
use crate::isa::isa_dispatch;
use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

/// Which of llama.cpp's summation orders to reproduce (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F16Order {
    Batched,
    OneToken,
}

impl F16Order {
    /// Accumulators of the vector part, and how many of the `terms` go through them (the
    /// rest are the f64 tail). `padded`: the terms count as padded to a multiple of 32,
    /// as the weighted values' are.
    fn vector_part(self, terms: usize, padded: bool) -> (usize, usize) {
        match self {
            F16Order::Batched => (LANES, terms),
            F16Order::OneToken => {
                let counted = if padded {
                    terms.next_multiple_of(32)
                } else {
                    terms
                };
                (SLOTS, (counted / SLOTS * SLOTS).min(terms))
            }
        }
    }
}

impl F16Order {
    /// Groups of 16 accumulators the weighted values' order cycles through, block by
    /// block: one (batched), or four (the one-token order's 64).
    pub(crate) fn slot_groups(self) -> usize {
        match self {
            F16Order::Batched => 1,
            F16Order::OneToken => SLOTS / LANES,
        }
    }
}

/// Accumulators of `ggml_vec_dot_f16`'s vector part.
const SLOTS: usize = 64;

/// Positions per block of the CPU KV cache: one vector of 16 f32 lanes.
pub const KV_BLOCK: usize = 16;

/// One KV head of one layer of a sequence's cache: f16 bits in the CPU backend's pool,
/// in blocks of `KV_BLOCK` positions listed by `blocks` (position p is in pool block
/// `blocks[p / 16]`). Keys are stored position by position, `kv_dim` values each; a
/// block's values are stored column by column, each column's 16 positions together.
#[derive(Clone, Copy)]
pub struct KvHead<'a> {
    /// The layer's keys: pool slot s at `s · kv_dim`.
    pub keys: &'a [u16],
    /// The layer's values: pool block B's column c (of all `kv_dim`) at `(B · kv_dim + c) · 16`.
    pub values: &'a [u16],
    pub blocks: &'a [u32],
    pub kv_dim: usize,
    /// This head's first column among the `kv_dim`.
    pub offset: usize,
    pub head_dim: usize,
}

impl<'a> KvHead<'a> {
    /// Position p's key.
    #[inline(always)]
    pub fn key(&self, p: usize) -> &'a [u16] {
        let slot = self.blocks[p / KV_BLOCK] as usize * KV_BLOCK + p % KV_BLOCK;
        let at = slot * self.kv_dim + self.offset;
        &self.keys[at..at + self.head_dim]
    }

    /// Block b's keys of this head: position 16·b + j's at `j · kv_dim`.
    #[inline(always)]
    pub fn key_block(&self, b: usize) -> &'a [u16] {
        let at = self.blocks[b] as usize * KV_BLOCK * self.kv_dim + self.offset;
        &self.keys[at..at + (KV_BLOCK - 1) * self.kv_dim + self.head_dim]
    }

    /// Block b's values of this head: column c's 16 positions at `c · 16`.
    #[inline(always)]
    pub fn value_block(&self, b: usize) -> &'a [u16] {
        let at = (self.blocks[b] as usize * self.kv_dim + self.offset) * KV_BLOCK;
        &self.values[at..at + self.head_dim * KV_BLOCK]
    }

    /// Position p's key, widened into `dst`.
    pub(crate) fn widen_key(&self, p: usize, dst: &mut [f32]) {
        widen(self.key(p), dst);
    }

    /// Position p's value in column c.
    #[inline(always)]
    pub(crate) fn value(&self, p: usize, c: usize) -> f32 {
        f16::from_bits(self.value_block(p / KV_BLOCK)[c * KV_BLOCK + p % KV_BLOCK]).to_f32()
    }
}

/// One row of one query head: it attends positions `first..end` of its sequence in
/// `order`. `q` holds f16 values (GGML rounds the query to f16 for an f16 cache).
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    pub q: &'a [f32],
    pub first: usize,
    pub end: usize,
    pub order: F16Order,
}

impl Query<'_> {
    /// The position a query's scores and weights start at: the start of the block holding
    /// `first`, so that their groups of 16 are aligned with the blocks (and with the
    /// softmax's groups, which count from position 0).
    pub fn base(&self) -> usize {
        self.first / KV_BLOCK * KV_BLOCK
    }

    /// The end of the positions the weighted values sum in vectors; the rest (one-token
    /// order only) are added in f64. Positions before `first` count as terms with a zero
    /// weight: llama.cpp masks them rather than leaving them out, and a term's place
    /// decides its accumulator.
    pub(crate) fn vector_end(&self) -> usize {
        self.order.vector_part(self.end, true).1
    }
}

/// `dst = src` widened from f16 bits.
#[inline(always)]
fn widen(src: &[u16], dst: &mut [f32]) {
    src.reinterpret_cast::<f16>().convert_to_f32_slice(dst);
}
#[inline(always)]
fn dot_with(order: F16Order, k: &[f32], q: &[f32]) -> f32 {
    let n = k.len().min(q.len());
    let (k, q) = (&k[..n], &q[..n]);
    match order {
        F16Order::Batched => dot_lanes(k, q),
        F16Order::OneToken => {
            let (_, slotted) = order.vector_part(n, false);
            // Fixed-size arrays and strides, so that the compiler keeps all of it in
            // vector registers.
            let mut acc = [0.0f32; SLOTS];
            for (x, y) in k[..slotted]
                .chunks_exact(SLOTS)
                .zip(q[..slotted].chunks_exact(SLOTS))
            {
                let (x, y): (&[f32; SLOTS], &[f32; SLOTS]) =
                    (x.try_into().unwrap(), y.try_into().unwrap());
                for i in 0..SLOTS {
                    acc[i] += x[i] * y[i];
                }
            }
            for stride in [32, 16, 8, 4, 2, 1] {
                for i in 0..stride {
                    acc[i] += acc[i + stride];
                }
            }
            let tail = k[slotted..].iter().zip(&q[slotted..]);
            tail.fold(acc[0] as f64, |s, (x, y)| s + (x * y) as f64) as f32
        }
    }
}

isa_dispatch! {
    /// Σ k[i]·q[i] in `order`'s summation order: `k` a cached key (f16 values widened),
    /// `q` holding f16-representable values (the query rounded to f16).
    pub fn dot_f16(order: F16Order, k: &[f32], q: &[f32]) -> f32 => dot_with
}

// Inlined into `scores_any`'s ISA variants, so that it is compiled with their features.
#[inline(always)]
fn scores_portable(queries: &[Query], kv: &KvHead, scale: f32, scores: &mut [Vec<f32>]) {
    let mut key = vec![0.0f32; kv.head_dim];
    for (query, scores) in queries.iter().zip(scores.iter_mut()) {
        scores.clear();
        scores.resize(query.first - query.base(), f32::NEG_INFINITY);
    }
    let first = queries.iter().map(|q| q.first).min().unwrap_or(0);
    let end = queries.iter().map(|q| q.end).max().unwrap_or(0);
    // Each key is widened once for all the queries that see it. Plain loops, not
    // iterator adaptors: their closures would be compiled outside the caller's target
    // features.
    for p in first..end {
        kv.widen_key(p, &mut key);
        for (query, scores) in queries.iter().zip(scores.iter_mut()) {
            if (query.first..query.end).contains(&p) {
                scores.push(dot_with(query.order, &key, query.q) * scale);
            }
        }
    }
}

isa_dispatch! {
    fn scores_any(queries: &[Query], kv: &KvHead, scale: f32, scores: &mut [Vec<f32>])
        => scores_portable
}

/// Each query's attention scores: `scores[i][p - base] = dot_f16(order, key(p), q) · scale`
/// for its positions p in `first..end`, and -∞ for the positions of `base..first` (see
/// `Query::base`). One call serves all the queries that share `kv` (a GQA group's heads,
/// several rows): each block of keys is read once for all of them.
pub fn attention_scores(queries: &[Query], kv: &KvHead, scale: f32, scores: &mut [Vec<f32>]) {
    assert_eq!(queries.len(), scores.len(), "one score list per query");
    #[cfg(target_arch = "x86_64")]
    match crate::selected_isa() {
        crate::Isa::Avx512
            if crate::attention_avx512::scores_avx512(queries, kv, scale, scores) =>
        {
            return
        }
        crate::Isa::Avx2 if crate::attention_avx2::scores_avx2(queries, kv, scale, scores) => {
            return
        }
        _ => {}
    }
    scores_any(queries, kv, scale, scores)
}

/// Scratch space of `attend`, kept between calls so that no call allocates.
#[derive(Default)]
pub struct AttendScratch {
    /// Per column and slot group, the accumulators of the 16 lanes.
    pub(crate) lanes: Vec<[f32; LANES]>,
    pub(crate) block: Vec<f32>,
    /// A stretch of blocks' values (f16 bits), copied side by side.
    pub(crate) stretch: Vec<u16>,
}

// Inlined into `attend_any`'s ISA variants, as `scores_portable`.
#[inline(always)]
fn attend_portable(
    queries: &[Query],
    weights: &[Vec<f32>],
    kv: &KvHead,
    out: &mut [f32],
    scratch: &mut AttendScratch,
) {
    let width = kv.head_dim;
    // Slot groups: accumulator p % 64 of the one-token order is lane p % 16 of group
    // (p / 16) % 4. Query i's column c, group g at `lanes[(i · width + c) · 4 + g]`.
    let groups = |query: &Query| query.order.slot_groups();
    let lanes = &mut scratch.lanes;
    lanes.clear();
    lanes.resize(queries.len() * width * SLOTS / LANES, [0.0; LANES]);
    scratch.block.resize(2 * width * KV_BLOCK, 0.0);
    let (block, partial) = scratch.block.split_at_mut(width * KV_BLOCK);
    let first = queries
        .iter()
        .map(|q| q.base() / KV_BLOCK)
        .min()
        .unwrap_or(0);
    let end = queries
        .iter()
        .map(|q| q.vector_end().div_ceil(KV_BLOCK))
        .max();
    // Each block of values is widened once for all the queries that see it.
    for b in first..end.unwrap_or(0) {
        let at = b * KV_BLOCK;
        widen(kv.value_block(b), block);
        for (i, (query, weights)) in queries.iter().zip(weights).enumerate() {
            let (base, vector_end) = (query.base(), query.vector_end());
            if at < base || at >= vector_end {
                continue;
            }
            let w: [f32; LANES] = std::array::from_fn(|l| match at + l < vector_end {
                true => weights[at + l - base],
                false => 0.0,
            });
            // Positions past the end may hold another sequence's values: zeros instead.
            let values: &[f32] = match at + KV_BLOCK <= vector_end {
                true => block,
                false => {
                    partial.copy_from_slice(block);
                    for l in vector_end - at..KV_BLOCK {
                        partial[l..]
                            .iter_mut()
                            .step_by(KV_BLOCK)
                            .for_each(|v| *v = 0.0);
                    }
                    partial
                }
            };
            let g = groups(query);
            for (c, v) in values.chunks_exact(KV_BLOCK).enumerate() {
                let acc = &mut lanes[(i * width + c) * (SLOTS / LANES) + b % g];
                // The product of two f16 values is exact, so this is the add.
                for l in 0..LANES {
                    acc[l] += w[l] * v[l];
                }
            }
        }
    }
    for (i, ((query, weights), out)) in queries
        .iter()
        .zip(weights)
        .zip(out.chunks_exact_mut(width))
        .enumerate()
    {
        for (c, o) in out.iter_mut().enumerate() {
            let at = (i * width + c) * (SLOTS / LANES);
            let g = &lanes[at..at + SLOTS / LANES];
            // The halving tree: +32 and +16 across groups, then +8 … +1 across lanes.
            let summed: [f32; LANES] = match groups(query) {
                1 => g[0],
                _ => std::array::from_fn(|l| (g[0][l] + g[2][l]) + (g[1][l] + g[3][l])),
            };
            *o = tree_sum(summed);
        }
        add_tail(query, weights, kv, out);
    }
}

/// Columns of `add_tail`'s sums at a time (its buffers live on the stack).
const TAIL_COLUMNS: usize = 64;

/// The one-token order's f64 tail: positions `vector_end..end` added one by one to the
/// vector part's sums (`out`); those before `base` weigh zero. Each column still adds
/// its positions in order; the columns advance side by side, block by block, each
/// block's values widened once. One value at a time through the half crate, the tail
/// held 3.2 % of `perf`'s samples of decoding the default model's Q4_0 copy at depth
/// 160; this way, 0.5 %.
pub(crate) fn add_tail(query: &Query, weights: &[f32], kv: &KvHead, out: &mut [f32]) {
    let (base, end) = (query.base(), query.end);
    let start = query.vector_end().max(base);
    if start >= end {
        return;
    }
    let mut sums = [0.0f64; TAIL_COLUMNS];
    let mut values = [0.0f32; TAIL_COLUMNS * KV_BLOCK];
    for (chunk, out) in out.chunks_mut(TAIL_COLUMNS).enumerate() {
        let columns = chunk * TAIL_COLUMNS..chunk * TAIL_COLUMNS + out.len();
        let (sums, values) = (&mut sums[..out.len()], &mut values[..out.len() * KV_BLOCK]);
        for (s, &o) in sums.iter_mut().zip(out.iter()) {
            *s = o as f64;
        }
        for b in start / KV_BLOCK..end.div_ceil(KV_BLOCK) {
            let block = kv.value_block(b);
            widen(
                &block[columns.start * KV_BLOCK..columns.end * KV_BLOCK],
                values,
            );
            for p in start.max(b * KV_BLOCK)..end.min((b + 1) * KV_BLOCK) {
                let (w, j) = (weights[p - base], p % KV_BLOCK);
                for (s, column) in sums.iter_mut().zip(values.chunks_exact(KV_BLOCK)) {
                    *s += (w * column[j]) as f64;
                }
            }
        }
        for (o, &s) in out.iter_mut().zip(sums.iter()) {
            *o = s as f32;
        }
    }
}

isa_dispatch! {
    fn attend_any(
        queries: &[Query],
        weights: &[Vec<f32>],
        kv: &KvHead,
        out: &mut [f32],
        scratch: &mut AttendScratch,
    ) => attend_portable
}

/// Each query's attention output, `out[i · head_dim..]` = Σₚ weights[i][p - base] ·
/// value(p) over its positions (the weights as `attention_scores` laid out the scores,
/// holding f16 values: GGML rounds them, and `round_to_f16` does). Each column equals
/// `dot_f16` of that column of values with the weights, positions before `first` weighing
/// zero. A `kv` narrowed to some of a head's columns (its `offset` and `head_dim`) gives
/// those columns' outputs, the same bits as the whole head's.
pub fn attend(
    queries: &[Query],
    weights: &[Vec<f32>],
    kv: &KvHead,
    out: &mut [f32],
    scratch: &mut AttendScratch,
) {
    assert_eq!(queries.len(), weights.len(), "one weight list per query");
    assert_eq!(
        out.len(),
        queries.len() * kv.head_dim,
        "one output per query"
    );
    #[cfg(target_arch = "x86_64")]
    match crate::selected_isa() {
        crate::Isa::Avx512
            if crate::attention_avx512::attend_avx512(queries, weights, kv, out, scratch) =>
        {
            return
        }
        crate::Isa::Avx2
            if crate::attention_avx2::attend_avx2(queries, weights, kv, out, scratch) =>
        {
            return
        }
        _ => {}
    }
    attend_any(queries, weights, kv, out, scratch)
}

/// Whether the vector score kernels cover every query over a head of `width`: the
/// batched order takes multiples of 16 up to 128 and 256, the one-token order 64, 128
/// and 256 (no f64 tail).
#[cfg(target_arch = "x86_64")]
pub(crate) fn vector_scores_cover(queries: &[Query], width: usize) -> bool {
    queries.iter().all(|q| {
        q.q.len() >= width
            && match q.order {
                F16Order::Batched => width.is_multiple_of(16) && (width <= 128 || width == 256),
                F16Order::OneToken => matches!(width, 64 | 128 | 256),
            }
    })
}

/// Sizes each query's score list for the vector kernels (-∞ where nothing is stored:
/// positions before `first`), and returns the blocks any query sees.
#[cfg(target_arch = "x86_64")]
pub(crate) fn start_scores(queries: &[Query], scores: &mut [Vec<f32>]) -> std::ops::Range<usize> {
    for (query, scores) in queries.iter().zip(scores.iter_mut()) {
        scores.clear();
        scores.resize(query.end - query.base(), f32::NEG_INFINITY);
    }
    let first = queries.iter().map(|q| q.base() / KV_BLOCK).min();
    let last = queries.iter().map(|q| q.end.div_ceil(KV_BLOCK)).max();
    first.unwrap_or(0)..last.unwrap_or(0)
}

/// What a vector value kernel's tile of `Q` queries spans.
#[cfg(target_arch = "x86_64")]
pub(crate) struct TileSpan<const Q: usize> {
    /// Each query's base and vector end (`Query::base`, `Query::vector_end`), and its
    /// weights.
    pub bases: [usize; Q],
    pub ends: [usize; Q],
    pub weights: [*const f32; Q],
    /// The blocks any query weighs.
    pub first: usize,
    pub last: usize,
    /// Positions from here on may hold another sequence's values.
    pub written: usize,
    /// The positions every query weighs: blocks inside need no masks.
    pub inner: (usize, usize),
}

#[cfg(target_arch = "x86_64")]
impl<const Q: usize> TileSpan<Q> {
    /// The span of `tile`'s first `Q` queries (at least one), weighing `weights`.
    #[inline(always)]
    pub(crate) fn new(tile: &[Query], weights: &[Vec<f32>]) -> TileSpan<Q> {
        let bases: [usize; Q] = std::array::from_fn(|i| tile[i].base());
        let ends: [usize; Q] = std::array::from_fn(|i| tile[i].vector_end());
        let lowest = *bases.iter().min().expect("a tile has a query");
        let written = *ends.iter().max().expect("a tile has a query");
        TileSpan {
            bases,
            ends,
            weights: std::array::from_fn(|i| weights[i].as_ptr()),
            first: lowest / KV_BLOCK,
            last: written.div_ceil(KV_BLOCK),
            written,
            inner: (*bases.iter().max().unwrap(), *ends.iter().min().unwrap()),
        }
    }
}

/// Asks for the cache lines holding `bytes` at `p` to be brought into the L2 cache. Not
/// the L1: a KV head's lines lie at strides that fold onto few of its sets, so lines
/// fetched ahead there were evicted before their turn; into the L2, a decoding step's
/// reads from memory ran 1.1–1.4× faster (`cargo bench -p quant --bench attention`,
/// `decode_from_memory`).
///
/// # Safety
/// None beyond the call's: prefetching has no other effect, wherever it points.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn prefetch(p: *const u16, bytes: usize) {
    use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
    let start = p as usize & !63;
    for line in (start..p as usize + bytes).step_by(64) {
        // SAFETY: a prefetch never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line as *const i8) };
    }
}

/// Blocks of keys the score kernels fetch ahead of the block they read, far enough to
/// cover the memory's latency. The AVX-512 kernel also fetches a call's first
/// `KEYS_AHEAD` blocks before it starts: a decoding step split across threads starts a
/// call per stretch of positions, whose first blocks came from memory unannounced
/// (fetching them took a decoding step at depth 2,048 from 160 to 152 µs of attention
/// per layer on a Zen 4 EPYC, `bench -d 2048 -t 2`). The AVX2 kernel does not: on a
/// Zen 1 EPYC (8 MiB L3) the same made that step slower, 26 against 33 tok/s (medians
/// of eight alternating runs).
#[cfg(target_arch = "x86_64")]
pub(crate) const KEYS_AHEAD: usize = 8;

/// Prefetches (as `prefetch`) the first `columns` of every key of block `b` of `kv`.
///
/// # Safety
/// None beyond the call's: prefetching has no other effect, wherever it points.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn prefetch_keys(kv: &KvHead, b: usize, columns: usize) {
    let block = kv.key_block(b).as_ptr();
    for j in 0..KV_BLOCK {
        // SAFETY: as above.
        unsafe { prefetch(block.add(j * kv.kv_dim), 2 * columns) };
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const ORDERS: [F16Order; 2] = [F16Order::Batched, F16Order::OneToken];

    /// `n` f16 values, widened.
    pub(crate) fn f16_values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| f16::from_f32(((i * seed) as f32 * 0.37).sin() * 3.0).to_f32())
            .collect()
    }

    /// A pool of `blocks` blocks for `heads` KV heads of `width`, holding one sequence of
    /// `written` positions in a shuffled block table; every other slot holds NaN, which
    /// no kernel may let through.
    pub(crate) struct TestCache {
        pub keys: Vec<u16>,
        pub values: Vec<u16>,
        pub blocks: Vec<u32>,
        pub kv_dim: usize,
        pub width: usize,
    }

    impl TestCache {
        pub fn new(heads: usize, width: usize, written: usize, seed: usize) -> TestCache {
            let kv_dim = heads * width;
            let used = written.div_ceil(KV_BLOCK);
            let pool = used + 3;
            // Block b of the sequence is pool block (7b + 2) mod pool (7 ∤ pool).
            let pool = if pool.is_multiple_of(7) {
                pool + 1
            } else {
                pool
            };
            let blocks: Vec<u32> = (0..used).map(|b| ((7 * b + 2) % pool) as u32).collect();
            let nan = f16::NAN.to_bits();
            let mut keys = vec![nan; pool * KV_BLOCK * kv_dim];
            let mut values = vec![nan; pool * KV_BLOCK * kv_dim];
            for p in 0..written {
                let k = f16_values(kv_dim, p * 3 + seed);
                let v = f16_values(kv_dim, p * 5 + seed + 1);
                let (block, lane) = (blocks[p / KV_BLOCK] as usize, p % KV_BLOCK);
                for c in 0..kv_dim {
                    keys[(block * KV_BLOCK + lane) * kv_dim + c] = f16::from_f32(k[c]).to_bits();
                    values[(block * kv_dim + c) * KV_BLOCK + lane] = f16::from_f32(v[c]).to_bits();
                }
            }
            TestCache {
                keys,
                values,
                blocks,
                kv_dim,
                width,
            }
        }

        pub fn head(&self, h: usize) -> KvHead<'_> {
            KvHead {
                keys: &self.keys,
                values: &self.values,
                blocks: &self.blocks,
                kv_dim: self.kv_dim,
                offset: h * self.width,
                head_dim: self.width,
            }
        }
    }

    /// Spans (first, end) over `written` positions, including windows that start
    /// mid-block and ends that do (to be clamped to `written`).
    pub(crate) fn test_spans(written: usize) -> [(usize, usize); 6] {
        [
            (0, written),
            (0, 1),
            (0, written.min(17)),
            (written / 3, written),
            (written.saturating_sub(5), written - 2.min(written - 1)),
            (written / 2 + 1, written / 2 + 2),
        ]
    }

    /// Queries of every order over each of `test_spans`.
    fn queries(qs: &[Vec<f32>], written: usize) -> Vec<Query<'_>> {
        let mut out = Vec::new();
        for (i, &(first, end)) in test_spans(written).iter().enumerate() {
            for order in ORDERS {
                let end = end.max(first + 1).min(written);
                let first = first.min(end - 1);
                out.push(Query {
                    q: &qs[i % qs.len()],
                    first,
                    end,
                    order,
                });
            }
        }
        out
    }

    /// The x86 vector kernels this CPU can run, to call directly (whatever ISA the
    /// dispatch selected).
    fn runnable<F>(avx2: F, avx512: F) -> Vec<(crate::Isa, F)> {
        [(crate::Isa::Avx2, avx2), (crate::Isa::Avx512, avx512)]
            .into_iter()
            .filter(|(isa, _)| isa.is_available())
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn dots_match_their_portable_twins_and_the_exact_sum() {
        for order in ORDERS {
            for n in [1, 15, 16, 64, 100, 128, 200] {
                let k = f16_values(n, 1);
                let q = f16_values(n, 7);
                let got = dot_f16(order, &k, &q);
                assert_eq!(got.to_bits(), dot_with(order, &k, &q).to_bits());
                let exact: f64 = k.iter().zip(&q).map(|(a, b)| *a as f64 * *b as f64).sum();
                assert!(
                    (got as f64 - exact).abs() < 1e-4 * exact.abs().max(1.0),
                    "{order:?} n={n}"
                );
            }
        }
    }

    #[test]
    fn scores_are_the_dots_of_the_visible_keys_and_match_their_portable_twin() {
        for width in [16, 40, 64, 96, 128, 256] {
            for written in [1, 15, 16, 17, 33, 100, 300] {
                let cache = TestCache::new(2, width, written, width + written);
                let kv = cache.head(1);
                let qs: Vec<Vec<f32>> = (0..3).map(|i| f16_values(width, 5 + i)).collect();
                let queries = queries(&qs, written);
                let mut got = vec![Vec::new(); queries.len()];
                let mut want = vec![Vec::new(); queries.len()];
                attention_scores(&queries, &kv, 0.125, &mut got);
                scores_portable(&queries, &kv, 0.125, &mut want);
                #[cfg(target_arch = "x86_64")]
                for (isa, kernel) in runnable::<fn(_, _, _, &mut _) -> _>(
                    crate::attention_avx2::scores_avx2,
                    crate::attention_avx512::scores_avx512,
                ) {
                    let mut direct = vec![Vec::new(); queries.len()];
                    if kernel(&queries, &kv, 0.125, &mut direct) {
                        for (i, query) in queries.iter().enumerate() {
                            assert_eq!(bits(&direct[i]), bits(&want[i]), "{isa:?} {query:?}");
                        }
                    }
                }
                let mut key = vec![0.0; width];
                for (i, query) in queries.iter().enumerate() {
                    assert_eq!(bits(&got[i]), bits(&want[i]), "{query:?} width {width}");
                    assert_eq!(got[i].len(), query.end - query.base());
                    for (j, &s) in got[i].iter().enumerate() {
                        let p = query.base() + j;
                        if p < query.first {
                            assert_eq!(s, f32::NEG_INFINITY);
                        } else {
                            kv.widen_key(p, &mut key);
                            assert_eq!(s, dot_f16(query.order, &key, query.q) * 0.125);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn each_output_column_is_the_dot_of_that_column_of_values() {
        let mut scratch = AttendScratch::default();
        for width in [16, 40, 64, 256] {
            // 600 positions cross the AVX-512 kernel's 256 KiB stretch at width 256.
            for written in [1, 3, 16, 17, 32, 33, 64, 65, 96, 97, 130, 300, 600] {
                let cache = TestCache::new(2, width, written, 2 * width + written);
                let kv = cache.head(1);
                let qs = vec![vec![0.0; width]];
                let queries = queries(&qs, written);
                let weights: Vec<Vec<f32>> = queries
                    .iter()
                    .map(|q| {
                        (q.base()..q.end)
                            .map(|p| match p < q.first {
                                true => 0.0,
                                false => ((p * 13 % 7) as f32 + 0.3) / (3.0 * q.end as f32),
                            })
                            .collect()
                    })
                    .collect();
                let mut rounded = weights.clone();
                rounded.iter_mut().for_each(|w| crate::round_to_f16(w));
                let mut out = vec![f32::NAN; queries.len() * width];
                attend(&queries, &rounded, &kv, &mut out, &mut scratch);
                let mut twin = vec![f32::NAN; queries.len() * width];
                attend_portable(&queries, &rounded, &kv, &mut twin, &mut scratch);
                assert_eq!(bits(&out), bits(&twin), "width {width}, {written} written");
                // Each vector kernel, with the queries also grouped by order (so that they
                // share its tiles).
                let mut grouped: Vec<usize> = (0..queries.len()).collect();
                grouped.sort_by_key(|&i| queries[i].order == F16Order::OneToken);
                let grouped_queries: Vec<Query> = grouped.iter().map(|&i| queries[i]).collect();
                let grouped_weights: Vec<Vec<f32>> =
                    grouped.iter().map(|&i| rounded[i].clone()).collect();
                #[cfg(target_arch = "x86_64")]
                for (isa, kernel) in runnable::<fn(_, _, _, &mut _, &mut _) -> _>(
                    crate::attention_avx2::attend_avx2,
                    crate::attention_avx512::attend_avx512,
                ) {
                    let mut direct = vec![f32::NAN; queries.len() * width];
                    if kernel(&queries, &rounded, &kv, &mut direct, &mut scratch) {
                        assert_eq!(bits(&direct), bits(&twin), "{isa:?} width {width}");
                    }
                    if kernel(
                        &grouped_queries,
                        &grouped_weights,
                        &kv,
                        &mut direct,
                        &mut scratch,
                    ) {
                        for (j, &i) in grouped.iter().enumerate() {
                            let (got, want) =
                                (&direct[j * width..][..width], &twin[i * width..][..width]);
                            assert_eq!(bits(got), bits(want), "{isa:?} grouped, width {width}");
                        }
                    }
                }
                // Columns 16.. of the head on their own: the same bits as in the whole.
                if width > 16 {
                    let narrow = KvHead {
                        offset: kv.offset + 16,
                        head_dim: width - 16,
                        ..kv
                    };
                    let mut part = vec![f32::NAN; queries.len() * (width - 16)];
                    attend(&queries, &rounded, &narrow, &mut part, &mut scratch);
                    let whole: Vec<f32> = out
                        .chunks_exact(width)
                        .flat_map(|o| o[16..].to_vec())
                        .collect();
                    assert_eq!(bits(&part), bits(&whole), "width {width}, columns 16..");
                }

                for (i, query) in queries.iter().enumerate() {
                    // The values' order pads the terms with zero weights to a multiple of 32.
                    let padded = match query.order {
                        F16Order::Batched => query.end,
                        F16Order::OneToken => query.end.next_multiple_of(32),
                    };
                    let weight = |p: usize| match p >= query.base() && p < query.end {
                        true => f16::from_f32(weights[i][p - query.base()]).to_f32(),
                        false => 0.0,
                    };
                    let w: Vec<f32> = (0..padded).map(weight).collect();
                    for d in 0..width {
                        let column: Vec<f32> = (0..padded)
                            .map(|p| match p < query.end {
                                true => kv.value(p, d),
                                false => 0.0,
                            })
                            .collect();
                        let want = dot_f16(query.order, &column, &w);
                        assert_eq!(
                            out[i * width + d].to_bits(),
                            want.to_bits(),
                            "{query:?}, width {width}, column {d}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_two_orders_are_the_documented_ones() {
        // 200 terms of which a few dominate, so that the order shows in the last bits.
        let n = 200;
        let k = f16_values(n, 3);
        let q: Vec<f32> = (0..n)
            .map(|i| if i % 37 == 0 { 1024.0 } else { 819.0 / 8192.0 })
            .collect();
        let terms: Vec<f32> = k.iter().zip(&q).map(|(a, b)| a * b).collect();

        let mut lanes = [0.0f32; 16];
        for (i, t) in terms.iter().enumerate() {
            lanes[i % 16] += t;
        }
        assert_eq!(
            dot_f16(F16Order::Batched, &k, &q),
            crate::dot::tree_sum(lanes)
        );

        let mut slots = [0.0f32; 64];
        for (i, t) in terms[..192].iter().enumerate() {
            slots[i % 64] += t;
        }
        for stride in [32, 16, 8, 4, 2, 1] {
            for i in 0..stride {
                slots[i] += slots[i + stride];
            }
        }
        let tail: f64 = terms[192..]
            .iter()
            .fold(slots[0] as f64, |s, &t| s + t as f64);
        assert_eq!(dot_f16(F16Order::OneToken, &k, &q), tail as f32);
    }
}
