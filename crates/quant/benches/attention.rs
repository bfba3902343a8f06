//! Attention micro-benchmarks over one KV head of the default model's shape (3 KV heads of
//! 64 columns, 3 query heads per KV head) with 2,048 cached positions in a shuffled pool:
//! a prompt tile (16 rows × 3 heads, the batched order) and a decoding step (3 heads, the
//! one-token order), scores and weighted values apart, over an f16 cache and a Q8_0 one.
//! Throughput is multiply-adds/s. The `decode_from_memory` group reads the decoding step's
//! heads from 48 layers' worth of cache in turn (77 MB, more than the L3 caches these
//! kernels run on), as a decoding step at depth does: its figures are bound by how well
//! the kernels keep the memory busy, not by their arithmetic.
//!
//! `cargo bench -p quant --bench attention`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::f16;
use quant::{
    attend, attention_scores, quantized_attend, quantized_scores, AttendScratch, F16Order, KvHead,
    KvQuant, QuantizedKvHead, Query, KV_BLOCK,
};

const WIDTH: usize = 64;
const KV_DIM: usize = 3 * WIDTH;
const POSITIONS: usize = 2048;
const LAYERS: usize = 48;

fn f16_bits(i: usize) -> u16 {
    f16::from_f32(((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.5).to_bits()
}

fn attention(c: &mut Criterion) {
    let blocks = POSITIONS / KV_BLOCK;
    let pool = blocks + 3;
    // A permutation of the pool's blocks (the pool's size is prime), as a pool shared by
    // many sequences hands them out.
    let table: Vec<u32> = (0..blocks).map(|b| ((7 * b + 2) % pool) as u32).collect();
    let layer_values = pool * KV_BLOCK * KV_DIM;
    let keys: Vec<u16> = (0..LAYERS * layer_values).map(f16_bits).collect();
    let values: Vec<u16> = (0..LAYERS * layer_values)
        .map(|i| f16_bits(i + 1))
        .collect();
    let layer_kv = |i: usize| KvHead {
        keys: &keys[i / 3 % LAYERS * layer_values..][..layer_values],
        values: &values[i / 3 % LAYERS * layer_values..][..layer_values],
        blocks: &table,
        kv_dim: KV_DIM,
        offset: i % 3 * WIDTH,
        head_dim: WIDTH,
    };
    let kv = layer_kv(1);
    let row: Vec<f32> = (0..LAYERS * layer_values)
        .map(|i| f16::from_bits(f16_bits(i)).to_f32())
        .collect();
    let q8_0 = quant::quantize(gguf::GgmlType::Q8_0, &row).expect("whole blocks");
    let q8_0_layer = layer_values / 32 * 34;
    let layer_quantized = |i: usize| QuantizedKvHead {
        quant: KvQuant::Q8_0,
        data: &q8_0[i / 3 % LAYERS * q8_0_layer..][..q8_0_layer],
        row_bytes: KV_DIM / 32 * 34,
        blocks: &table,
        offset: i % 3 * WIDTH,
        head_dim: WIDTH,
    };
    let quantized = layer_quantized(1);
    let q: Vec<f32> = (0..WIDTH)
        .map(|i| f16::from_bits(f16_bits(3 * i)).to_f32())
        .collect();
    let prompt: Vec<Query> = (0..48)
        .map(|i| Query {
            q: &q,
            first: 0,
            end: POSITIONS - 16 + i / 3 + 1,
            order: F16Order::Batched,
        })
        .collect();
    let step: Vec<Query> = (0..3)
        .map(|_| Query {
            q: &q,
            first: 0,
            end: POSITIONS,
            order: F16Order::OneToken,
        })
        .collect();
    for (name, queries) in [("prompt", &prompt), ("decode", &step)] {
        let macs: usize = queries.iter().map(|q| (q.end - q.first) * WIDTH).sum();
        let mut group = c.benchmark_group(format!("attention_{name}"));
        group.throughput(Throughput::Elements(macs as u64));
        let mut scores = vec![Vec::new(); queries.len()];
        group.bench_function("scores", |b| {
            b.iter(|| attention_scores(queries, &kv, 0.125, &mut scores))
        });
        let weights: Vec<Vec<f32>> = queries
            .iter()
            .map(|q| vec![1.0 / POSITIONS as f32; q.end - q.base()])
            .collect();
        let mut out = vec![0.0; queries.len() * WIDTH];
        let mut scratch = AttendScratch::default();
        group.bench_function("values", |b| {
            b.iter(|| attend(queries, &weights, &kv, &mut out, &mut scratch))
        });
        let mut quantized_query = Vec::new();
        group.bench_function("q8_0 scores", |b| {
            b.iter(|| {
                quantized_scores(
                    queries,
                    &quantized,
                    0.125,
                    &mut scores,
                    &mut quantized_query,
                )
            })
        });
        group.bench_function("q8_0 values", |b| {
            b.iter(|| quantized_attend(queries, &weights, &quantized, &mut out))
        });
        group.finish();
    }
    let macs = step.len() * POSITIONS * WIDTH;
    let mut group = c.benchmark_group("attention_decode_from_memory");
    group.throughput(Throughput::Elements(macs as u64));
    let mut scores = vec![Vec::new(); step.len()];
    let weights = vec![vec![1.0 / POSITIONS as f32; POSITIONS]; step.len()];
    let mut out = vec![0.0; step.len() * WIDTH];
    let mut scratch = AttendScratch::default();
    let mut quantized_query = Vec::new();
    let mut head = 0;
    let mut next = || {
        head += 1;
        head
    };
    group.bench_function("scores", |b| {
        b.iter(|| attention_scores(&step, &layer_kv(next()), 0.125, &mut scores))
    });
    group.bench_function("values", |b| {
        b.iter(|| attend(&step, &weights, &layer_kv(next()), &mut out, &mut scratch))
    });
    // What a decoding step split across threads gives each task (`engine::cpu_attention`).
    group.bench_function("values by 32 columns", |b| {
        b.iter(|| {
            let kv = layer_kv(next());
            for c in (0..WIDTH).step_by(32) {
                let part = KvHead {
                    offset: kv.offset + c,
                    head_dim: 32,
                    ..kv
                };
                attend(
                    &step,
                    &weights,
                    &part,
                    &mut out[..step.len() * 32],
                    &mut scratch,
                )
            }
        })
    });
    group.bench_function("q8_0 scores", |b| {
        b.iter(|| {
            let kv = layer_quantized(next());
            quantized_scores(&step, &kv, 0.125, &mut scores, &mut quantized_query)
        })
    });
    group.bench_function("q8_0 values", |b| {
        b.iter(|| quantized_attend(&step, &weights, &layer_quantized(next()), &mut out))
    });
    group.finish();
}

criterion_group!(benches, attention);
criterion_main!(benches);
