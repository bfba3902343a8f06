//! AVX2 attention over a quantized KV cache (`attention_quantized`), giving its portable
//! twins' bits. Scores, eight positions at a time: per block of 32 columns, each key's
//! integer dot product with the Q8_0 query (`vpmaddubsw`, exact), the eight sums side by
//! side, then one scale multiply and one fused multiply-add for the eight. Values: a
//! tile of up to three queries × one block of 32 columns accumulates in registers,
//! position by position, each position's codes widened once for the tile.

use crate::attention::{Query, KV_BLOCK};
use crate::attention_quantized::{quantize_queries, start_scores, KvQuant, QuantizedKvHead};
use crate::legacy::QK;
use core::arch::x86_64::*;

fn assert_avx2() {
    assert!(
        crate::Isa::Avx2.is_available() && std::is_x86_feature_detected!("f16c"),
        "AVX2 kernel called without AVX2, FMA and F16C"
    );
}

/// `attention_quantized::quantized_scores` (the caller checked the shapes).
pub fn scores_avx2(
    queries: &[Query],
    kv: &QuantizedKvHead,
    scale: f32,
    scores: &mut [Vec<f32>],
    scratch: &mut Vec<u8>,
) {
    assert_avx2();
    // SAFETY: AVX2, FMA and F16C are available (asserted above).
    unsafe { scores_kernel(queries, kv, scale, scores, scratch) }
}

/// The 32 codes of the block at `block`, as bytes in column order.
#[inline(always)]
unsafe fn load_codes(quant: KvQuant, block: *const u8) -> __m256i {
    match quant {
        KvQuant::Q8_0 => _mm256_loadu_si256(block.add(2) as *const __m256i),
        KvQuant::Q4_0 => {
            let packed = _mm_loadu_si128(block.add(2) as *const __m128i);
            let nibbles = _mm_set1_epi8(0x0f);
            let low = _mm_and_si128(packed, nibbles);
            let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), nibbles);
            _mm256_sub_epi8(_mm256_set_m128i(high, low), _mm256_set1_epi8(8))
        }
    }
}

/// The block's scale.
#[inline(always)]
unsafe fn scale_of(block: *const u8) -> f32 {
    crate::f16_bits_to_f32(u16::from_le_bytes([*block, *block.add(1)]))
}

/// Pool blocks read this far ahead are asked for (memory latency is hundreds of cycles;
/// a pool block of 16 positions takes tens).
const AHEAD: usize = 8;

/// Asks for the lines holding bytes `at..at + bytes` of each of the 16 rows of the
/// sequence's block `block`, into the L2 cache (as `attention::prefetch`, for the same
/// reason: from memory, 1.35× faster than into the L1).
#[inline(always)]
unsafe fn prefetch_rows(kv: &QuantizedKvHead, block: usize, at: usize, bytes: usize) {
    let rows = kv.blocks[block] as usize * KV_BLOCK * kv.row_bytes + at;
    for j in 0..KV_BLOCK {
        let row = kv.data.as_ptr().add(rows + j * kv.row_bytes) as *const i8;
        // One every 64 bytes and one at the last byte: every line the bytes touch.
        for at in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T1>(row.add(at));
        }
        _mm_prefetch::<_MM_HINT_T1>(row.add(bytes - 1));
    }
}

/// Σ k[j]·q[j] over 32 signed codes, as eight partial sums (exact: |codes| ≤ 127).
#[inline(always)]
unsafe fn dot_codes(k: __m256i, q: __m256i) -> __m256i {
    let products = _mm256_maddubs_epi16(_mm256_sign_epi8(k, k), _mm256_sign_epi8(q, k));
    _mm256_madd_epi16(products, _mm256_set1_epi16(1))
}

/// Lane j: the sum of register j's eight lanes.
#[inline(always)]
unsafe fn lane_sums(v: &[__m256i; 8]) -> __m256i {
    let low = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    let high = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(low, high),
        _mm256_permute2x128_si256::<0x31>(low, high),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_kernel(
    queries: &[Query],
    kv: &QuantizedKvHead,
    scale: f32,
    scores: &mut [Vec<f32>],
    scratch: &mut Vec<u8>,
) {
    let positions = start_scores(queries, scores);
    quantize_queries(queries, kv.head_dim, scratch);
    let size = kv.quant.block_bytes();
    let blocks = kv.head_dim / QK;
    let per_query = blocks * 34;
    let head = kv.offset / QK * size;
    let query_scales: Vec<f32> = scratch
        .chunks_exact(34)
        .map(|block| scale_of(block.as_ptr()))
        .collect();
    let mut key_scales = vec![_mm256_setzero_ps(); blocks];
    let scale = _mm256_set1_ps(scale);
    let eighths = positions.start / 8..positions.end.div_ceil(8);
    for eighth in eighths {
        let p0 = 8 * eighth;
        let slot = kv.blocks[p0 / KV_BLOCK] as usize * KV_BLOCK + p0 % KV_BLOCK;
        // Slots past the sequence's end hold whatever they hold: computed, not stored
        // (every lane's arithmetic is its own).
        let keys = kv.data.as_ptr().add(slot * kv.row_bytes + head);
        if p0 % KV_BLOCK == 0 && p0 + AHEAD * KV_BLOCK < positions.end {
            prefetch_rows(kv, p0 / KV_BLOCK + AHEAD, head, blocks * size);
        }
        // The eight keys' scales, block by block, for every query.
        for (b, dk) in key_scales.iter_mut().enumerate() {
            let bits: [u16; 8] = std::array::from_fn(|j| {
                let key = keys.add(j * kv.row_bytes + b * size);
                u16::from_le_bytes([*key, *key.add(1)])
            });
            *dk = _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr() as *const __m128i));
        }
        for (i, (query, scores)) in queries.iter().zip(scores.iter_mut()).enumerate() {
            let (from, to) = (query.first.max(p0), query.end.min(p0 + 8));
            if from >= to {
                continue;
            }
            let q = scratch.as_ptr().add(i * per_query);
            let mut acc = _mm256_setzero_ps();
            for (b, dk) in key_scales.iter().enumerate() {
                let codes = _mm256_loadu_si256(q.add(b * 34 + 2) as *const __m256i);
                let sums: [__m256i; 8] = std::array::from_fn(|j| {
                    let key = keys.add(j * kv.row_bytes + b * size);
                    dot_codes(load_codes(kv.quant, key), codes)
                });
                let isum = _mm256_cvtepi32_ps(lane_sums(&sums));
                let t = _mm256_mul_ps(*dk, _mm256_set1_ps(query_scales[i * blocks + b]));
                acc = _mm256_fmadd_ps(t, isum, acc);
            }
            let lanes: [f32; 8] = std::mem::transmute(_mm256_mul_ps(acc, scale));
            let base = query.base();
            scores[from - base..to - base].copy_from_slice(&lanes[from - p0..to - p0]);
        }
    }
}

/// `attention_quantized::quantized_attend` (the caller checked the shapes).
pub fn attend_avx2(queries: &[Query], weights: &[Vec<f32>], kv: &QuantizedKvHead, out: &mut [f32]) {
    assert_avx2();
    let width = kv.head_dim;
    out.fill(0.0);
    let first = queries
        .iter()
        .map(|q| q.first / KV_BLOCK)
        .min()
        .unwrap_or(0);
    let end = queries
        .iter()
        .map(|q| q.end.div_ceil(KV_BLOCK))
        .max()
        .unwrap_or(0);
    // Stretch by stretch, so that a stretch's rows stay in the L1 cache while every tile
    // of queries reads them.
    for start in (first..end).step_by(STRETCH_BLOCKS) {
        let stretch = start..(start + STRETCH_BLOCKS).min(end);
        for (i, tile) in queries.chunks(3).enumerate() {
            let (w, out) = (
                &weights[3 * i..],
                &mut out[3 * i * width..][..tile.len() * width],
            );
            // SAFETY: AVX2, FMA and F16C are available (asserted above).
            unsafe {
                match tile.len() {
                    1 => values_tile::<1>(tile, w, kv, &stretch, out),
                    2 => values_tile::<2>(tile, w, kv, &stretch, out),
                    _ => values_tile::<3>(tile, w, kv, &stretch, out),
                }
            }
        }
    }
}

/// Pool blocks of 16 positions per stretch of `attend_avx2`.
const STRETCH_BLOCKS: usize = 8;

/// Sixteen of the 32 codes of the block at `block` (columns `16 · half..`), widened.
#[inline(always)]
unsafe fn widen_codes(quant: KvQuant, block: *const u8, half: usize) -> [__m256; 2] {
    let bytes: [__m128i; 2] = match quant {
        KvQuant::Q8_0 => {
            let at = block.add(2 + 16 * half);
            [
                _mm_loadl_epi64(at as *const __m128i),
                _mm_loadl_epi64(at.add(8) as *const __m128i),
            ]
        }
        KvQuant::Q4_0 => {
            let packed = _mm_loadu_si128(block.add(2) as *const __m128i);
            let nibbles = match half {
                0 => _mm_and_si128(packed, _mm_set1_epi8(0x0f)),
                _ => _mm_and_si128(_mm_srli_epi16::<4>(packed), _mm_set1_epi8(0x0f)),
            };
            let codes = _mm_sub_epi8(nibbles, _mm_set1_epi8(8));
            [codes, _mm_srli_si128::<8>(codes)]
        }
    };
    bytes.map(|eight| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(eight)))
}

/// Adds the position at `row` (lane j of the block) into the accumulators of the queries
/// that weigh it.
#[inline(always)]
unsafe fn add_position<const Q: usize>(
    quant: KvQuant,
    row: *const u8,
    s: &[[f32; KV_BLOCK]; Q],
    j: usize,
    acc: &mut [[__m256; 4]; Q],
    weighs: [bool; Q],
) {
    for half in 0..2 {
        let x = widen_codes(quant, row, half);
        for i in 0..Q {
            if weighs[i] {
                let w = _mm256_broadcast_ss(&s[i][j]);
                acc[i][2 * half] = _mm256_fmadd_ps(w, x[0], acc[i][2 * half]);
                acc[i][2 * half + 1] = _mm256_fmadd_ps(w, x[1], acc[i][2 * half + 1]);
            }
        }
    }
}

/// Adds the sequence's blocks `stretch` into `Q` queries' outputs `out`, one block of 32
/// columns at a time in registers.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn values_tile<const Q: usize>(
    tile: &[Query],
    weights: &[Vec<f32>],
    kv: &QuantizedKvHead,
    stretch: &std::ops::Range<usize>,
    out: &mut [f32],
) {
    let width = kv.head_dim;
    let size = kv.quant.block_bytes();
    let head = kv.offset / QK * size;
    let first = tile.iter().map(|q| q.first).min().unwrap_or(0);
    let end = tile.iter().map(|q| q.end).max().unwrap_or(0);
    let spans: [(usize, usize, usize); Q] =
        std::array::from_fn(|i| (tile[i].first, tile[i].end, tile[i].base()));
    // Blocks every query weighs whole: no per-position checks.
    let inner = (
        spans.iter().map(|s| s.0).max().unwrap_or(0),
        spans.iter().map(|s| s.1).min().unwrap_or(0),
    );
    let sequence_blocks = end.div_ceil(KV_BLOCK);
    let blocks = stretch.start.max(first / KV_BLOCK)..stretch.end.min(sequence_blocks);
    if blocks.is_empty() {
        return;
    }
    for b in 0..width / QK {
        let at = head + b * size;
        let acc_at = |i: usize, k: usize| i * width + b * QK + 8 * k;
        let mut acc: [[__m256; 4]; Q] = std::array::from_fn(|i| {
            std::array::from_fn(|k| _mm256_loadu_ps(out.as_ptr().add(acc_at(i, k))))
        });
        for block in blocks.clone() {
            if block + AHEAD < sequence_blocks {
                prefetch_rows(kv, block + AHEAD, at, size);
            }
            let rows = kv
                .data
                .as_ptr()
                .add(kv.blocks[block] as usize * KV_BLOCK * kv.row_bytes + at);
            // The 16 positions' scales (a slot past the sequence's end holds whatever it
            // holds: its scale is never used).
            let bits: [u16; KV_BLOCK] = std::array::from_fn(|j| {
                let row = rows.add(j * kv.row_bytes);
                u16::from_le_bytes([*row, *row.add(1)])
            });
            let scales: [__m256; 2] = std::array::from_fn(|h| {
                _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr().add(8 * h) as *const __m128i))
            });
            let p0 = block * KV_BLOCK;
            // Each query's w_p · d_p for the block's positions it weighs.
            let mut s = [[0.0f32; KV_BLOCK]; Q];
            let whole = p0 >= inner.0 && p0 + KV_BLOCK <= inner.1;
            for (i, &(from, to, base)) in spans.iter().enumerate() {
                if whole {
                    for (h, scales) in scales.iter().enumerate() {
                        let w = _mm256_loadu_ps(weights[i].as_ptr().add(p0 + 8 * h - base));
                        let product = _mm256_mul_ps(w, *scales);
                        _mm256_storeu_ps(s[i].as_mut_ptr().add(8 * h), product);
                    }
                } else {
                    let d: [f32; KV_BLOCK] = std::mem::transmute(scales);
                    for p in p0.max(from)..(p0 + KV_BLOCK).min(to) {
                        s[i][p - p0] = weights[i][p - base] * d[p - p0];
                    }
                }
            }
            if whole {
                for j in 0..KV_BLOCK {
                    let row = rows.add(j * kv.row_bytes);
                    add_position(kv.quant, row, &s, j, &mut acc, [true; Q]);
                }
            } else {
                for p in p0.max(first)..(p0 + KV_BLOCK).min(end) {
                    let row = rows.add((p - p0) * kv.row_bytes);
                    let weighs = spans.map(|(from, to, _)| p >= from && p < to);
                    add_position(kv.quant, row, &s, p - p0, &mut acc, weighs);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (k, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(acc_at(i, k)), *acc);
            }
        }
    }
}
