//! Model families against llama.cpp: the logits of small random-weight qwen3, gemma3,
//! gemma2 (soft-capped scores and logits), phi3 and smollm3 models (QK-norm; gemma3's
//! post-norms, GeGLU, scaled embeddings and queries, a head size other than dim / heads,
//! and a sliding window narrower than the prompt; phi3's fused tensors, LongRoPE's short
//! and long factors and attention factor, and RoPE on half of each head; smollm3's layer
//! without RoPE) at every position of one prompt, against the logits llama.cpp's CPU
//! build computes for the same files (`tests/data/refs/families/`, written by
//! `scripts/synthetic-refs.py` from the files this test leaves in `target/test-models/`).
//! The weights are Q8_0, whose products follow llama.cpp's order, so every difference
//! would be the family's.

use crate::common;

use engine::synthetic::{SyntheticModel, WeightMix};
use engine::{AttentionOrder, CpuBackend, Llama, Logits};
use gguf::GgmlType;
use std::sync::Arc;

/// The prompt, as token ids of the byte-level vocabulary.
const PROMPT: [u32; 12] = [40, 69, 76, 76, 79, 0, 87, 79, 82, 76, 68, 1];

/// A family's tiny preset (`quantize --synthetic FAMILY-tiny`) with Q8_0 weights.
fn tiny(family: &str) -> SyntheticModel {
    SyntheticModel::preset(
        &format!("{family}-tiny"),
        WeightMix::Uniform(GgmlType::Q8_0),
    )
    .unwrap()
}

/// (reference name, model file, model, attention order and context llama.cpp ran with)
fn cases() -> [(
    &'static str,
    &'static str,
    SyntheticModel,
    AttentionOrder,
    usize,
); 8] {
    [
        ("qwen3", "qwen3", tiny("qwen3"), AttentionOrder::Matmul, 32),
        (
            "gemma3",
            "gemma3",
            tiny("gemma3"),
            AttentionOrder::Matmul,
            32,
        ),
        (
            "gemma3-flash",
            "gemma3",
            tiny("gemma3"),
            AttentionOrder::Flash,
            32,
        ),
        ("phi3", "phi3", tiny("phi3"), AttentionOrder::Matmul, 32),
        (
            "phi3-long",
            "phi3",
            tiny("phi3"),
            AttentionOrder::Matmul,
            512,
        ),
        (
            "gemma2",
            "gemma2",
            tiny("gemma2"),
            AttentionOrder::Matmul,
            32,
        ),
        (
            "gemma2-flash",
            "gemma2",
            tiny("gemma2"),
            AttentionOrder::Flash,
            32,
        ),
        (
            "smollm3",
            "smollm3",
            tiny("smollm3"),
            AttentionOrder::Matmul,
            32,
        ),
    ]
}

#[test]
fn family_logits_equal_llama_cpp_at_every_position() {
    let dir = common::test_models_dir();
    for (_, file, spec, _, _) in cases() {
        spec.write(&dir.join(format!("family-{file}.gguf")))
            .unwrap();
    }
    for (name, file, _, order, context) in cases() {
        let path = dir.join(format!("family-{file}.gguf"));
        let file = Arc::new(gguf::GgufFile::open(&path).unwrap());
        let mut model = Llama::load(CpuBackend::new(), file).unwrap();
        model.attention_order = order;
        model.fit_rope_to_context(context);
        let mut cache = model.new_kv_cache(context).unwrap();
        let ours = model.forward(&PROMPT, 0, &mut cache, Logits::All).unwrap();
        let reference = common::f32_file(&format!("families/{name}.f32"));
        common::assert_bit_identical(name, &ours, &reference);
    }
}
