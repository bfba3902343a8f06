//! Shared by the engine's integration tests: the default model and llama.cpp's reference data.
#![allow(dead_code)]

use std::path::PathBuf;

#[path = "../../../../tests/refs.rs"]
mod refs_dir;
#[allow(unused_imports)] // not every test binary reads reference data
pub use refs_dir::{f32_file, refs};

/// The default model, pulled into the tests' shared store on first use
/// (`LLAMA_GPU_TEST_MODEL` names a GGUF file to use instead, e.g. on a GPU machine).
pub fn default_model() -> PathBuf {
    known_model("default", "LLAMA_GPU_TEST_MODEL")
}

/// Gemma 3 270M, pulled likewise (`LLAMA_GPU_TEST_GEMMA3` names a file instead).
pub fn gemma3_model() -> PathBuf {
    known_model("gemma3-270m", "LLAMA_GPU_TEST_GEMMA3")
}

/// A model the store knows by name, from the tests' shared store, or the file the
/// environment variable `instead` names.
fn known_model(name: &str, instead: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(instead) {
        return PathBuf::from(path);
    }
    let home = match std::env::var_os("LLAMA_GPU_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-home"),
    };
    store::Store::open(home)
        .and_then(|s| s.resolve(name))
        .unwrap_or_else(|e| panic!("cannot get {name}: {e}"))
}

/// The device the tests run on: `LLAMA_GPU_TEST_DEVICE` (`cpu` unless set; `cuda` runs
/// the same tests on a GPU).
pub fn test_device() -> engine::Device {
    let choice = std::env::var("LLAMA_GPU_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    engine::Device::open(choice.parse().unwrap(), None).unwrap()
}

/// The default model on the test device, with its tokenizer.
pub fn model_and_tokenizer() -> (engine::Llama<engine::Device>, engine::Tokenizer) {
    load_with_tokenizer(default_model())
}

/// A model file on the test device, with its tokenizer.
pub fn load_with_tokenizer(path: PathBuf) -> (engine::Llama<engine::Device>, engine::Tokenizer) {
    let file = std::sync::Arc::new(gguf::GgufFile::open(path).unwrap());
    let tok = engine::Tokenizer::from_metadata(&file.gguf.metadata).unwrap();
    (engine::Llama::load(test_device(), file).unwrap(), tok)
}

pub fn jsonl(name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(refs(name))
        .expect("reference file")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("reference JSON"))
        .collect()
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("a JSON array of ids")
        .iter()
        .map(|x| x.as_u64().expect("a token id") as u32)
        .collect()
}

/// Where tests write their synthetic models (`target/test-models/`), created if need be.
pub fn test_models_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-models");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Asserts `ours` equals llama.cpp's `reference` logits bit for bit, printing the
/// largest difference either way.
pub fn assert_bit_identical(name: &str, ours: &[f32], reference: &[f32]) {
    assert_eq!(ours.len(), reference.len(), "{name}: logits count");
    let max_diff = ours
        .iter()
        .zip(reference)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("{name}: max |Δ| {max_diff}");
    assert!(
        ours == reference,
        "{name}: not bit-identical (max |Δ| {max_diff})"
    );
}

/// Waits until the engine has nothing running (cancellation is seen at its next step).
pub fn settled(engine: &engine::Engine) -> engine::serving::Metrics {
    let t0 = std::time::Instant::now();
    loop {
        let m = engine.metrics();
        if m.running == 0 && m.waiting == 0 {
            return m;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "engine never settled: {m:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
