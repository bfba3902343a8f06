//! Every `tokenizer.ggml.pre` rule splits text as llama.cpp does. A vocabulary is given
//! each rule's name in turn and its ids for the strings of
//! `tests/data/refs/pretokenizer_texts.json` (cases, digits, scripts, whitespace, code)
//! are compared with llama.cpp's on the same vocabulary (`pretokenizers.jsonl`, written
//! by `scripts/pretokenizer-refs.py` from the vocabulary-only files this test leaves in
//! `target/test-models/`).
//!
//! The vocabulary is the default model's with, ahead of its merges, merges that build
//! every run of up to six characters of the test strings. So a piece merges across any
//! boundary a rule might or might not put there, and two rules that split a string
//! differently give different ids for it.

use crate::common;
use engine::pretokenizer::rule_names;
use engine::tokenizer::byte_chars;
use engine::Tokenizer;
use gguf::Value;
use std::collections::{BTreeMap, HashSet};

const LONGEST_RUN: usize = 6;

fn texts() -> Vec<String> {
    let json = std::fs::read_to_string(common::refs("pretokenizer_texts.json")).unwrap();
    serde_json::from_str(&json).unwrap()
}

/// The default model's metadata with the dense merges for `texts` first.
fn dense_vocabulary(file: &gguf::GgufFile, texts: &[String]) -> gguf::Metadata {
    let m = &file.gguf.metadata;
    let mut tokens: Vec<String> = m
        .get_str_array("tokenizer.ggml.tokens")
        .unwrap()
        .into_iter()
        .map(String::from)
        .collect();
    let mut types = m.get_i32_array("tokenizer.ggml.token_type").unwrap();
    let mut known: HashSet<String> = tokens.iter().cloned().collect();
    let table = byte_chars();
    let mut merges = Vec::new();
    let mut merged = HashSet::new();
    for len in 2..=LONGEST_RUN {
        for text in texts {
            let chars: Vec<char> = text.bytes().map(|b| table[b as usize]).collect();
            for run in chars.windows(len) {
                let head: String = run[..len - 1].iter().collect();
                let whole: String = run.iter().collect();
                if merged.insert(whole.clone()) {
                    merges.push(format!("{head} {}", run[len - 1]));
                }
                if known.insert(whole.clone()) {
                    tokens.push(whole);
                    types.push(1);
                }
            }
        }
    }
    // A pair merged twice would keep its first rank in llama.cpp, its last in ours.
    let dense: HashSet<String> = merges.iter().cloned().collect();
    merges.extend(
        m.get_str_array("tokenizer.ggml.merges")
            .unwrap()
            .into_iter()
            .filter(|merge| !dense.contains(*merge))
            .map(String::from),
    );
    let mut out = m.clone();
    out.insert("tokenizer.ggml.tokens", gguf::string_array(&tokens));
    out.insert("tokenizer.ggml.merges", gguf::string_array(&merges));
    let types = types.into_iter().map(Value::I32).collect();
    out.insert(
        "tokenizer.ggml.token_type",
        Value::Array(gguf::Array {
            element_type: gguf::ValueType::I32,
            values: types,
        }),
    );
    out
}

fn with_pre(m: &gguf::Metadata, pre: &str) -> gguf::Metadata {
    let mut m = m.clone();
    m.insert("tokenizer.ggml.pre", Value::String(pre.into()));
    m
}

/// A GGUF holding only metadata: what llama.cpp loads with `vocab_only`.
fn write_vocab_file(m: &gguf::Metadata, pre: &str) {
    let mut w = gguf::GgufWriter::new();
    for (k, v) in m.iter() {
        w.add_metadata(k, v.clone());
    }
    let path = common::test_models_dir().join(format!("pre-{pre}.gguf"));
    w.write_file(path).unwrap();
}

#[test]
fn every_rule_splits_as_llama_cpp_does() {
    let file = gguf::GgufFile::open(common::default_model()).unwrap();
    let texts = texts();
    let dense = dense_vocabulary(&file, &texts);
    for pre in rule_names() {
        write_vocab_file(&with_pre(&dense, pre), pre);
    }
    let mut cases: BTreeMap<String, BTreeMap<String, Vec<u32>>> = BTreeMap::new();
    for case in common::jsonl("pretokenizers.jsonl") {
        cases
            .entry(case["pre"].as_str().unwrap().into())
            .or_default()
            .insert(
                case["text"].as_str().unwrap().into(),
                common::ids(&case["ids"]),
            );
    }
    let mut failures = Vec::new();
    for pre in rule_names() {
        let tok = Tokenizer::from_metadata(&with_pre(&dense, pre)).unwrap();
        for text in &texts {
            let Some(want) = cases.get(pre).and_then(|c| c.get(text)) else {
                failures.push(format!("{pre} {text:?}: no reference ids"));
                continue;
            };
            let got = tok.encode(text, false).unwrap();
            if &got != want {
                failures.push(format!("{pre} {text:?}: got {got:?}, want {want:?}"));
            }
        }
    }
    println!("{} rules x {} strings checked", cases.len(), texts.len());
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The same metadata without the file's word on a BOS.
fn without_add_bos(m: &gguf::Metadata) -> gguf::Metadata {
    let mut out = gguf::Metadata::default();
    for (k, v) in m.iter() {
        if k != "tokenizer.ggml.add_bos_token" {
            out.insert(k, v.clone());
        }
    }
    out
}

#[test]
fn llama3_and_tekken_add_bos_unless_the_file_says_otherwise() {
    let file = gguf::GgufFile::open(common::default_model()).unwrap();
    let m = &file.gguf.metadata;
    for (pre, add_bos) in [("tekken", true), ("llama-bpe", true), ("qwen2", false)] {
        let tok = Tokenizer::from_metadata(&without_add_bos(&with_pre(m, pre))).unwrap();
        assert_eq!(tok.add_bos, add_bos, "{pre}");
    }
    // The default model's file says no.
    assert!(
        !Tokenizer::from_metadata(&with_pre(m, "tekken"))
            .unwrap()
            .add_bos
    );
}

#[test]
fn an_unknown_rule_is_refused_by_name() {
    let file = gguf::GgufFile::open(common::default_model()).unwrap();
    let err = Tokenizer::from_metadata(&with_pre(&file.gguf.metadata, "kimi-k2"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("\"kimi-k2\"") && err.contains("tekken"),
        "{err}"
    );
}
