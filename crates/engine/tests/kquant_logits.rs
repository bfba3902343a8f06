//! K-quant, i-quant and F16 models against llama.cpp: the logits of small random-weight
//! models whose matrices are Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS, IQ4_NL, the codebook
//! i-quants IQ1_S … IQ3_S, the ternary TQ1_0 and TQ2_0, Q8_0 or F16 (`identical` lists those that are bit-identical),
//! at every position of one prompt, against the logits llama.cpp's CPU build computes
//! for the same files (`tests/data/refs/kquants/`, written by `scripts/synthetic-refs.py`
//! from the files this test leaves in `target/test-models/`).

use crate::common;

use engine::synthetic::{SyntheticModel, WeightMix};
use engine::{CpuBackend, Llama, Logits};
use gguf::GgmlType;
use std::sync::Arc;

/// The prompt, as token ids of the byte-level vocabulary.
const PROMPT: [u32; 12] = [40, 69, 76, 76, 79, 0, 87, 79, 82, 76, 68, 1];

fn cases() -> [(&'static str, WeightMix); 19] {
    [
        ("q8_0", WeightMix::Uniform(GgmlType::Q8_0)),
        ("q4_k_m", WeightMix::Q4KM),
        ("q4_k", WeightMix::Uniform(GgmlType::Q4_K)),
        ("q5_k", WeightMix::Uniform(GgmlType::Q5_K)),
        ("q6_k", WeightMix::Uniform(GgmlType::Q6_K)),
        ("q3_k", WeightMix::Uniform(GgmlType::Q3_K)),
        ("q2_k", WeightMix::Uniform(GgmlType::Q2_K)),
        ("iq4_xs", WeightMix::Uniform(GgmlType::IQ4_XS)),
        ("iq4_nl", WeightMix::Uniform(GgmlType::IQ4_NL)),
        ("f16", WeightMix::Uniform(GgmlType::F16)),
        ("iq2_xxs", WeightMix::Uniform(GgmlType::IQ2_XXS)),
        ("iq2_xs", WeightMix::Uniform(GgmlType::IQ2_XS)),
        ("iq2_s", WeightMix::Uniform(GgmlType::IQ2_S)),
        ("iq3_xxs", WeightMix::Uniform(GgmlType::IQ3_XXS)),
        ("iq3_s", WeightMix::Uniform(GgmlType::IQ3_S)),
        ("iq1_s", WeightMix::Uniform(GgmlType::IQ1_S)),
        ("iq1_m", WeightMix::Uniform(GgmlType::IQ1_M)),
        ("tq1_0", WeightMix::Uniform(GgmlType::TQ1_0)),
        ("tq2_0", WeightMix::Uniform(GgmlType::TQ2_0)),
    ]
}

/// Every matrix 256 wide (one K-quant block per 256 values) and a multiple of eight rows
/// (llama.cpp multiplies such Q4_K matrices eight rows at a time, in the order we follow).
fn spec(weights: WeightMix) -> SyntheticModel {
    SyntheticModel {
        layers: 2,
        dim: 256,
        heads: 4,
        kv_heads: 2,
        ffn_dim: 512,
        vocab_size: 264,
        separate_output: true,
        weights,
        seed: 3,
        ..Default::default()
    }
}

#[test]
fn k_quant_logits_equal_llama_cpp_at_every_position() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-models");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, mix) in cases() {
        spec(mix)
            .write(&dir.join(format!("kquant-{name}.gguf")))
            .unwrap();
    }
    for (name, _) in cases() {
        let path = dir.join(format!("kquant-{name}.gguf"));
        let file = Arc::new(gguf::GgufFile::open(&path).unwrap());
        let model = Llama::load(CpuBackend::new(), file).unwrap();
        let mut cache = model.new_kv_cache(32).unwrap();
        let ours = model.forward(&PROMPT, 0, &mut cache, Logits::All).unwrap();
        let reference = common::f32_file(&format!("kquants/{name}.f32"));
        assert_eq!(ours.len(), reference.len(), "{name}: logits count");
        let identical = [
            "q8_0", "q3_k", "q5_k", "iq4_nl", "f16", "iq2_xxs", "iq3_xxs", "iq3_s", "iq1_s",
            "iq1_m", "tq1_0", "tq2_0",
        ];
        if identical.contains(&name) {
            assert!(ours == reference, "{name}: not bit-identical");
            continue;
        }
        let max_diff = max_diff(&ours, &reference);
        let differing = ours
            .iter()
            .zip(&reference)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        // The positions whose logits differ.
        let mut at: Vec<usize> = (0..ours.len())
            .filter(|&i| ours[i].to_bits() != reference[i].to_bits())
            .map(|i| i / 264)
            .collect();
        at.dedup();
        println!(
            "{name}: {differing} of {} logits differ at {at:?}, max |Δ| {max_diff}",
            ours.len()
        );
        // Not yet bit for bit (see docs/architecture.md, "K-quants"): the bounds are what
        // this test measured, with the top-1 token equal at every position. Q4_K's
        // differences of ~6e-7 (llama.cpp's four-token repacked order, which we do not
        // follow) move one Q8_K activation of the Q4_K_M model to the next step, and
        // that moves later logits by up to 0.01.
        let bound = if name == "q4_k_m" { 0.02 } else { 1e-5 };
        assert!(max_diff < bound, "{name}: max |Δ| {max_diff}");
        for (t, (a, b)) in ours.chunks(264).zip(reference.chunks(264)).enumerate() {
            assert_eq!(argmax(a), argmax(b), "{name}: top-1 at position {t}");
        }
    }
}

/// The same files fed one token at a time: every product takes llama.cpp's one-token
/// (`vec_dot`) order, which for Q3_K, Q6_K and the i-quants differs from its prompt order.
#[test]
fn logits_of_tokens_decoded_one_at_a_time_equal_llama_cpp() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-models");
    std::fs::create_dir_all(&dir).unwrap();
    let sequential = [
        "q8_0", "q3_k", "q6_k", "iq4_xs", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s",
        "iq1_s", "iq1_m", "tq1_0", "tq2_0",
    ];
    for (name, mix) in cases() {
        if !sequential.contains(&name) {
            continue;
        }
        // Written under a name of its own: the other test may be writing the same file.
        let path = dir.join(format!("kquant-{name}-sequential.gguf"));
        spec(mix).write(&path).unwrap();
        let file = Arc::new(gguf::GgufFile::open(&path).unwrap());
        let model = Llama::load(CpuBackend::new(), file).unwrap();
        let mut cache = model.new_kv_cache(32).unwrap();
        let mut ours = Vec::new();
        for (pos, &token) in PROMPT.iter().enumerate() {
            ours.extend(
                model
                    .forward(&[token], pos, &mut cache, Logits::All)
                    .unwrap(),
            );
        }
        let reference = common::f32_file(&format!("kquants/{name}-sequential.f32"));
        assert_eq!(ours.len(), reference.len(), "{name}: logits count");
        // The first seven positions are bit-identical: every product there is this
        // type's one-token kernel. From the eighth on, the logits of the types whose
        // activations are Q8_K (not Q8_0's) differ by ~1e-7 at some positions, a
        // difference not traced yet; where an activation then rounds to another Q8_K
        // step a logit moves by up to ~0.01. The top-1 token stays the same.
        let first = 7 * 264;
        common::assert_bit_identical(name, &ours[..first], &reference[..first]);
        let later = max_diff(&ours[first..], &reference[first..]);
        println!("{name}: positions 7-11 max |Δ| {later}");
        assert!(later < 0.05, "{name}: max |Δ| {later} after position 7");
        for (t, (a, b)) in ours.chunks(264).zip(reference.chunks(264)).enumerate() {
            assert_eq!(argmax(a), argmax(b), "{name}: top-1 at position {t}");
        }
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}
