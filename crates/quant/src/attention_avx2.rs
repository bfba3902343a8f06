//! AVX2 attention in llama.cpp's orders, over the f16 cache as `attention::KvHead` lays it
//! out: `attention_avx512`'s kernels with 8-lane registers. The 16 accumulators of the
//! batched order (and each slot group of the one-token order's 64) are a pair of
//! registers, low lanes 0–7 and high lanes 8–15, so every operation is still the portable
//! order's, with the same operands, and the results equal `attention`'s portable twins
//! bit for bit.
//!
//! Scores, eight keys at a time: a key's pair is added (+8) into one register, and the
//! eight remaining halving trees (+4, +2, +1) run side by side as shuffles and adds across
//! registers. Values, one block (16 positions, a pair per column) at a time: a tile of
//! queries × columns accumulates in registers with one fused multiply-add per register,
//! and the trees across lanes run at the end, eight columns side by side.

use crate::attention::{
    prefetch, prefetch_keys, AttendScratch, F16Order, KvHead, Query, TileSpan, KEYS_AHEAD, KV_BLOCK,
};

use core::arch::x86_64::*;
use std::ops::Range;

fn assert_avx2() {
    assert!(
        crate::Isa::Avx2.is_available() && std::is_x86_feature_detected!("f16c"),
        "AVX2 kernel called without AVX2, FMA and F16C"
    );
}

/// Sixteen lanes: positions (or terms) 0–7 and 8–15.
type Pair = [__m256; 2];

/// The lanes of the block starting at `at` whose positions are in `from..to`, as masks
/// (all ones where live).
#[inline(always)]
unsafe fn lanes_in(at: usize, from: usize, to: usize) -> [__m256i; 2] {
    let low = _mm256_set1_epi32(from.saturating_sub(at).min(KV_BLOCK) as i32);
    let high = _mm256_set1_epi32(to.saturating_sub(at).min(KV_BLOCK) as i32);
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let live = |lane: __m256i| {
        _mm256_andnot_si256(
            _mm256_cmpgt_epi32(low, lane),
            _mm256_cmpgt_epi32(high, lane),
        )
    };
    [
        live(lane),
        live(_mm256_add_epi32(lane, _mm256_set1_epi32(8))),
    ]
}

#[inline(always)]
unsafe fn any_live(mask: &[__m256i; 2]) -> bool {
    _mm256_testz_si256(_mm256_or_si256(mask[0], mask[1]), _mm256_set1_epi32(-1)) == 0
}

/// Eight f16 values at `p`, widened.
#[inline(always)]
unsafe fn load_f16(p: *const u16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// Sixteen f16 values at `p`, widened.
#[inline(always)]
unsafe fn load_pair_f16(p: *const u16) -> Pair {
    [load_f16(p), load_f16(p.add(8))]
}

/// `attention::attention_scores`, or false (and nothing done) for a head size this kernel
/// does not cover: the batched order takes multiples of 16 up to 128 and 256, the
/// one-token order 64, 128 and 256 (no f64 tail).
pub fn scores_avx2(queries: &[Query], kv: &KvHead, scale: f32, scores: &mut [Vec<f32>]) -> bool {
    assert_avx2();
    let width = kv.head_dim;
    if !crate::attention::vector_scores_cover(queries, width) {
        return false;
    }
    // SAFETY: AVX2, FMA and F16C are available (asserted above); every query holds
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

/// One key's 16 accumulators against the query (`16 · C` values), added +8 into one
/// register. One-token order: chunk c goes to slot group c % 4 (of the 64 accumulators),
/// and the groups are added +32, +16 first. `ONE_TOKEN` is a constant so that every
/// accumulator is a register.
#[inline(always)]
unsafe fn key_lanes<const C: usize, const ONE_TOKEN: bool>(
    key: &[Pair; C],
    q: &[Pair; C],
) -> __m256 {
    _mm256_add_ps(
        half_lanes::<C, ONE_TOKEN>(key, q, 0),
        half_lanes::<C, ONE_TOKEN>(key, q, 1),
    )
}

/// `key_lanes`' accumulators of half `h` (lanes 8h..8h + 8), the groups added.
#[inline(always)]
unsafe fn half_lanes<const C: usize, const ONE_TOKEN: bool>(
    key: &[Pair; C],
    q: &[Pair; C],
    h: usize,
) -> __m256 {
    match ONE_TOKEN {
        false => group_lanes::<C, 1>(key, q, 0, h),
        true => _mm256_add_ps(
            _mm256_add_ps(
                group_lanes::<C, 4>(key, q, 0, h),
                group_lanes::<C, 4>(key, q, 2, h),
            ),
            _mm256_add_ps(
                group_lanes::<C, 4>(key, q, 1, h),
                group_lanes::<C, 4>(key, q, 3, h),
            ),
        ),
    }
}

/// The accumulators of slot group `g` of `GROUPS`, half `h`: chunks g, g + GROUPS, ….
#[inline(always)]
unsafe fn group_lanes<const C: usize, const GROUPS: usize>(
    key: &[Pair; C],
    q: &[Pair; C],
    g: usize,
    h: usize,
) -> __m256 {
    let mut acc = _mm256_setzero_ps();
    let mut c = g;
    while c < C {
        acc = _mm256_fmadd_ps(key[c][h], q[c][h], acc);
        c += GROUPS;
    }
    acc
}

/// One query's scores of the eight keys `j0..j0 + 8` of a block: from `keys` when staged,
/// else widened from the cache at `block`.
#[inline(always)]
unsafe fn eight_scores<const C: usize, const ONE_TOKEN: bool>(
    keys: Option<&[[Pair; C]; KV_BLOCK]>,
    block: *const u16,
    kv_dim: usize,
    j0: usize,
    q: &[Pair; C],
) -> __m256 {
    let lanes: [__m256; 8] = std::array::from_fn(|j| match keys {
        Some(keys) => key_lanes::<C, ONE_TOKEN>(&keys[j0 + j], q),
        None => key_lanes::<C, ONE_TOKEN>(&load_key(block.add((j0 + j) * kv_dim)), q),
    });
    tree_sums(&lanes)
}

/// The key at `k` (`16 · C` values), widened.
#[inline(always)]
unsafe fn load_key<const C: usize>(k: *const u16) -> [Pair; C] {
    std::array::from_fn(|c| load_pair_f16(k.add(16 * c)))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_blocks<const C: usize>(
    queries: &[Query],
    kv: &KvHead,
    scale: f32,
    scores: &mut [Vec<f32>],
) {
    let blocks = crate::attention::start_scores(queries, scores);
    let (first, last) = (blocks.start, blocks.end);
    let scale = _mm256_set1_ps(scale);
    let mut keys = [[[_mm256_setzero_ps(); 2]; C]; KV_BLOCK];
    // One query reads the keys straight from the cache; several, widened once per block.
    let staged = queries.len() > 1;
    for b in first..last {
        let at = b * KV_BLOCK;
        if b + KEYS_AHEAD < last {
            prefetch_keys(kv, b + KEYS_AHEAD, 16 * C);
        }
        // Slots past the sequence's end hold whatever they hold: computed, not stored.
        let block = kv.key_block(b).as_ptr();
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
            let q: [Pair; C] = std::array::from_fn(|c| {
                let p = query.q.as_ptr().add(16 * c);
                [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))]
            });
            let visible = lanes_in(at, query.first, query.end);
            let staged_keys = staged.then_some(&keys);
            for (half, mask) in visible.iter().enumerate() {
                let j0 = 8 * half;
                let sums = match query.order {
                    F16Order::Batched => {
                        eight_scores::<C, false>(staged_keys, block, kv.kv_dim, j0, &q)
                    }
                    F16Order::OneToken => {
                        eight_scores::<C, true>(staged_keys, block, kv.kv_dim, j0, &q)
                    }
                };
                let sums = _mm256_mul_ps(sums, scale);
                let to = scores.as_mut_ptr().add(at - base + 8 * half);
                // Masked stores are microcoded and slow on AMD's cores: a plain store
                // where all eight are visible (every block but the first and last).
                if _mm256_movemask_ps(_mm256_castsi256_ps(*mask)) == 0xff {
                    _mm256_storeu_ps(to, sums);
                } else {
                    let sums = std::mem::transmute::<__m256, [f32; 8]>(sums);
                    let live = std::mem::transmute::<__m256i, [i32; 8]>(*mask);
                    for l in (0..8).filter(|&l| live[l] != 0) {
                        *to.add(l) = sums[l];
                    }
                }
            }
        }
    }
}

/// `attention::attend`, or false (and nothing done) for a head size that is not a
/// multiple of 16.
pub fn attend_avx2(
    queries: &[Query],
    weights: &[Vec<f32>],
    kv: &KvHead,
    out: &mut [f32],
    scratch: &mut AttendScratch,
) -> bool {
    assert_avx2();
    let width = kv.head_dim;
    if !width.is_multiple_of(16) {
        return false;
    }
    // Tiles of up to three consecutive queries of one order, and where each query's
    // accumulators start in `lanes` (width · its order's slot groups).
    let mut tiles = Vec::new();
    let mut i = 0;
    while i < queries.len() {
        let order = queries[i].order;
        let n = queries[i..]
            .iter()
            .take(3)
            .take_while(|q| q.order == order)
            .count();
        tiles.push(i..i + n);
        i += n;
    }
    let starts: Vec<usize> = queries
        .iter()
        .scan(0, |at, q| {
            let start = *at;
            *at += width * q.order.slot_groups();
            Some(start)
        })
        .collect();
    let total = queries.last().map_or(0, |q| {
        starts[queries.len() - 1] + width * q.order.slot_groups()
    });
    scratch.lanes.clear();
    scratch.lanes.resize(total, [0.0; 16]);
    // SAFETY: AVX2, FMA and F16C are available (asserted above); the head size is a
    // multiple of 16, and so of each tile's column count.
    unsafe { weighted_values(queries, weights, kv, &tiles, &starts, scratch) };
    for (i, ((query, w), out)) in queries
        .iter()
        .zip(weights)
        .zip(out.chunks_exact_mut(width))
        .enumerate()
    {
        // SAFETY: as above.
        unsafe { column_trees(&scratch.lanes[starts[i]..], query.order, out) };
        crate::attention::add_tail(query, w, kv, out);
    }
    true
}

/// Bytes of values per stretch. Each stretch is copied side by side once, then every
/// tile's column passes read it: in the pool, a head's part of consecutive blocks lies
/// `kv_dim · 32` bytes apart, a stride that maps every block to the same few L1 sets.
/// A stretch stays in the L2 cache, and long passes keep the accumulators in registers
/// for many blocks (Zen 1, `cargo bench -p quant --bench attention`, prompt values:
/// 7.5 G multiply-adds/s with 16 KiB stretches, 9.5 with 256 KiB).
const STRETCH_BYTES: usize = 256 << 10;

/// The one-token order's slot groups: stretches start at multiples of it, so that a
/// stretch's blocks g, g + groups, … are slot group g's in either order.
const MOST_GROUPS: usize = 4;

/// Accumulates every tile's queries × columns into `scratch.lanes` (query i's column c,
/// slot group g at `lanes[starts[i] + c · groups + g]`), stretch by stretch.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_values(
    queries: &[Query],
    weights: &[Vec<f32>],
    kv: &KvHead,
    tiles: &[Range<usize>],
    starts: &[usize],
    scratch: &mut AttendScratch,
) {
    let AttendScratch {
        lanes,
        stretch: staged,
        ..
    } = scratch;
    let block_values = kv.head_dim * KV_BLOCK;
    let first = queries.iter().map(|q| q.base() / KV_BLOCK).min();
    let last = queries
        .iter()
        .map(|q| q.vector_end().div_ceil(KV_BLOCK))
        .max();
    let (first, last) = (first.unwrap_or(0), last.unwrap_or(0));
    let stretch_blocks = (STRETCH_BYTES / (2 * block_values))
        .next_multiple_of(MOST_GROUPS)
        .max(MOST_GROUPS);
    staged.resize(stretch_blocks * block_values, 0);
    let mut stretch = first / MOST_GROUPS * MOST_GROUPS;
    while stretch < last {
        let stretch_end = (stretch + stretch_blocks).min(last);
        for b in stretch.max(first)..stretch_end {
            let from = kv.value_block(b);
            staged[(b - stretch) * block_values..][..block_values].copy_from_slice(from);
            // The next stretch's block in the same place, on its way meanwhile.
            if b + stretch_blocks < last {
                prefetch(
                    kv.value_block(b + stretch_blocks).as_ptr(),
                    2 * block_values,
                );
            }
        }
        let blocks = stretch..stretch_end;
        for tile in tiles {
            let (q, w) = (&queries[tile.clone()], &weights[tile.clone()]);
            let lanes = &mut lanes[starts[tile.start]..];
            let groups = q[0].order.slot_groups();
            // Three queries × one column: six accumulators, enough chains of fused
            // multiply-adds to keep both units busy (three × two spilled registers).
            let width = kv.head_dim;
            match (q.len(), groups) {
                (1, _) => values_tile::<1, 4>(q, w, width, groups, &blocks, staged, lanes),
                (2, _) => values_tile::<2, 2>(q, w, width, groups, &blocks, staged, lanes),
                _ => values_tile::<3, 1>(q, w, width, groups, &blocks, staged, lanes),
            }
        }
        stretch = stretch_end;
    }
}

/// Adds blocks `blocks` (their values copied to `staged`, side by side) into the
/// accumulators of `tile`'s queries × columns (`lanes`: query i's column c, slot group
/// g at `(i · width + c) · groups + g`; block b goes to group b % groups), `C` columns
/// and one slot group at a time in registers.
#[inline(always)]
unsafe fn values_tile<const Q: usize, const C: usize>(
    tile: &[Query],
    weights: &[Vec<f32>],
    width: usize,
    groups: usize,
    blocks: &Range<usize>,
    staged: &[u16],
    lanes: &mut [[f32; 16]],
) {
    let TileSpan {
        bases,
        ends,
        weights: w,
        first,
        last,
        written,
        inner,
    } = TileSpan::<Q>::new(tile, weights);
    let (from, to) = (blocks.start.max(first), blocks.end.min(last));
    if from >= to {
        return;
    }
    let block_values = width * KV_BLOCK;
    // Blocks every query weighs whole (no masks): `inner_first..inner_end`.
    let inner_first = inner.0.div_ceil(KV_BLOCK);
    let inner_end = (inner.1 / KV_BLOCK).max(inner_first);
    for c0 in (0..width).step_by(C) {
        for g in 0..groups {
            let slot = |i: usize, c: usize| (i * width + c0 + c) * groups + g;
            let mut acc = [[[_mm256_setzero_ps(); 2]; C]; Q];
            for i in 0..Q {
                for c in 0..C {
                    let at = lanes[slot(i, c)].as_ptr();
                    acc[i][c] = [_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8))];
                }
            }
            let values = |b: usize| {
                staged
                    .as_ptr()
                    .add((b - blocks.start) * block_values + c0 * KV_BLOCK)
            };
            // Group g's blocks (b ≡ g mod groups) from `from` on: masked ones before the
            // inner blocks, the inner ones without a test, masked ones after.
            let mut b = from + (g + groups - from % groups) % groups;
            while b < to && b < inner_first {
                masked_block(
                    &mut acc,
                    values(b),
                    b * KV_BLOCK,
                    &bases,
                    &ends,
                    &w,
                    written,
                );
                b += groups;
            }
            let fast_end = to.min(inner_end);
            if b < fast_end {
                let mut wp: [*const f32; Q] =
                    std::array::from_fn(|i| w[i].add(b * KV_BLOCK - bases[i]));
                let mut vp = values(b);
                let (w_step, v_step) = (groups * KV_BLOCK, groups * block_values);
                while b < fast_end {
                    add_half_block(&mut acc, &wp, vp, 0);
                    add_half_block(&mut acc, &wp, vp, 1);
                    for p in wp.iter_mut() {
                        *p = p.add(w_step);
                    }
                    vp = vp.add(v_step);
                    b += groups;
                }
            }
            while b < to {
                masked_block(
                    &mut acc,
                    values(b),
                    b * KV_BLOCK,
                    &bases,
                    &ends,
                    &w,
                    written,
                );
                b += groups;
            }
            for i in 0..Q {
                for c in 0..C {
                    let at = lanes[slot(i, c)].as_mut_ptr();
                    _mm256_storeu_ps(at, acc[i][c][0]);
                    _mm256_storeu_ps(at.add(8), acc[i][c][1]);
                }
            }
        }
    }
}

/// `acc[i][c] += weights[i] · values[c]`, lane by lane. Fused: the product of two f16
/// values is exact, so this is the add.
#[inline(always)]
unsafe fn add_products<const Q: usize, const C: usize>(
    acc: &mut [[Pair; C]; Q],
    weights: &[Pair; Q],
    values: &[Pair; C],
) {
    for i in 0..Q {
        for c in 0..C {
            for h in 0..2 {
                acc[i][c][h] = _mm256_fmadd_ps(weights[i][h], values[c][h], acc[i][c][h]);
            }
        }
    }
}

/// `add_products` for half `h` (lanes 8h..8h + 8) of a block read in place: query i's
/// weights at `weights[i]`, column c's values at `values + 16c`. Half a block at a time
/// holds one half's values and the accumulators in the sixteen registers, each weight read
/// by its multiply-add; whole blocks spilled (prompt values ran at half the speed).
#[inline(always)]
unsafe fn add_half_block<const Q: usize, const C: usize>(
    acc: &mut [[Pair; C]; Q],
    weights: &[*const f32; Q],
    values: *const u16,
    h: usize,
) {
    let v: [__m256; C] = std::array::from_fn(|c| load_f16(values.add(c * KV_BLOCK + 8 * h)));
    for (acc, w) in acc.iter_mut().zip(weights) {
        let w = _mm256_loadu_ps(w.add(8 * h));
        for (acc, v) in acc.iter_mut().zip(&v) {
            acc[h] = _mm256_fmadd_ps(w, *v, acc[h]);
        }
    }
}

/// Adds the block of values at `values` (positions `at..at + 16`) with each query's
/// weights where it weighs them (lanes in `bases[i]..ends[i]`), and zeros for lanes past
/// `written` (they may hold another sequence's values).
#[inline(always)]
unsafe fn masked_block<const Q: usize, const C: usize>(
    acc: &mut [[Pair; C]; Q],
    values: *const u16,
    at: usize,
    bases: &[usize; Q],
    ends: &[usize; Q],
    w: &[*const f32; Q],
    written: usize,
) {
    let mut wv = [[_mm256_setzero_ps(); 2]; Q];
    for i in 0..Q {
        // Blocks are aligned, so a block with live lanes starts at or after the query's
        // base.
        let live = lanes_in(at, bases[i], ends[i]);
        if any_live(&live) {
            let p = w[i].add(at - bases[i]);
            wv[i] = [
                _mm256_maskload_ps(p, live[0]),
                _mm256_maskload_ps(p.add(8), live[1]),
            ];
        }
    }
    let live = lanes_in(at, 0, written);
    let v: [Pair; C] = std::array::from_fn(|c| {
        let loaded = load_pair_f16(values.add(c * KV_BLOCK));
        [
            _mm256_and_ps(loaded[0], _mm256_castsi256_ps(live[0])),
            _mm256_and_ps(loaded[1], _mm256_castsi256_ps(live[1])),
        ]
    });
    add_products(acc, &wv, &v);
}

/// One query's outputs from its column accumulators (`values_tile`'s `lanes`, query 0):
/// the one-token order's slot groups added +32, +16, then every column's halving tree
/// over its lanes, eight columns at a time.
#[target_feature(enable = "avx2,fma")]
unsafe fn column_trees(lanes: &[[f32; 16]], order: F16Order, out: &mut [f32]) {
    let groups = order.slot_groups();
    for c0 in (0..out.len()).step_by(8) {
        let columns: [__m256; 8] = std::array::from_fn(|j| {
            let load = |g: usize, h: usize| match g < groups {
                true => _mm256_loadu_ps(lanes[(c0 + j) * groups + g].as_ptr().add(8 * h)),
                false => _mm256_setzero_ps(),
            };
            let half = |h: usize| match order {
                F16Order::Batched => load(0, h),
                F16Order::OneToken => _mm256_add_ps(
                    _mm256_add_ps(load(0, h), load(2, h)),
                    _mm256_add_ps(load(1, h), load(3, h)),
                ),
            };
            _mm256_add_ps(half(0), half(1))
        });
        _mm256_storeu_ps(out.as_mut_ptr().add(c0), tree_sums(&columns));
    }
}

/// Lane j of the result is the halving tree (+4, +2, +1) of register j's 8 lanes: with
/// the +8 of a pair done before, `dot::tree_sum` of its 16.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn tree_sums(v: &[__m256; 8]) -> __m256 {
    // +4: registers 2m and 2m+1, four sums each, share a register (one per 128-bit half).
    let halves: [__m256; 4] = std::array::from_fn(|m| {
        let (a, b) = (v[2 * m], v[2 * m + 1]);
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(a, b),
            _mm256_permute2f128_ps::<0x31>(a, b),
        )
    });
    // +2: the low half holds registers 4m and 4m+2, the high half 4m+1 and 4m+3.
    let pairs: [__m256; 2] = std::array::from_fn(|m| {
        let (a, b) = (halves[2 * m], halves[2 * m + 1]);
        _mm256_add_ps(
            _mm256_shuffle_ps::<0x44>(a, b),
            _mm256_shuffle_ps::<0xEE>(a, b),
        )
    });
    // +1: lanes hold registers 0, 2, 4, 6, 1, 3, 5, 7.
    let (a, b) = (pairs[0], pairs[1]);
    let sums = _mm256_add_ps(
        _mm256_shuffle_ps::<0x88>(a, b),
        _mm256_shuffle_ps::<0xDD>(a, b),
    );
    _mm256_permutevar8x32_ps(sums, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// `acc[i] = f16(fma(v[i], w, acc[i]))`: the flash order's f16 accumulator update, eight
/// values at a time (F16C conversions round to nearest even, as GGML's do).
pub fn mad_f16_avx2(acc: &mut [f32], v: &[f32], w: f32) {
    assert_avx2();
    // SAFETY: AVX2, FMA and F16C are available (asserted above).
    unsafe { mad_f16(acc, v, w) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mad_f16(acc: &mut [f32], v: &[f32], w: f32) {
    let n = acc.len().min(v.len());
    let whole = n / 8 * 8;
    let weight = _mm256_set1_ps(w);
    for i in (0..whole).step_by(8) {
        let a = _mm256_loadu_ps(acc.as_ptr().add(i));
        let x = _mm256_loadu_ps(v.as_ptr().add(i));
        let sum = _mm256_fmadd_ps(x, weight, a);
        let rounded = _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(sum));
        _mm256_storeu_ps(acc.as_mut_ptr().add(i), rounded);
    }
    for i in whole..n {
        acc[i] = crate::round_f16(v[i].mul_add(w, acc[i]));
    }
}
