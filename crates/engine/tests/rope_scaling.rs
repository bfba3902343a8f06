//! RoPE scaling against llama.cpp: YaRN from a file's metadata, and YaRN or linear scaling
//! asked for over a file without any (llama.cpp's `--rope-scaling`, `--rope-scale`,
//! `--rope-freq-base`, `--yarn-*`), at every position of one prompt. The references are
//! the logits llama.cpp's CPU build computes for the same files and settings
//! (`tests/data/refs/rope/`, written by `scripts/synthetic-refs.py` from the files this
//! test leaves in `target/test-models/`). The weights are Q8_0, whose products follow
//! llama.cpp's order, so every difference would be the rotation's.

use crate::common;

use engine::config::RopeScalingKind;
use engine::synthetic::SyntheticModel;
use engine::{CpuBackend, Llama, Logits, RopeOverrides};
use std::sync::Arc;

/// The prompt, as token ids of the byte-level vocabulary.
const PROMPT: [u32; 12] = [40, 69, 76, 76, 79, 0, 87, 79, 82, 76, 68, 1];

/// A context of 64 positions extended 4× by YaRN in its metadata. With 64 rotated
/// dimensions and base 10,000, YaRN's ramp runs over pairs 0 to 9.
fn llama_yarn() -> SyntheticModel {
    SyntheticModel {
        context_length: 64,
        rope_scaling: Some(("yarn", 4.0)),
        seed: 9,
        ..Default::default()
    }
}

/// No scaling in the file; NeoX order and Q/K/V biases.
fn qwen2() -> SyntheticModel {
    SyntheticModel {
        architecture: "qwen2",
        context_length: 64,
        seed: 10,
        ..Default::default()
    }
}

/// (reference name, model file, model, the settings llama.cpp ran with)
fn cases() -> [(&'static str, &'static str, SyntheticModel, RopeOverrides); 3] {
    [
        ("yarn", "yarn", llama_yarn(), RopeOverrides::default()),
        (
            "yarn-override",
            "qwen2-unscaled",
            qwen2(),
            RopeOverrides {
                scaling: Some(RopeScalingKind::Yarn),
                factor: Some(8.0),
                freq_base: Some(20_000.0),
                yarn_beta_fast: Some(16.0),
                ..Default::default()
            },
        ),
        (
            "linear-override",
            "qwen2-unscaled",
            qwen2(),
            RopeOverrides {
                scaling: Some(RopeScalingKind::Linear),
                factor: Some(2.0),
                ..Default::default()
            },
        ),
    ]
}

#[test]
fn scaled_rope_logits_equal_llama_cpp_at_every_position() {
    let dir = common::test_models_dir();
    for (_, file, spec, _) in cases() {
        spec.write(&dir.join(format!("rope-{file}.gguf"))).unwrap();
    }
    for (name, file, _, overrides) in cases() {
        let file = Arc::new(gguf::GgufFile::open(dir.join(format!("rope-{file}.gguf"))).unwrap());
        let mut model = Llama::load(CpuBackend::new(), file).unwrap();
        model.override_rope(&overrides).unwrap();
        let mut cache = model.new_kv_cache(32).unwrap();
        let ours = model.forward(&PROMPT, 0, &mut cache, Logits::All).unwrap();
        let reference = common::f32_file(&format!("rope/{name}.f32"));
        common::assert_bit_identical(name, &ours, &reference);
    }
}

#[test]
fn scaling_extends_the_usable_context_and_nothing_else_does() {
    let dir = common::test_models_dir();
    let load = |name: &str, spec: SyntheticModel| {
        let path = dir.join(format!("rope-context-{name}.gguf"));
        spec.write(&path).unwrap();
        let file = Arc::new(gguf::GgufFile::open(&path).unwrap());
        Llama::load(CpuBackend::new(), file).unwrap()
    };
    assert_eq!(load("yarn", llama_yarn()).config.usable_context(), 256);
    let mut plain = load("plain", qwen2());
    assert_eq!(plain.config.usable_context(), 64);
    plain
        .override_rope(&RopeOverrides {
            freq_base: Some(50_000.0),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(plain.config.usable_context(), 64, "a new base alone");
    plain
        .override_rope(&RopeOverrides {
            scaling: Some(RopeScalingKind::Yarn),
            factor: Some(4.0),
            original_context: Some(48),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(plain.config.usable_context(), 192);
    let bad = plain.override_rope(&RopeOverrides {
        factor: Some(-2.0),
        ..Default::default()
    });
    assert!(bad.unwrap_err().to_string().contains("positive"));
}
