//! Greedy generation agrees with llama.cpp's on the reference prompts: identical tokens
//! up to the first step where llama.cpp's top-2 margin is a near-tie (< 0.05), as the
//! reference README asks.

use crate::common;
use engine::{CpuBackend, Llama, Logits, Tokenizer};
use std::sync::Arc;

const NEAR_TIE: f64 = 0.05;

#[test]
fn greedy_tokens_match_llama_cpp() {
    let file = Arc::new(gguf::GgufFile::open(common::default_model()).unwrap());
    let tok = Tokenizer::from_metadata(&file.gguf.metadata).unwrap();
    let model = Llama::load(CpuBackend::new(), file).unwrap();
    let mut diverged: Vec<String> = Vec::new();
    for case in common::jsonl("greedy_gen.jsonl") {
        let prompt = case["prompt"].as_str().unwrap();
        let prompt_ids = common::ids(&case["prompt_ids"]);
        assert_eq!(tok.encode(prompt, true).unwrap(), prompt_ids, "{prompt:?}");
        let want = common::ids(&case["gen_ids"]);
        let margins: Vec<f64> = case["top1_minus_top2"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap())
            .collect();
        let must_match = margins
            .iter()
            .position(|&m| m < NEAR_TIE)
            .unwrap_or(want.len());

        let mut cache = model.new_kv_cache(prompt_ids.len() + want.len()).unwrap();
        let mut logits = model
            .forward(&prompt_ids, 0, &mut cache, Logits::Last)
            .unwrap();
        let mut got = Vec::new();
        for step in 0..must_match {
            let next = engine::sampler::argmax(&logits);
            got.push(next);
            if next != want[step] {
                let gap = logits[next as usize] - logits[want[step] as usize];
                let report = format!(
                    "{prompt:?}: step {step} gave {next}, llama.cpp {} (its margin {:.3}; our gap to its token {gap:.3})",
                    want[step], margins[step],
                );
                eprintln!("{report}");
                diverged.push(report);
                break;
            }
            let pos = prompt_ids.len() + step;
            logits = model.decode(next, pos, &mut cache).unwrap();
        }
        eprintln!(
            "{:?}: {} of {must_match} required tokens identical",
            &prompt[..prompt.len().min(30)],
            got.len()
        );
    }
    assert!(diverged.is_empty(), "{}", diverged.join("\n"));
}
