//! The tokenizer agrees with llama.cpp on every reference string.

use crate::common;
use engine::Tokenizer;

#[test]
fn ids_match_llama_cpp_and_round_trip() {
    let file = gguf::GgufFile::open(common::default_model()).unwrap();
    let tok = Tokenizer::from_metadata(&file.gguf.metadata).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    let mut failures = Vec::new();
    let cases = common::jsonl("tokenize.jsonl");
    assert_eq!(cases.len(), 84);
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let special = case["parse_special"].as_bool().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, special).unwrap();
        if got != want {
            failures.push(format!(
                "{text:?} special={special}: got {got:?}, want {want:?}"
            ));
        }
        assert_eq!(tok.decode(&want), text, "detokenize of {text:?}");
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(tok.is_end_of_generation(2));
    assert!(!tok.add_bos);
}
