//! The serving engine: batching, chunking, prefix reuse, preemption and cancellation
//! never change a request's tokens, and every KV block comes back. The core of it runs
//! on the default model and on Gemma 3 270M (sliding-window layers, a 262k vocabulary),
//! with a prompt three windows long among short ones.

use crate::common;
use engine::{
    Engine, EngineConfig, EngineError, Event, KvBudget, Logits, Request, SamplingParams, Tokenizer,
};
use std::time::{Duration, Instant};

#[derive(Clone, Copy)]
enum Model {
    Default,
    Gemma3,
}

fn engine_on(model: Model, config: EngineConfig) -> Engine {
    let (m, tok) = match model {
        Model::Default => common::model_and_tokenizer(),
        Model::Gemma3 => common::load_with_tokenizer(common::gemma3_model()),
    };
    Engine::start(m, tok, config).unwrap()
}

fn engine(config: EngineConfig) -> Engine {
    engine_on(Model::Default, config)
}

/// The tests in `$name`s run on each model, as `default_model::NAME` and `gemma3::NAME`.
macro_rules! on_both_models {
    ($($name:ident),* $(,)?) => {
        mod default_model {
            $(#[test]
            fn $name() {
                super::$name(super::Model::Default)
            })*
        }
        mod gemma3 {
            $(#[test]
            fn $name() {
                super::$name(super::Model::Gemma3)
            })*
        }
    };
}

on_both_models!(
    sixteen_concurrent_greedy_requests_give_the_tokens_each_gives_alone,
    prefix_reuse_gives_the_same_output_as_no_reuse,
    preemption_under_a_tiny_kv_budget_still_completes_every_request_correctly,
    cancelling_half_the_requests_mid_stream_returns_every_kv_block,
    a_prompt_three_windows_long_is_the_same_alone_chunked_batched_and_cached,
);

/// Sixteen different prompts of different lengths.
fn prompts(tok: &Tokenizer) -> Vec<Vec<u32>> {
    let topics = [
        "the sea",
        "a red bicycle",
        "why cats purr",
        "the history of bread",
        "volcanoes",
        "learning the piano",
        "a rainy Tuesday",
        "how bridges stand",
        "the moon landing",
        "growing tomatoes",
        "a lighthouse keeper",
        "prime numbers",
        "the first computer",
        "autumn leaves",
        "a lost key",
        "honey bees",
    ];
    topics
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let text = format!("Write {} sentences about {t}.", i % 4 + 1);
            tok.encode(&text, true).unwrap()
        })
        .collect()
}

/// (tokens of each sample, usage of each sample) once the stream ends.
fn collect(stream: engine::RequestStream) -> (Vec<Vec<u32>>, Vec<engine::Usage>) {
    let mut tokens: Vec<Vec<u32>> = Vec::new();
    let mut usage = Vec::new();
    for e in stream {
        match e {
            Event::Token { index, id, .. } => {
                if tokens.len() <= index {
                    tokens.resize(index + 1, Vec::new());
                }
                tokens[index].push(id);
            }
            Event::Prompt { .. } => {}
            Event::Finished {
                index,
                usage: u,
                error,
                ..
            } => {
                assert_eq!(error, None);
                if usage.len() <= index {
                    usage.resize(index + 1, engine::Usage::default());
                }
                usage[index] = u;
            }
        }
    }
    (tokens, usage)
}

fn run_alone(engine: &Engine, request: Request) -> Vec<u32> {
    collect(engine.submit(request).unwrap()).0.remove(0)
}

fn greedy(prompt: &[u32], max_tokens: usize) -> Request {
    Request {
        ignore_eos: true,
        ..Request::greedy(prompt.to_vec(), max_tokens)
    }
}

fn sixteen_concurrent_greedy_requests_give_the_tokens_each_gives_alone(model: Model) {
    let e = engine_on(model, EngineConfig::new(512, 16));
    let prompts = prompts(e.tokenizer());
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| run_alone(&e, greedy(p, 24)))
        .collect();
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| e.submit(greedy(p, 24)).unwrap())
        .collect();
    let together: Vec<Vec<u32>> = streams
        .into_iter()
        .map(|s| collect(s).0.remove(0))
        .collect();
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, b, "prompt {i} changed in a batch of 16");
    }
    assert_eq!(common::settled(&e).kv_blocks_used, 0);
}

fn prefix_reuse_gives_the_same_output_as_no_reuse(model: Model) {
    let system = "You are a careful assistant. Answer in plain words, without lists, and keep \
                  every answer short. The user is a student of physics who asks about the \
                  things she sees every day, and she likes examples from the kitchen.";
    let questions = [
        "Why is the sky blue?",
        "What is inertia?",
        "Why is the sky blue?",
    ];

    let mut no_cache_config = EngineConfig::new(512, 4);
    no_cache_config.prefix_caching = false;
    let plain = engine_on(model, no_cache_config);
    let cached = engine_on(model, EngineConfig::new(512, 4));
    let tok = cached.tokenizer();
    let ask = |q: &str| {
        tok.encode(&format!("{system}\n\nQuestion: {q}\nAnswer:"), true)
            .unwrap()
    };
    for (i, q) in questions.iter().enumerate() {
        let want = run_alone(&plain, greedy(&ask(q), 16));
        let (got, usage) = collect(cached.submit(greedy(&ask(q), 16)).unwrap());
        assert_eq!(got[0], want, "{q}");
        if i > 0 {
            // Every full block shared with an earlier prompt, short of the last token.
            let prompt = ask(q);
            let shared = questions[..i]
                .iter()
                .map(|earlier| common_prefix(&prompt, &ask(earlier)))
                .max()
                .unwrap();
            let reusable = shared.min(prompt.len() - 1) / 16 * 16;
            assert!(reusable >= 32);
            assert!(usage[0].cached_prompt_tokens >= reusable, "{usage:?}");
        }
    }
    // The repeated question reuses all but the last partial block of its prompt.
    let m = cached.metrics();
    assert!(m.prefix_hit_rate() > 0.5, "{m:?}");
    assert_eq!(plain.metrics().prefix_hit_tokens, 0);
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// About 1,500 tokens of prose: three of Gemma 3's 512-position windows.
fn long_prompt(tok: &Tokenizer) -> Vec<u32> {
    let text = std::fs::read_to_string(common::refs("ppl_text.txt")).unwrap();
    let mut ids = tok.encode(&text[..12_000], false).unwrap();
    assert!(ids.len() > 1_500);
    ids.truncate(1_500);
    ids
}

fn a_prompt_three_windows_long_is_the_same_alone_chunked_batched_and_cached(model: Model) {
    // Alone, the whole prompt in one step.
    let mut whole = EngineConfig::new(2048, 1);
    whole.max_batch_tokens = 2048;
    whole.step_target = None;
    let reference = engine_on(model, whole);
    let long = long_prompt(reference.tokenizer());
    let short: Vec<Vec<u32>> = prompts(reference.tokenizer()).into_iter().take(3).collect();
    let want_long = run_alone(&reference, greedy(&long, 16));
    let want_short: Vec<Vec<u32>> = short
        .iter()
        .map(|p| run_alone(&reference, greedy(p, 16)))
        .collect();

    // Among three short requests, the prompt read in chunks of at most 200 tokens.
    let mut chunked = EngineConfig::new(2048, 4);
    chunked.max_batch_tokens = 200;
    let e = engine_on(model, chunked);
    let long_stream = e.submit(greedy(&long, 16)).unwrap();
    let short_streams: Vec<_> = short
        .iter()
        .map(|p| e.submit(greedy(p, 16)).unwrap())
        .collect();
    assert_eq!(
        collect(long_stream).0[0],
        want_long,
        "the long prompt, batched"
    );
    for (i, s) in short_streams.into_iter().enumerate() {
        assert_eq!(collect(s).0[0], want_short[i], "short prompt {i}, batched");
    }

    // Again, from the prefix cache.
    let (tokens, usage) = collect(e.submit(greedy(&long, 16)).unwrap());
    assert_eq!(tokens[0], want_long, "the long prompt, cached");
    assert_eq!(usage[0].cached_prompt_tokens, (long.len() - 1) / 16 * 16);
    assert_eq!(common::settled(&e).kv_blocks_used, 0);
}

/// Greedy tokens through one sequence's own cache (`Llama::forward`/`decode`), which
/// keeps every position of every layer: an oracle for the engine's given-back blocks.
fn greedy_without_the_engine(model: Model, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let (m, _) = match model {
        Model::Default => common::model_and_tokenizer(),
        Model::Gemma3 => common::load_with_tokenizer(common::gemma3_model()),
    };
    let mut cache = m.new_kv_cache(prompt.len() + max_tokens).unwrap();
    let argmax = |logits: &[f32]| {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    let mut out = vec![argmax(
        &m.forward(prompt, 0, &mut cache, Logits::Last).unwrap(),
    )];
    while out.len() < max_tokens {
        let position = prompt.len() + out.len() - 1;
        let logits = m.decode(out[out.len() - 1], position, &mut cache).unwrap();
        out.push(argmax(&logits));
    }
    out
}

#[test]
fn gemma3_windowed_layers_hold_only_the_blocks_in_sight() {
    let mut config = EngineConfig::new(2048, 2);
    config.max_batch_tokens = 200;
    let e = engine_on(Model::Gemma3, config);
    let long = long_prompt(e.tokenizer());
    let max_tokens = 40;
    let mut got = Vec::new();
    for event in e.submit(greedy(&long, max_tokens)).unwrap() {
        if let Event::Token { id, .. } = event {
            got.push(id);
            // The gauges are at least as new as the step before this token's. After a
            // prompt chunk of 200: its blocks and the window's before it; once decoding
            // (the third token on): the window's 512 positions span at most 33 blocks,
            // and the block being written is one of them or the next, while the full
            // pool holds every position.
            let m = e.metrics();
            let decoding = got.len() >= 3 && m.running > 0;
            let in_sight = match decoding {
                false => (512 + 200) / 16 + 2,
                true => 512 / 16 + 2,
            };
            assert!(m.kv_window_blocks_used <= in_sight, "{m:?}");
            let full = (long.len() + got.len() - 2) / 16;
            assert!(!decoding || m.kv_blocks_used >= full, "{m:?}");
        }
    }
    let m = common::settled(&e);
    assert_eq!((m.kv_blocks_used, m.kv_window_blocks_used), (0, 0));
    // Two sequences' windows and a chunk, not two whole contexts.
    assert!(m.kv_window_blocks_total * 3 < m.kv_blocks_total, "{m:?}");
    assert_eq!(
        got,
        greedy_without_the_engine(Model::Gemma3, &long, max_tokens)
    );
}

fn preemption_under_a_tiny_kv_budget_still_completes_every_request_correctly(model: Model) {
    let reference = engine_on(model, EngineConfig::new(256, 1));
    let prompts: Vec<Vec<u32>> = prompts(reference.tokenizer()).into_iter().take(4).collect();
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| run_alone(&reference, greedy(p, 40)))
        .collect();

    let mut tiny = EngineConfig::new(256, 4);
    tiny.kv_budget = KvBudget::Tokens(7 * 16);
    let e = engine_on(model, tiny);
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| e.submit(greedy(p, 40)).unwrap())
        .collect();
    for (i, s) in streams.into_iter().enumerate() {
        assert_eq!(collect(s).0[0], alone[i], "request {i}");
    }
    let m = common::settled(&e);
    assert!(
        m.preemptions > 0,
        "the budget was meant to force preemption: {m:?}"
    );
    assert_eq!(m.kv_blocks_used, 0);
}

fn cancelling_half_the_requests_mid_stream_returns_every_kv_block(model: Model) {
    let e = engine_on(model, EngineConfig::new(512, 8));
    let prompts = prompts(e.tokenizer());
    let mut streams: Vec<_> = prompts[..8]
        .iter()
        .map(|p| e.submit(greedy(p, 200)).unwrap())
        .collect();
    for s in streams.iter_mut() {
        for _ in 0..3 {
            assert!(matches!(s.next(), Some(Event::Token { .. })));
        }
    }
    assert!(e.metrics().kv_blocks_used > 0);
    let kept: Vec<_> = streams.into_iter().step_by(2).collect();
    for s in kept {
        let mut last = None;
        for ev in s {
            last = Some(ev);
        }
        assert!(matches!(
            last,
            Some(Event::Finished {
                reason: engine::FinishReason::Length,
                ..
            })
        ));
    }
    let m = common::settled(&e);
    assert_eq!(m.kv_blocks_used, 0, "{m:?}");
    assert_eq!(m.requests_finished, 8);
}

#[test]
fn a_full_queue_refuses_at_once_and_nothing_hangs() {
    let mut config = EngineConfig::new(256, 1);
    config.max_waiting = 2;
    let e = engine(config);
    let prompt = e.tokenizer().encode("Tell me a long story.", true).unwrap();
    let mut first = e.submit(greedy(&prompt, 200)).unwrap();
    assert!(matches!(first.next(), Some(Event::Token { .. })));
    let _second = e.submit(greedy(&prompt, 5)).unwrap();
    let _third = e.submit(greedy(&prompt, 5)).unwrap();
    let t0 = Instant::now();
    let refused = e.submit(greedy(&prompt, 5));
    assert!(t0.elapsed() < Duration::from_millis(100));
    match refused {
        Err(EngineError::Overloaded {
            waiting: 2,
            limit: 2,
        }) => {}
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a fourth request was accepted"),
    }
    assert_eq!(e.metrics().requests_refused, 1);
    drop(first);
    // Shutdown with requests still queued ends them instead of waiting for them.
    let t0 = Instant::now();
    drop(e);
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn requests_that_can_never_run_are_refused_with_both_numbers() {
    let mut config = EngineConfig::new(64, 2);
    config.kv_budget = KvBudget::Tokens(32);
    let e = engine(config);
    let long: Vec<u32> = (0..40).map(|i| 100 + i).collect();
    let err = e.submit(greedy(&long, 4)).err().unwrap();
    assert!(
        matches!(
            err,
            EngineError::KvBudget {
                tokens: 40,
                capacity: 32
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("40") && err.to_string().contains("32"));
    let too_long: Vec<u32> = (0..64).map(|i| 100 + i).collect();
    let err = e.submit(greedy(&too_long, 4)).err().unwrap();
    assert!(
        matches!(
            err,
            EngineError::ContextOverflow {
                tokens: 64,
                context: 64
            }
        ),
        "{err}"
    );
    let err = e.submit(greedy(&[5_000_000], 4)).err().unwrap();
    assert!(matches!(err, EngineError::BadToken { .. }), "{err}");
    assert!(e.submit(greedy(&[], 4)).is_err());
}

#[test]
fn parallel_samples_share_the_prompt_and_match_single_requests() {
    let e = engine(EngineConfig::new(512, 4));
    let prompt = e.tokenizer().encode("Once upon a time", true).unwrap();
    let sampled = |seed: u64, n: usize| Request {
        sampling: SamplingParams {
            temperature: 0.9,
            seed,
            ..Default::default()
        },
        n,
        ..greedy(&prompt, 20)
    };
    let (three, usage) = collect(e.submit(sampled(7, 3)).unwrap());
    assert_eq!(three.len(), 3);
    assert_eq!(
        usage
            .iter()
            .map(|u| u.completion_tokens)
            .collect::<Vec<_>>(),
        [20, 20, 20]
    );
    for (i, tokens) in three.iter().enumerate() {
        assert_eq!(
            *tokens,
            run_alone(&e, sampled(7 + i as u64, 1)),
            "sample {i}"
        );
    }
    assert_ne!(three[0], three[1]);
    assert_eq!(common::settled(&e).kv_blocks_used, 0);
}

#[test]
fn logprobs_are_reported_when_asked() {
    let e = engine(EngineConfig::new(256, 1));
    let prompt = e
        .tokenizer()
        .encode("The capital of France is", true)
        .unwrap();
    let request = Request {
        logprobs: Some(3),
        ..greedy(&prompt, 3)
    };
    for ev in e.submit(request).unwrap() {
        if let Event::Token {
            id,
            logprob,
            top_logprobs,
            ..
        } = ev
        {
            let lp = logprob.unwrap();
            assert_eq!(top_logprobs.len(), 3);
            // Greedy: the chosen token is the most likely one.
            assert_eq!(top_logprobs[0], (id, lp));
            assert!(lp <= 0.0 && top_logprobs[1].1 <= lp);
        }
    }
}

#[test]
fn prompt_logprobs_score_every_prompt_token_as_a_whole_forward_pass_does() {
    let mut config = EngineConfig::new(256, 2);
    // Chunks of 5 tokens: the scores must not depend on how the prompt is split.
    config.max_batch_tokens = 5;
    let e = engine(config);
    let prompt = e
        .tokenizer()
        .encode(
            "The capital of France is Paris, and Rome is the capital of Italy.",
            true,
        )
        .unwrap();
    // Once to fill the prefix cache: scoring must compute the prompt all the same.
    run_alone(&e, greedy(&prompt, 1));
    let request = Request {
        prompt_logprobs: Some(2),
        logprobs: Some(2),
        ..greedy(&prompt, 2)
    };
    let mut scored = None;
    for ev in e.submit(request).unwrap() {
        if let Event::Prompt { logprobs } = ev {
            assert!(scored.is_none(), "sent once");
            scored = Some(logprobs);
        }
    }
    let scored = scored.expect("an Event::Prompt");
    assert_eq!(scored.len(), prompt.len());
    assert_eq!(scored[0].logprob, None);

    let (model, _) = common::model_and_tokenizer();
    let mut session = engine::Session::new(&model, 256).unwrap();
    let rows = session.forward_at(&prompt, 0, engine::Logits::All).unwrap();
    let vocab = model.config.vocab_size;
    for (i, entry) in scored.iter().enumerate().skip(1) {
        assert_eq!(entry.id, prompt[i]);
        let row = &rows[(i - 1) * vocab..i * vocab];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let log_sum = max
            + row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let want = (row[prompt[i] as usize] as f64 - log_sum) as f32;
        let got = entry.logprob.unwrap();
        assert!((got - want).abs() < 1e-4, "token {i}: {got} vs {want}");
        assert_eq!(entry.top_logprobs.len(), 2);
    }
}
