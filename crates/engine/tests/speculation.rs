//! Speculative decoding by n-gram lookup changes nothing but speed: for 20 input-grounded
//! prompts (rewrite, extend or quote a given text or code: `tests/data/spec_prompts.jsonl`),
//! the default model gives the same tokens with and without it, greedy and seeded, and
//! the cache holds exactly the generated tokens afterwards.

mod common;

use engine::{
    ChatTemplate, GenerateOptions, Message, NgramSpeculation, Sampler, SamplingParams, Session,
};

fn prompts() -> Vec<String> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/spec_prompts.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["prompt"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn speculation_gives_the_tokens_of_plain_decoding() {
    let (model, tok) = common::model_and_tokenizer();
    let file = gguf::GgufFile::open(common::default_model()).unwrap();
    let template = ChatTemplate::from_metadata(&file.gguf.metadata).unwrap();
    let greedy = SamplingParams {
        temperature: 0.0,
        ..Default::default()
    };
    let seeded = SamplingParams {
        temperature: 0.7,
        seed: 42,
        ..Default::default()
    };
    let spec = NgramSpeculation::default();
    let (mut drafted, mut accepted) = (0, 0);
    let mut session = Session::new(&model, 1024).unwrap();
    for (i, prompt) in prompts().iter().enumerate() {
        let text = template
            .render(&[Message::new("user", prompt)], true)
            .unwrap();
        let ids = tok.encode(&text, true).unwrap();
        // Seeded sampling on every fourth prompt, greedy on the others.
        let params = if i % 4 == 3 { &seeded } else { &greedy };
        let mut outputs = Vec::new();
        for speculation in [None, Some(spec)] {
            let options = GenerateOptions {
                max_tokens: 64,
                speculation,
                ..Default::default()
            };
            let mut sampler = Sampler::new(params.clone()).unwrap();
            session.reset();
            let out = session
                .generate(&tok, &ids, &mut sampler, &options, |_| true)
                .unwrap();
            drafted += out.speculation.drafted;
            accepted += out.speculation.accepted;
            // The cache holds the prompt and the generated tokens but the last (which was
            // never run), whatever was proposed: continuing from it gives the logits of a
            // replay of those tokens, generated ones one at a time.
            let mut all = ids.clone();
            all.extend(&out.tokens[..out.tokens.len() - 1]);
            assert_eq!(
                session.cached_tokens(),
                &all[..],
                "prompt {i}: cached tokens"
            );
            let next = *out.tokens.last().unwrap();
            let cached = session.decode_at(next, all.len()).unwrap();
            let mut replay = Session::new(&model, 1024).unwrap();
            replay.forward_at(&ids, 0, engine::Logits::None).unwrap();
            for (j, &t) in out.tokens[..out.tokens.len() - 1].iter().enumerate() {
                replay.decode_at(t, ids.len() + j).unwrap();
            }
            let replayed = replay.decode_at(next, all.len()).unwrap();
            assert!(cached == replayed, "prompt {i}: the cache after generation");
            outputs.push(out.tokens);
        }
        assert_eq!(
            outputs[0], outputs[1],
            "prompt {i}: speculation changed the output"
        );
    }
    eprintln!("n-gram speculation: {accepted} of {drafted} proposed tokens kept");
    assert!(
        accepted > 0,
        "no proposal was ever kept: the test checks nothing"
    );
}
