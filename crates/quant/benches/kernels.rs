//! Kernel micro-benchmarks: one quantized matmul of a 1536 × 576 weight matrix (the
//! default model's FFN up shape; 576 × 1536, its down shape, for the K-quants, whose
//! rows are whole 256-value blocks) per weight type and instruction set, for one token (weight
//! bandwidth, reported as bytes/s of weights) and for 64 tokens (reported as elements/s,
//! i.e. multiply-adds/s; ×2 for FLOP/s). `avx512-packed` and `avx2-packed` are the packed
//! layouts the CPU backend uses (`packable`).
//!
//! `cargo bench -p quant`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gguf::GgmlType;
use quant::{matmul_with, pack, packable, quantize, Isa, QMatrix};

fn kernels(c: &mut Criterion) {
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
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_XS,
    ] {
        let (rows, cols) = match ty.block_size() {
            32 => (1536, 576),
            _ => (576, 1536),
        };
        let weights: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let bytes = quantize(ty, &weights).expect("quantizable");
        let w = QMatrix::new(ty, &bytes, rows, cols).expect("shape");
        let packed_bytes = [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .any(|isa| packable(ty, isa))
            .then(|| pack(ty, &bytes, rows, cols));
        let packed = packed_bytes
            .as_deref()
            .map(|p| QMatrix::packed(ty, p, rows, cols).expect("shape"));
        for tokens in [1usize, 64] {
            let x: Vec<f32> = (0..tokens * cols).map(|i| (i % 13) as f32 / 13.0).collect();
            let mut out = vec![0.0; tokens * rows];
            let mut group = c.benchmark_group(format!("matmul_{}_{}tok", ty.name(), tokens));
            if tokens == 1 {
                group.throughput(Throughput::Bytes(bytes.len() as u64));
            } else {
                group.throughput(Throughput::Elements((tokens * rows * cols) as u64));
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
