//! Speculative decoding, by n-gram lookup or with a draft model, changes nothing but
//! speed: for 20 input-grounded prompts (rewrite, extend or quote a given text or code:
//! `tests/data/spec_prompts.jsonl`), the default model gives the same tokens with and
//! without it, greedy and seeded, and the cache holds exactly the generated tokens
//! afterwards. The serving engine, with either proposer, gives the same tokens with it
//! as without it, alone and among eight concurrent requests, and gives every KV block
//! back (the draft model's too).

use crate::common;

use engine::serving::DraftModel;
use engine::synthetic::WeightMix;
use engine::{
    ChatTemplate, Constraint, Device, Drafter, Engine, EngineConfig, Event, GenerateOptions, Llama,
    Logits, Message, NgramSpeculation, Request, Sampler, SamplingParams, Session, Tokenizer,
};
use gguf::GgmlType;
use std::path::PathBuf;

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

/// Each prompt as the default model's chat template puts it to the model.
fn chat_prompts(tok: &Tokenizer, prompts: &[String]) -> Vec<Vec<u32>> {
    let file = gguf::GgufFile::open(common::default_model()).unwrap();
    let template = ChatTemplate::from_metadata(&file.gguf.metadata).unwrap();
    prompts
        .iter()
        .map(|prompt| {
            let text = template
                .render(&[Message::new("user", prompt)], true)
                .unwrap();
            tok.encode(&text, true).unwrap()
        })
        .collect()
}

/// Seeded sampling for every fourth prompt, greedy for the others.
fn sampling_for(prompt: usize) -> SamplingParams {
    SamplingParams {
        temperature: if prompt % 4 == 3 { 0.7 } else { 0.0 },
        seed: 42,
        ..Default::default()
    }
}

/// Generates after every prompt with `speculating` (and `ngram`, if set) and with a
/// plain session, and asserts the same tokens, with the cache holding exactly them
/// afterwards; returns the tokens proposed and kept.
fn assert_same_output<'m>(
    model: &'m Llama<Device>,
    tok: &Tokenizer,
    speculating: &mut Session<'m, Device>,
    ngram: Option<NgramSpeculation>,
    max_tokens: usize,
) -> (usize, usize) {
    let (mut drafted, mut accepted) = (0, 0);
    let mut plain = Session::new(model, 1024).unwrap();
    for (i, ids) in chat_prompts(tok, &prompts()).into_iter().enumerate() {
        let params = &sampling_for(i);
        let mut outputs = Vec::new();
        for session in [&mut plain, &mut *speculating] {
            let options = GenerateOptions {
                max_tokens,
                speculation: ngram,
                ..Default::default()
            };
            let mut sampler = Sampler::new(params.clone()).unwrap();
            session.reset();
            let out = session
                .generate(tok, &ids, &mut sampler, &options, |_| true)
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
            let mut replay = Session::new(model, 1024).unwrap();
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
    (drafted, accepted)
}

#[test]
fn ngram_speculation_gives_the_tokens_of_plain_decoding() {
    let (model, tok) = common::model_and_tokenizer();
    let mut session = Session::new(&model, 1024).unwrap();
    let spec = Some(NgramSpeculation::default());
    let (drafted, accepted) = assert_same_output(&model, &tok, &mut session, spec, 64);
    eprintln!("n-gram speculation: {accepted} of {drafted} proposed tokens kept");
    assert!(
        accepted > 0,
        "no proposal was ever kept: the test checks nothing"
    );
}

/// The default model requantized to Q4_0, written once to `target/test-models/`.
fn q4_0_draft() -> PathBuf {
    // Tests of this process that need the draft wait for the first to write it.
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _only_one = WRITING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let path = common::test_models_dir().join("default-q4_0.gguf");
    if !path.exists() {
        let file = gguf::GgufFile::open(common::default_model()).unwrap();
        let draft =
            engine::requantize::requantize(&file, WeightMix::Uniform(GgmlType::Q4_0), || {})
                .unwrap();
        // Written aside and renamed, so that another test process never reads half a file.
        let partial = path.with_extension(format!("{}.partial", std::process::id()));
        draft.writer.write_file(&partial).unwrap();
        std::fs::rename(&partial, &path).unwrap();
    }
    path
}

/// The draft scores the first half of the vocabulary (`--draft-vocab`'s default) here;
/// the serving engine's draft below scores all of it.
#[test]
fn a_draft_model_gives_the_tokens_of_plain_decoding() {
    let (model, tok) = common::model_and_tokenizer();
    let (mut draft, _) = common::load_with_tokenizer(q4_0_draft());
    draft.limit_logits(model.config.vocab_size / 2).unwrap();
    let mut session = Session::new(&model, 1024).unwrap();
    // Eight proposals every round, however sure the draft is: what is proposed, and
    // so what is kept, does not depend on how long the passes took.
    let mut drafter = Drafter::new(&draft, model.config.vocab_size, 1024, 8, 0.0).unwrap();
    drafter.min_draft = 8;
    session.set_drafter(drafter);
    let (drafted, accepted) = assert_same_output(&model, &tok, &mut session, None, 48);
    eprintln!("draft model: {accepted} of {drafted} proposed tokens kept");
    // A Q4_0 copy of the model agrees with it most of the time, but not always: both
    // outcomes are exercised.
    assert!(
        accepted > 0 && accepted < drafted,
        "{accepted} of {drafted} proposals kept: the test checks too little"
    );
}

/// A draft scoring the vocabulary's first tokens gives their logits bit for bit as the
/// whole vocabulary's first, and refuses a count it cannot give.
#[test]
fn a_draft_scoring_part_of_the_vocabulary_gives_those_logits_unchanged() {
    let (draft, tok) = common::load_with_tokenizer(q4_0_draft());
    let (mut limited, _) = common::load_with_tokenizer(q4_0_draft());
    let vocab = draft.config.vocab_size;
    for bad in [0, vocab + 1] {
        let err = limited.limit_logits(bad).unwrap_err().to_string();
        assert!(err.contains(&vocab.to_string()), "{err}");
    }
    // 1000 is no multiple of the packed kernels' row groups: the last group is short.
    let prompt = tok.encode("def clamp(value, low, high):", true).unwrap();
    for tokens in [vocab / 2, 1000] {
        limited.limit_logits(tokens).unwrap();
        assert_eq!(limited.logit_width(), tokens);
        // Every prompt row (the batched order), then a decoded token (the one-token one).
        let (mut whole_cache, mut part_cache) = (
            draft.new_kv_cache(64).unwrap(),
            limited.new_kv_cache(64).unwrap(),
        );
        let whole = draft
            .forward(&prompt, 0, &mut whole_cache, Logits::All)
            .unwrap();
        let part = limited
            .forward(&prompt, 0, &mut part_cache, Logits::All)
            .unwrap();
        let at = prompt.len();
        let next = engine::sampler::argmax(&whole[(at - 1) * vocab..]);
        let decoded = [
            draft.decode(next, at, &mut whole_cache).unwrap(),
            limited.decode(next, at, &mut part_cache).unwrap(),
        ];
        let rows = whole.chunks(vocab).chain([&decoded[0][..]]);
        let part_rows = part.chunks(tokens).chain([&decoded[1][..]]);
        assert_eq!(rows.clone().count(), at + 1);
        for (i, (a, b)) in rows.zip(part_rows).enumerate() {
            assert_eq!(bits(&a[..tokens]), bits(b), "row {i}, {tokens} tokens");
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn a_draft_model_of_another_vocabulary_is_refused() {
    let (model, _) = common::model_and_tokenizer();
    let path =
        common::test_models_dir().join(format!("spec-other-vocab-{}.gguf", std::process::id()));
    engine::synthetic::SyntheticModel::preset("qwen3-tiny", WeightMix::Uniform(GgmlType::Q8_0))
        .unwrap()
        .write(&path)
        .unwrap();
    let (other, _) = common::load_with_tokenizer(path.clone());
    std::fs::remove_file(&path).unwrap();
    let err = match Drafter::new(&other, model.config.vocab_size, 256, 4, 0.5) {
        Ok(_) => panic!("a draft of another vocabulary was accepted"),
        Err(e) => e.to_string(),
    };
    let vocab = other.config.vocab_size.to_string();
    assert!(err.contains("vocabulary") && err.contains(&vocab), "{err}");
}

/// The 20 prompts as chat requests, sampled as `sampling_for` says.
fn chat_requests(tok: &Tokenizer, max_tokens: usize) -> Vec<Request> {
    chat_prompts(tok, &prompts())
        .into_iter()
        .enumerate()
        .map(|(i, ids)| Request {
            sampling: sampling_for(i),
            ..Request::greedy(ids, max_tokens)
        })
        .collect()
}

/// Submits `requests` all at once; each one's tokens.
fn generate_together(engine: &Engine, requests: &[Request]) -> Vec<Vec<u32>> {
    let streams: Vec<_> = requests
        .iter()
        .map(|r| engine.submit(r.clone()).unwrap())
        .collect();
    streams
        .into_iter()
        .map(|stream| {
            let mut tokens = Vec::new();
            for e in stream {
                match e {
                    Event::Token { id, .. } => tokens.push(id),
                    Event::Finished { error, .. } => assert_eq!(error, None),
                    Event::Prompt { .. } => {}
                }
            }
            tokens
        })
        .collect()
}

/// Each sample's tokens of a request with several samples (`n`).
fn samples(engine: &Engine, request: Request) -> Vec<Vec<u32>> {
    let mut tokens = vec![Vec::new(); request.n];
    for e in engine.submit(request).unwrap() {
        match e {
            Event::Token { index, id, .. } => tokens[index].push(id),
            Event::Finished { error, .. } => assert_eq!(error, None),
            Event::Prompt { .. } => {}
        }
    }
    tokens
}

/// A serving engine of the default model running up to eight sequences, speculating
/// with n-gram lookup or not.
fn serving_engine(speculation: Option<NgramSpeculation>) -> Engine {
    let (model, tok) = common::model_and_tokenizer();
    let config = EngineConfig {
        speculation,
        ..EngineConfig::new(1024, 8)
    };
    Engine::start(model, tok, config).unwrap()
}

/// Submits `requests` one after the other, each once the one before has finished.
fn generate_alone(engine: &Engine, requests: &[Request]) -> Vec<Vec<u32>> {
    requests
        .iter()
        .flat_map(|r| generate_together(engine, std::slice::from_ref(r)))
        .collect()
}

/// The serving engine speculating with n-gram lookup and with a draft model (the
/// default model in Q4_0 drafting for itself in Q4_1, four proposals every step).
fn speculating_engines() -> [(&'static str, Engine); 2] {
    let (model, tok) = common::model_and_tokenizer();
    let (draft, _) = common::load_with_tokenizer(q4_0_draft());
    let draft = DraftModel {
        model: draft,
        max_draft: 4,
        min_draft: 4,
        min_confidence: 0.0,
    };
    let drafting = Engine::start_with_draft(model, draft, tok, EngineConfig::new(1024, 8)).unwrap();
    [
        ("n-gram", serving_engine(Some(NgramSpeculation::default()))),
        ("draft model", drafting),
    ]
}

#[test]
fn the_serving_engine_speculates_without_changing_tokens_alone_or_among_eight() {
    let plain = serving_engine(None);
    let requests = chat_requests(plain.tokenizer(), 48);
    let reference = generate_alone(&plain, &requests);
    let p = common::settled(&plain);
    // Three seeded samples of one request: forks speculate on their own.
    let forked = Request {
        n: 3,
        sampling: SamplingParams {
            temperature: 0.7,
            seed: 42,
            ..Default::default()
        },
        ..requests[0].clone()
    };
    let forked_samples = samples(&plain, forked.clone());
    assert_ne!(forked_samples[0], forked_samples[1]);
    for (proposer, speculating) in speculating_engines() {
        let speculated_alone = generate_alone(&speculating, &requests);
        let after_alone = common::settled(&speculating);
        let speculated_together = generate_together(&speculating, &requests);
        for (i, want) in reference.iter().enumerate() {
            assert_eq!(&speculated_alone[i], want, "{proposer}: prompt {i} alone");
            assert_eq!(
                &speculated_together[i], want,
                "{proposer}: prompt {i} among eight"
            );
        }
        let s = common::settled(&speculating);
        eprintln!(
            "serving {proposer} speculation: {} of {} proposed tokens kept ({} alone), {} steps \
             against {} plain for the same requests alone",
            s.speculative_accepted_tokens,
            s.speculative_proposed_tokens,
            after_alone.speculative_accepted_tokens,
            after_alone.steps,
            p.steps
        );
        // Both outcomes happen, alone and together, and speculating saved steps.
        assert!(
            0 < after_alone.speculative_accepted_tokens
                && after_alone.speculative_accepted_tokens
                    < after_alone.speculative_proposed_tokens,
            "{proposer}: {after_alone:?}"
        );
        assert!(
            s.speculative_proposed_tokens > after_alone.speculative_proposed_tokens,
            "{proposer}: nothing was proposed among eight: {s:?}"
        );
        assert!(
            after_alone.steps < p.steps,
            "{proposer}: {after_alone:?} against {p:?}"
        );
        assert_eq!(s.generated_tokens, 2 * p.generated_tokens);
        // Every block came back, the draft's too, and the prefix cache holds the
        // prompts' blocks alone: the blocks of rejected tokens left no trace.
        assert_eq!((s.kv_blocks_used, p.kv_blocks_used), (0, 0), "{proposer}");
        assert_eq!(s.kv_blocks_cached, p.kv_blocks_cached, "{proposer}");
        assert_eq!(s.draft_kv_blocks_used, 0, "{proposer}");
        assert_eq!(
            samples(&speculating, forked.clone()),
            forked_samples,
            "{proposer}: n = 3"
        );
        let s = common::settled(&speculating);
        assert_eq!(
            (s.kv_blocks_used, s.draft_kv_blocks_used),
            (0, 0),
            "{proposer}"
        );
    }
    assert_eq!(plain.metrics().speculative_proposed_tokens, 0);
}

#[test]
fn constrained_requests_speculate_within_their_grammar_without_changing_tokens() {
    let plain = serving_engine(None);
    let speculating = serving_engine(Some(NgramSpeculation::default()));
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "city": {"type": "string"},
            "note": {"type": "string"}
        },
        "required": ["name", "city", "note"],
        "additionalProperties": false
    });
    let grammar = plain
        .grammars()
        .unwrap()
        .compile(&Constraint::JsonSchema {
            schema,
            strict: false,
        })
        .unwrap();
    let texts = [
        "name Alice Smith; city Paris; note Prefers the window seat on every long flight.",
        "name Bob Jones; city Berlin; note Allergic to peanuts, tree nuts and shellfish.",
        "name Carol White; city Lisbon; note Arrives late on Friday, leaves early on Sunday.",
        "name Dan Brown; city Oslo; note Wants the quiet room at the end of the corridor.",
    ]
    .map(|t| format!("Copy this record into a JSON object with the keys name, city and note, word for word: {t}"));
    let requests: Vec<Request> = chat_prompts(plain.tokenizer(), &texts)
        .into_iter()
        .map(|ids| Request {
            constraint: Some(grammar.clone()),
            ..Request::greedy(ids, 64)
        })
        .collect();
    let reference = generate_alone(&plain, &requests);
    let speculated_alone = generate_alone(&speculating, &requests);
    let speculated_together = generate_together(&speculating, &requests);
    for (i, want) in reference.iter().enumerate() {
        assert_eq!(&speculated_alone[i], want, "record {i} alone");
        assert_eq!(&speculated_together[i], want, "record {i} together");
    }
    let s = common::settled(&speculating);
    eprintln!(
        "constrained n-gram speculation: {} of {} proposed tokens kept",
        s.speculative_accepted_tokens, s.speculative_proposed_tokens
    );
    assert!(s.speculative_accepted_tokens > 0, "{s:?}");
    assert_eq!(s.kv_blocks_used, 0);
}
