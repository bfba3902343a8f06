//! AVX-512 attention in llama.cpp's orders, over the f16 cache as `attention::KvHead`
//! lays it out. Every operation is the portable order's, with the same operands, so the
//! results equal `attention`'s portable twins bit for bit.
//!
//! Scores, sixteen keys at a time: each key's 16 accumulators fill one register (the
//! one-token order's 64 are first added down to 16, +32 then +16), and the sixteen halving
//! trees (+8, +4, +2, +1) run side by side as shuffles and adds across registers, so a tree
//! costs one add per key instead of four adds and four shuffles. A block's keys are
//! widened once for all the queries of the call.
//!
//! Values, one block (16 positions, one register per column) at a time: the block's lanes
//! are the batched order's 16 accumulators, or one group of the one-token order's 64, so a
//! tile of queries × columns accumulates in registers with one fused multiply-add per
//! block; the trees across lanes run at the end, sixteen columns side by side.

use crate::attention::{
    prefetch, prefetch_keys, AttendScratch, F16Order, KvHead, Query, TileSpan, KEYS_AHEAD, KV_BLOCK,
};

use core::arch::x86_64::*;

fn assert_avx512() {
    assert!(
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("f16c"),
        "AVX-512 kernel called without AVX-512"
    );
}

/// The lanes of the block starting at `at` whose positions are in `from..to`.
#[inline(always)]
fn lanes_in(at: usize, from: usize, to: usize) -> __mmask16 {
    let low = from.saturating_sub(at).min(KV_BLOCK);
    let high = to.saturating_sub(at).min(KV_BLOCK);
    (((1u32 << high) - 1) & !((1u32 << low) - 1)) as __mmask16
}

/// Sixteen f16 values at `p`, widened.
#[inline(always)]
unsafe fn load_f16(p: *const u16) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
}

/// `attention::attention_scores`, or false (and nothing done) for a head size this kernel
/// does not cover: the batched order takes multiples of 16 up to 128 and 256, the
/// one-token order 64, 128 and 256 (no f64 tail).
pub fn scores_avx512(queries: &[Query], kv: &KvHead, scale: f32, scores: &mut [Vec<f32>]) -> bool {
    assert_avx512();
    let width = kv.head_dim;
    if !crate::attention::vector_scores_cover(queries, width) {
        return false;
    }
    // SAFETY: AVX-512F and F16C are available (asserted above); every query holds
    // `width` values (checked above).
    unsafe {
        match width / 16 {
            1 => scores_blocks::<1>(queries, kv, scale, scores),
            2 => scores_blocks::<2>(queries, kv, scale, scores),
            3 => scores_blocks::<3>(queries, kv, scale, scores),
            4 => scores_blocks::<4>(queries, kv, scale, scores),
            5 => scores_blocks::<5>(queries, kv, scale, scores),
            6 => scores_blocks::<6>(queries, kv, scale, scores),
            7 => scores_blocks::<7>(queries, kv, scale, scores),
            8 => scores_blocks::<8>(queries, kv, scale, scores),
            _ => scores_blocks::<16>(queries, kv, scale, scores),
        }
    }
    true
}

/// One key's 16 accumulators against the query (`16 · C` values). One-token order: chunk c
/// goes to slot group c % 4 (of the 64 accumulators), and the groups are added +32, +16.
#[inline(always)]
unsafe fn key_lanes<const C: usize>(key: &[__m512; C], q: &[__m512; C], order: F16Order) -> __m512 {
    let mut acc = [_mm512_setzero_ps(); 4];
    for c in 0..C {
        let slot = match order {
            F16Order::Batched => 0,
            F16Order::OneToken => c % 4,
        };
        acc[slot] = _mm512_fmadd_ps(key[c], q[c], acc[slot]);
    }
    match order {
        F16Order::Batched => acc[0],
        F16Order::OneToken => {
            let (low, high) = (_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]));
            _mm512_add_ps(low, high)
        }
    }
}

/// The key at `k` (`16 · C` values), widened.
#[inline(always)]
unsafe fn load_key<const C: usize>(k: *const u16) -> [__m512; C] {
    let mut key = [_mm512_setzero_ps(); C];
    for (c, chunk) in key.iter_mut().enumerate() {
        *chunk = load_f16(k.add(16 * c));
    }
    key
}

#[target_feature(enable = "avx512f,f16c")]
unsafe fn scores_blocks<const C: usize>(
    queries: &[Query],
    kv: &KvHead,
    scale: f32,
    scores: &mut [Vec<f32>],
) {
    let blocks = crate::attention::start_scores(queries, scores);
    let (first, last) = (blocks.start, blocks.end);
    let scale = _mm512_set1_ps(scale);
    let mut keys = [[_mm512_setzero_ps(); C]; KV_BLOCK];
    for b in first..last.min(first + KEYS_AHEAD) {
        prefetch_keys(kv, b, 16 * C);
    }
    for b in first..last {
        let at = b * KV_BLOCK;
        if b + KEYS_AHEAD < last {
            prefetch_keys(kv, b + KEYS_AHEAD, 16 * C);
        }
        let block = kv.key_block(b).as_ptr();
        // Slots past the sequence's end hold whatever they hold: computed, not stored.
        // One query reads the keys straight from the cache; several, widened once here.
        let staged = queries.len() > 1;
        if staged {
            for (j, key) in keys.iter_mut().enumerate() {
                *key = load_key(block.add(j * kv.kv_dim));
            }
        }
        for (query, scores) in queries.iter().zip(scores.iter_mut()) {
            let base = query.base();
            if at < base || at >= query.end {
                continue;
            }
            let q: [__m512; C] =
                std::array::from_fn(|c| _mm512_loadu_ps(query.q.as_ptr().add(16 * c)));
            let lanes: [__m512; 16] = std::array::from_fn(|j| match staged {
                true => key_lanes(&keys[j], &q, query.order),
                false => key_lanes(&load_key(block.add(j * kv.kv_dim)), &q, query.order),
            });
            let sums = _mm512_mul_ps(tree_sums(&lanes), scale);
            let visible = lanes_in(at, query.first, query.end);
            _mm512_mask_storeu_ps(scores.as_mut_ptr().add(at - base), visible, sums);
        }
    }
}

/// `attention::attend`, or false (and nothing done) for a head size that is not a
/// multiple of 16.
pub fn attend_avx512(
    queries: &[Query],
    weights: &[Vec<f32>],
    kv: &KvHead,
    out: &mut [f32],
    scratch: &mut AttendScratch,
) -> bool {
    assert_avx512();
    let width = kv.head_dim;
    if !width.is_multiple_of(16) {
        return false;
    }
    let mut i = 0;
    while i < queries.len() {
        let order = queries[i].order;
        let most = match order {
            F16Order::Batched => 4,
            F16Order::OneToken => 3,
        };
        let n = queries[i..]
            .iter()
            .take(most)
            .take_while(|q| q.order == order)
            .count();
        let (tile, w) = (&queries[i..i + n], &weights[i..i + n]);
        let groups = order.slot_groups();
        let lanes = &mut scratch.lanes;
        // SAFETY: AVX-512F and F16C are available (asserted above); the head size is a
        // multiple of 16, and so of each tile's column count.
        unsafe {
            match n {
                1 => values_tile::<1, 8>(tile, w, kv, groups, lanes),
                2 => values_tile::<2, 8>(tile, w, kv, groups, lanes),
                3 => values_tile::<3, 8>(tile, w, kv, groups, lanes),
                _ => values_tile::<4, 4>(tile, w, kv, groups, lanes),
            }
        }
        let outs = out[i * width..].chunks_exact_mut(width);
        for (t, ((query, w), out)) in tile.iter().zip(w).zip(outs).enumerate() {
            // SAFETY: as above.
            unsafe { column_trees(&scratch.lanes[t * width * groups..], order, out) };
            crate::attention::add_tail(query, w, kv, out);
        }
        i += n;
    }
    true
}

/// Bytes of values per stretch of `values_tile`: a stretch stays in the L2 cache while
/// every column of the tile passes over it. Long passes keep the accumulators in registers
/// for many blocks (decoding from the cache, 256 KiB stretches ran 1.6× faster than 64 KiB).
const STRETCH_BYTES: usize = 256 << 10;

/// Blocks ahead of the first column pass that it fetches whole, into the L2 cache, for the
/// later passes: the one sweep over the blocks that reads memory in order. Eight is the
/// distance at which one thread read 1 KiB out of every 6 KiB fastest in a standalone test
/// (16 GB/s, against 13 at 16 ahead and 8 with no software prefetch).
const FETCH_AHEAD_BLOCKS: usize = 8;

/// Accumulates queries × columns of `tile` into `lanes` (per query, column and slot group,
/// 16 lanes: `lanes[(i · width + c) · groups + g]`; block b goes to group b % groups), `C`
/// columns and one slot group at a time in registers.
#[target_feature(enable = "avx512f,f16c")]
unsafe fn values_tile<const Q: usize, const C: usize>(
    tile: &[Query],
    weights: &[Vec<f32>],
    kv: &KvHead,
    groups: usize,
    lanes: &mut Vec<[f32; 16]>,
) {
    let width = kv.head_dim;
    lanes.clear();
    lanes.resize(Q * width * groups, [0.0; 16]);
    let TileSpan {
        bases,
        ends,
        weights: w,
        first,
        last,
        written,
        inner,
    } = TileSpan::<Q>::new(tile, weights);
    let block_bytes = width * KV_BLOCK * 2;
    let stretch_blocks = (STRETCH_BYTES / block_bytes)
        .next_multiple_of(groups)
        .max(groups);
    // Stretches start at multiples of `groups` blocks, so that a stretch's blocks g,
    // g + groups, … are slot group g's.
    let mut stretch = first / groups * groups;
    // The blocks the first pass's prefetches do not reach (as `KEYS_AHEAD`).
    for b in first..last.min(first + FETCH_AHEAD_BLOCKS) {
        prefetch(kv.value_block(b).as_ptr(), block_bytes);
    }
    while stretch < last {
        let stretch_end = (stretch + stretch_blocks).min(last);
        for c0 in (0..width).step_by(C) {
            for g in 0..groups {
                let slot = |i: usize, c: usize| (i * width + c0 + c) * groups + g;
                let mut acc = [[_mm512_setzero_ps(); C]; Q];
                for i in 0..Q {
                    for c in 0..C {
                        acc[i][c] = _mm512_loadu_ps(lanes[slot(i, c)].as_ptr());
                    }
                }
                let mut b = stretch + g;
                while b < stretch_end {
                    if b < first {
                        // Before every query's span (`first` mid-round).
                        b += groups;
                        continue;
                    }
                    let at = b * KV_BLOCK;
                    if c0 == 0 && b + FETCH_AHEAD_BLOCKS < last {
                        prefetch(kv.value_block(b + FETCH_AHEAD_BLOCKS).as_ptr(), block_bytes);
                    }
                    let values = kv.value_block(b).as_ptr().add(c0 * KV_BLOCK);
                    let mut wv = [_mm512_setzero_ps(); Q];
                    let mut v = [_mm512_setzero_ps(); C];
                    if at >= inner.0 && at + KV_BLOCK <= inner.1 {
                        // Every lane weighed by every query (most blocks): no masks.
                        for i in 0..Q {
                            wv[i] = _mm512_loadu_ps(w[i].add(at - bases[i]));
                        }
                        for (c, v) in v.iter_mut().enumerate() {
                            *v = load_f16(values.add(c * KV_BLOCK));
                        }
                    } else {
                        for i in 0..Q {
                            // Blocks are aligned, so a block with live lanes starts at or
                            // after the query's base.
                            let live = lanes_in(at, bases[i], ends[i]);
                            if live != 0 {
                                wv[i] = _mm512_maskz_loadu_ps(live, w[i].add(at - bases[i]));
                            }
                        }
                        let live = lanes_in(at, 0, written);
                        for (c, v) in v.iter_mut().enumerate() {
                            *v = _mm512_maskz_mov_ps(live, load_f16(values.add(c * KV_BLOCK)));
                        }
                    }
                    // Fused: the product of two f16 values is exact, so this is the add.
                    for i in 0..Q {
                        for c in 0..C {
                            acc[i][c] = _mm512_fmadd_ps(wv[i], v[c], acc[i][c]);
                        }
                    }
                    b += groups;
                }
                for i in 0..Q {
                    for c in 0..C {
                        _mm512_storeu_ps(lanes[slot(i, c)].as_mut_ptr(), acc[i][c]);
                    }
                }
            }
        }
        stretch = stretch_end;
    }
}

/// One query's outputs from its column accumulators (`values_tile`'s `lanes`, query 0):
/// the one-token order's slot groups added +32, +16, then every column's halving tree
/// over its lanes, sixteen columns at a time.
#[target_feature(enable = "avx512f")]
unsafe fn column_trees(lanes: &[[f32; 16]], order: F16Order, out: &mut [f32]) {
    let groups = order.slot_groups();
    for c0 in (0..out.len()).step_by(16) {
        let columns: [__m512; 16] = std::array::from_fn(|j| {
            let g: [__m512; 4] = std::array::from_fn(|g| match g < groups {
                true => _mm512_loadu_ps(lanes[(c0 + j) * groups + g].as_ptr()),
                false => _mm512_setzero_ps(),
            });
            match order {
                F16Order::Batched => g[0],
                F16Order::OneToken => {
                    _mm512_add_ps(_mm512_add_ps(g[0], g[2]), _mm512_add_ps(g[1], g[3]))
                }
            }
        });
        _mm512_storeu_ps(out.as_mut_ptr().add(c0), tree_sums(&columns));
    }
}

/// Lane j of the result is `dot::tree_sum` of register j.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tree_sums(v: &[__m512; 16]) -> __m512 {
    // +8: keys 2m and 2m+1, eight sums each, share a register.
    let halves: [__m512; 8] = std::array::from_fn(|m| {
        let (a, b) = (v[2 * m], v[2 * m + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        )
    });
    // +4: keys 4m .. 4m+3, four sums each.
    let quarters: [__m512; 4] = std::array::from_fn(|m| {
        let (a, b) = (halves[2 * m], halves[2 * m + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        )
    });
    // +2: 128-bit lane l holds keys l, 4+l (first register) or 8+l, 12+l (second).
    let pairs: [__m512; 2] = std::array::from_fn(|m| {
        let (a, b) = (quarters[2 * m], quarters[2 * m + 1]);
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xEE>(a, b),
        )
    });
    // +1: lane 4l + m holds key l + 4m.
    let (a, b) = (pairs[0], pairs[1]);
    let sums = _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(a, b),
        _mm512_shuffle_ps::<0xDD>(a, b),
    );
    let key_order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    _mm512_permutexvar_ps(key_order, sums)
}

/// `acc[i] = f16(fma(v[i], w, acc[i]))`: the flash order's f16 accumulator update, sixteen
/// values at a time (F16C conversions round to nearest even, as GGML's do).
pub fn mad_f16_avx512(acc: &mut [f32], v: &[f32], w: f32) {
    assert!(
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("f16c"),
        "AVX-512 kernel called without AVX-512"
    );
    // SAFETY: AVX-512F and F16C are available (asserted above).
    unsafe { mad_f16(acc, v, w) }
}

#[target_feature(enable = "avx512f,f16c")]
unsafe fn mad_f16(acc: &mut [f32], v: &[f32], w: f32) {
    let n = acc.len().min(v.len());
    let whole = n / 16 * 16;
    let weight = _mm512_set1_ps(w);
    for i in (0..whole).step_by(16) {
        let a = _mm512_loadu_ps(acc.as_ptr().add(i));
        let x = _mm512_loadu_ps(v.as_ptr().add(i));
        let sum = _mm512_fmadd_ps(x, weight, a);
        let rounded = _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(sum));
        _mm512_storeu_ps(acc.as_mut_ptr().add(i), rounded);
    }
    for i in whole..n {
        acc[i] = crate::round_f16(v[i].mul_add(w, acc[i]));
    }
}
