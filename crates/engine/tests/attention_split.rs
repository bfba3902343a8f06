//! Attention split across threads changes no bit: decoding one sequence past 512 cached
//! positions splits its scores by positions and its weighted values by columns over the
//! threads (`cpu_attention`), which one thread never does. Generated tokens and a short
//! prompt chunk at depth must give the same logits on 1 thread as on 4, for an f16 and a
//! q8_0 cache, with and without a sliding window and score soft-capping (gemma2).

use crate::common;

use engine::synthetic::SyntheticModel;
use engine::{CpuBackend, KvCacheType, KvTypes, Llama, Logits};
use std::sync::Arc;

/// Logits of: a 700-token prompt's last position, then 3 generated tokens one by one,
/// then a 5-token prompt chunk after them, on `threads` threads.
fn run(model: &Llama<CpuBackend>, threads: usize) -> Vec<f32> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let tokens: Vec<u32> = (0..720u32).map(|i| (i * 37 + 11) % 256).collect();
        let mut cache = model.new_kv_cache(720).unwrap();
        let mut logits = model
            .forward(&tokens[..700], 0, &mut cache, Logits::Last)
            .unwrap();
        for (i, &t) in tokens[700..703].iter().enumerate() {
            logits.extend(model.decode(t, 700 + i, &mut cache).unwrap());
        }
        logits.extend(
            model
                .forward(&tokens[703..708], 703, &mut cache, Logits::All)
                .unwrap(),
        );
        logits
    })
}

#[test]
fn split_attention_gives_the_bits_of_one_thread() {
    let dir = common::test_models_dir();
    let llama = SyntheticModel {
        context_length: 1024,
        seed: 11,
        ..Default::default()
    };
    let gemma2 = SyntheticModel {
        architecture: "gemma2",
        context_length: 1024,
        window: 600,
        window_period: 2,
        seed: 12,
        ..Default::default()
    };
    for (name, spec) in [("llama", llama), ("gemma2", gemma2)] {
        let path = dir.join(format!("split-{name}.gguf"));
        spec.write(&path).unwrap();
        let file = Arc::new(gguf::GgufFile::open(&path).unwrap());
        let mut model = Llama::load(CpuBackend::new(), file).unwrap();
        for ty in [KvCacheType::F16, KvCacheType::Q8_0] {
            model.kv_types = KvTypes { k: ty, v: ty };
            let one = run(&model, 1);
            let four = run(&model, 4);
            assert_eq!(one.len(), four.len());
            assert!(
                one.iter()
                    .zip(&four)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}, {ty:?} cache: 4 threads differ from 1"
            );
        }
    }
}
