//! Kernel micro-benchmarks: one quantized matmul of a 1536 × 576 weight matrix (the
//! default model's FFN shape) per weight type and instruction set, for one token (weight
//! bandwidth, reported as bytes/s of weights) and for 64 tokens (reported as elements/s,
//! i.e. multiply-adds/s; ×2 for FLOP/s). `avx512-packed` and `avx2-packed` are the packed
//! layouts the CPU backend uses for Q4_0 and IQ4_NL on both, and Q4_1 and Q8_0 on AVX-512.
//!
//! `cargo bench -p quant`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gguf::GgmlType;
use quant::{matmul_with, pack, packable, quantize, Isa, QMatrix};

const ROWS: usize = 1536;
const COLS: usize = 576;

fn kernels(c: &mut Criterion) {
    let weights: Vec<f32> = (0..ROWS * COLS)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let isas: Vec<Isa> = [Isa::Scalar, Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|i| i.is_available())
        .collect();
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::IQ4_NL,
    ] {
        let bytes = quantize(ty, &weights).expect("quantizable");
        let w = QMatrix::new(ty, &bytes, ROWS, COLS).expect("shape");
        let packed_bytes = packable(ty, Isa::Avx512).then(|| pack(ty, &bytes, ROWS, COLS));
        let packed = packed_bytes
            .as_deref()
            .map(|p| QMatrix::packed(ty, p, ROWS, COLS).expect("shape"));
        for tokens in [1usize, 64] {
            let x: Vec<f32> = (0..tokens * COLS).map(|i| (i % 13) as f32 / 13.0).collect();
            let mut out = vec![0.0; tokens * ROWS];
            let mut group = c.benchmark_group(format!("matmul_{}_{}tok", ty.name(), tokens));
            if tokens == 1 {
                group.throughput(Throughput::Bytes(bytes.len() as u64));
            } else {
                group.throughput(Throughput::Elements((tokens * ROWS * COLS) as u64));
            }
            for &isa in &isas {
                group.bench_with_input(BenchmarkId::from_parameter(isa.name()), &isa, |b, &isa| {
                    b.iter(|| matmul_with(isa, &w, &x, &mut out))
                });
            }
            for &isa in &isas {
                if let Some(p) = packed.as_ref().filter(|_| packable(ty, isa)) {
                    group.bench_function(format!("{}-packed", isa.name()), |b| {
                        b.iter(|| matmul_with(isa, p, &x, &mut out))
                    });
                }
            }
            group.finish();
        }
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
