//! Random-weight models in every quant type run, tokenize, and stay chunk-invariant.

use engine::synthetic::{SyntheticModel, WeightMix};
use engine::{CpuBackend, Llama, Logits, Tokenizer};
use gguf::GgmlType;
use std::sync::Arc;

fn load(spec: &SyntheticModel) -> (tempfile::TempDir, Llama<CpuBackend>, Tokenizer) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    spec.write(&path).unwrap();
    let file = Arc::new(gguf::GgufFile::open(&path).unwrap());
    let tok = Tokenizer::from_metadata(&file.gguf.metadata).unwrap();
    let model = Llama::load(CpuBackend::new(), file).unwrap();
    (dir, model, tok)
}

#[test]
fn every_weight_type_runs_and_agrees_with_f32() {
    use GgmlType::*;
    let reference = {
        let (_d, m, tok) = load(&SyntheticModel {
            weights: WeightMix::Uniform(F32),
            ..Default::default()
        });
        let ids = tok.encode("hello world", true).unwrap();
        let mut cache = m.new_kv_cache(32).unwrap();
        m.forward(&ids, 0, &mut cache, Logits::Last).unwrap()
    };
    for ty in [
        F16, BF16, Q8_0, Q6_K, Q5_1, Q5_0, Q5_K, Q4_1, Q4_0, Q4_K, IQ4_NL, IQ4_XS, Q3_K, Q2_K,
    ] {
        let (_d, m, tok) = load(&SyntheticModel {
            weights: WeightMix::Uniform(ty),
            ..Default::default()
        });
        let ids = tok.encode("hello world", true).unwrap();
        assert_eq!(ids.len(), 11, "byte-level vocabulary: one token per byte");
        let mut cache = m.new_kv_cache(32).unwrap();
        let whole = m.forward(&ids, 0, &mut cache, Logits::All).unwrap();
        assert!(
            whole.iter().all(|v| v.is_finite()),
            "{ty}: non-finite logits"
        );
        let mut pieces = Vec::new();
        let mut cache = m.new_kv_cache(32).unwrap();
        for (i, chunk) in ids.chunks(3).enumerate() {
            pieces.extend(
                m.forward_prompt(chunk, i * 3, ids.len(), &mut cache, Logits::All)
                    .unwrap(),
            );
        }
        assert!(pieces == whole, "{ty}: chunked prefill differs");
        let last = &whole[whole.len() - reference.len()..];
        let err: f32 = last
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            .sqrt();
        let norm: f32 = reference.iter().map(|v| v * v).sum::<f32>().sqrt();
        let bound = match ty {
            F16 | BF16 | Q8_0 => 0.05,
            Q6_K | Q5_0 | Q5_1 | Q5_K => 0.15,
            Q4_0 | Q4_1 | Q4_K | IQ4_NL | IQ4_XS => 0.3,
            _ => 0.8,
        };
        assert!(
            err / norm < bound,
            "{ty}: relative logit error {} >= {bound}",
            err / norm
        );
    }
}

/// Q6_K weights are summed in llama.cpp's batched order for a prompt's tokens and in its
/// one-token order for a generated token (`model::matmul_order`): a batch that holds
/// both gives each the logits it gets alone. (The same tokens scored as generated ones
/// do give other bits, from the matmul's order and attention's both.)
#[test]
fn a_q6_k_prompt_and_a_decoding_token_in_one_batch_equal_each_alone() {
    use engine::model::SeqBatch;
    let (_d, m, tok) = load(&SyntheticModel {
        weights: WeightMix::Uniform(GgmlType::Q6_K),
        ..Default::default()
    });
    let vocab = m.config.vocab_size;
    let a = tok.encode("hello world", true).unwrap();
    let b = tok.encode("a second prompt", true).unwrap();
    let next = [b[3]];

    let mut cache = m.new_kv_cache(32).unwrap();
    let a_alone = m.forward(&a, 0, &mut cache, Logits::All).unwrap();
    let mut cache = m.new_kv_cache(32).unwrap();
    m.forward(&b, 0, &mut cache, Logits::None).unwrap();
    let b_next_alone = m.decode(next[0], b.len(), &mut cache).unwrap();
    // The same token scored as a generated one (the one-token order) instead.
    let mut cache = m.new_kv_cache(32).unwrap();
    let a_generated = m.verify(&a, 0, &mut cache).unwrap();
    assert!(a_generated != a_alone, "the two orders gave the same bits");

    let mut pool = m.new_kv_pool(4).unwrap();
    let (a_blocks, b_blocks) = ([3], [1, 0]);
    let batch = [SeqBatch {
        tokens: &b,
        start: 0,
        blocks: &b_blocks,
        window_blocks: None,
        logits: Logits::None,
        generated_from: b.len(),
    }];
    m.forward_batch(&batch, &mut pool).unwrap();
    let batch = [
        SeqBatch {
            tokens: &next,
            start: b.len(),
            blocks: &b_blocks,
            window_blocks: None,
            logits: Logits::Last,
            generated_from: b.len(),
        },
        SeqBatch {
            tokens: &a,
            start: 0,
            blocks: &a_blocks,
            window_blocks: None,
            logits: Logits::All,
            generated_from: a.len(),
        },
    ];
    let out = m.forward_batch(&batch, &mut pool).unwrap();
    assert!(
        out[..vocab] == b_next_alone[..],
        "the decoding token changed"
    );
    assert!(out[vocab..] == a_alone[..], "the prompt changed");
}

#[test]
fn missing_tensors_and_foreign_architectures_are_named() {
    let spec = SyntheticModel::default();
    let dir = tempfile::tempdir().unwrap();
    let mut w = spec.to_writer().unwrap();
    w.add_metadata("general.architecture", gguf::Value::String("gpt2".into()));
    let path = dir.path().join("gpt2.gguf");
    w.write_file(&path).unwrap();
    let file = Arc::new(gguf::GgufFile::open(&path).unwrap());
    let err = Llama::load(CpuBackend::new(), file)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("architecture \"gpt2\" is not supported"),
        "{err}"
    );
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = SyntheticModel::default().to_writer().unwrap();
    w.add_metadata("llama.block_count", gguf::Value::U32(3));
    let path = dir.path().join("short.gguf");
    w.write_file(&path).unwrap();
    let file = Arc::new(gguf::GgufFile::open(&path).unwrap());
    let err = Llama::load(CpuBackend::new(), file)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing tensor \"blk.2."), "{err}");
}
