//! Constrained decoding on the default model: the grammar's vocabulary is ours, output
//! always matches, and a constrained request gives the same tokens alone and batched.

use crate::common;
use engine::{
    ChatTemplate, Constraint, ContentTokens, Engine, EngineConfig, Event, FinishReason, Message,
    Request, Tokenizer,
};
use serde_json::{json, Value};

fn engine(parallel: usize) -> (Engine, ChatTemplate) {
    let (m, tok) = common::model_and_tokenizer();
    let file = gguf::GgufFile::open(common::default_model()).unwrap();
    let template = ChatTemplate::from_metadata(&file.gguf.metadata).unwrap();
    (
        Engine::start(m, tok, EngineConfig::new(2048, parallel)).unwrap(),
        template,
    )
}

fn chat_prompt(engine: &Engine, template: &ChatTemplate, text: &str) -> Vec<u32> {
    let msgs = [Message::new("user", text)];
    let extra = serde_json::Map::new();
    template
        .encode(engine.tokenizer(), &msgs, true, &extra, ContentTokens::Text)
        .unwrap()
}

/// The text and finish reason of one constrained greedy request.
fn generate(engine: &Engine, prompt: Vec<u32>, c: &Constraint, max: usize) -> Output {
    let mut request = Request::greedy(prompt, max);
    request.constraint = Some(engine.grammars().unwrap().compile(c).unwrap());
    collect(engine.submit(request).unwrap())
}

#[derive(Debug, PartialEq)]
struct Output {
    ids: Vec<u32>,
    text: String,
    finish: FinishReason,
}

fn collect(stream: engine::RequestStream) -> Output {
    let mut out = Output {
        ids: Vec::new(),
        text: String::new(),
        finish: FinishReason::Error,
    };
    for e in stream {
        match e {
            Event::Token { id, text, .. } => {
                out.ids.push(id);
                out.text.push_str(&text);
            }
            Event::Finished { reason, error, .. } => {
                assert_eq!(error, None);
                out.finish = reason;
            }
            Event::Prompt { .. } => {}
        }
    }
    out
}

/// A sample cut by `max_tokens` is a prefix the grammar accepts.
fn assert_valid_prefix(engine: &Engine, c: &Constraint, out: &Output) {
    assert_eq!(out.finish, FinishReason::Length);
    let mut state = engine.grammars().unwrap().compile(c).unwrap();
    for &id in &out.ids {
        state.consume(id).unwrap();
    }
}

#[test]
fn the_grammar_vocabulary_is_our_detokenizer_s() {
    let (m, tok) = common::model_and_tokenizer();
    let vocab = m.config.vocab_size;
    let grammars = engine::Grammars::new(std::sync::Arc::new(tok), vocab).unwrap();
    let trie = grammars.trie();
    let (_, tok): (_, Tokenizer) = common::model_and_tokenizer();
    assert_eq!(trie.vocab_size(), 49152);
    let mut controls = 0;
    for id in 0..vocab as u32 {
        if tok.is_control(id) {
            controls += 1;
            assert!(trie.is_special_token(id), "{id}");
            assert_eq!(&trie.token(id)[1..], tok.token_bytes(id));
        } else {
            assert_eq!(trie.token(id), tok.token_bytes(id), "{id}");
        }
    }
    assert!(controls > 0);
    let mut eos = trie.eos_tokens().to_vec();
    eos.sort_unstable();
    assert_eq!(eos, tok.end_of_generation_tokens());
}

#[test]
fn json_object_regex_choice_and_lark_outputs_match() {
    let (engine, template) = engine(4);
    let prompt = chat_prompt(&engine, &template, "Describe a cat as JSON.");
    let out = generate(&engine, prompt.clone(), &Constraint::JsonObject, 256);
    if out.finish == FinishReason::Stop {
        let v: Value = serde_json::from_str(&out.text).unwrap();
        assert!(v.is_object());
    } else {
        assert_valid_prefix(&engine, &Constraint::JsonObject, &out);
    }
    let short = generate(&engine, prompt.clone(), &Constraint::JsonObject, 5);
    assert_eq!(short.finish, FinishReason::Length);
    assert_eq!(short.ids.len(), 5);
    assert!(out.text.starts_with(&short.text));

    let out = generate(
        &engine,
        prompt.clone(),
        &Constraint::Regex(r"[A-Z][a-z]+ is (\d{1,2}) years old\.".into()),
        64,
    );
    let re = regex::Regex::new(r"^[A-Z][a-z]+ is (\d{1,2}) years old\.$").unwrap();
    assert!(re.is_match(&out.text), "{out:?}");
    assert_eq!(out.finish, FinishReason::Stop);

    let choices = vec!["yes".to_string(), "no".into(), "it depends".into()];
    let out = generate(
        &engine,
        prompt.clone(),
        &Constraint::Choice(choices.clone()),
        16,
    );
    assert!(choices.contains(&out.text), "{out:?}");

    let lark = r#"start: "The answer is " NUMBER "."
NUMBER: /[0-9]+/"#;
    let out = generate(&engine, prompt.clone(), &Constraint::Lark(lark.into()), 32);
    assert!(
        out.text.starts_with("The answer is ") && out.text.ends_with('.'),
        "{out:?}"
    );

    let gbnf = "root ::= \"Colors: \" color (\", \" color){2} \".\"\ncolor ::= \"red\" | \"green\" | \"blue\"\n";
    let out = generate(&engine, prompt, &Constraint::Gbnf(gbnf.into()), 32);
    let re = regex::Regex::new(r"^Colors: (red|green|blue)(, (red|green|blue)){2}\.$").unwrap();
    assert!(re.is_match(&out.text), "{out:?}");
    assert_eq!(out.finish, FinishReason::Stop);
}

#[test]
fn a_constrained_request_gives_the_same_tokens_alone_and_among_eight_others() {
    let (engine, template) = engine(9);
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 3}
        },
        "required": ["name", "age", "hobbies"],
        "additionalProperties": false
    });
    let c = Constraint::JsonSchema {
        schema,
        strict: true,
    };
    let prompt = chat_prompt(&engine, &template, "Invent a person.");
    let alone = generate(&engine, prompt.clone(), &c, 200);
    assert_eq!(alone.finish, FinishReason::Stop, "{alone:?}");
    let v: Value = serde_json::from_str(&alone.text).unwrap();
    assert!(v["age"].is_u64() && v["name"].is_string(), "{alone:?}");

    let grammars = engine.grammars().unwrap();
    let mut streams = Vec::new();
    for i in 0..9 {
        let p = if i == 4 {
            prompt.clone()
        } else {
            chat_prompt(&engine, &template, &format!("Invent person number {i}."))
        };
        let mut r = Request::greedy(p, 200);
        if i % 2 == 0 {
            r.constraint = Some(grammars.compile(&c).unwrap());
        }
        streams.push(engine.submit(r).unwrap());
    }
    let outputs: Vec<Output> = streams.into_iter().map(collect).collect();
    assert_eq!(outputs[4], alone);
    for o in outputs.iter().step_by(2) {
        serde_json::from_str::<Value>(&o.text).unwrap();
    }
}

#[test]
fn bad_constraints_are_refused_with_the_reason() {
    let (engine, _) = engine(1);
    let grammars = engine.grammars().unwrap();
    for (c, says) in [
        (Constraint::Regex("(unclosed".into()), "regex"),
        (
            Constraint::Lark("start: missing_rule".into()),
            "missing_rule",
        ),
        (
            Constraint::JsonSchema {
                schema: json!({"type": "object", "properties": {"a": {"$ref": "#/defs/none"}}}),
                strict: true,
            },
            "defs",
        ),
        (Constraint::Choice(vec![]), "empty"),
        (
            Constraint::JsonSchema {
                schema: json!({"type": "array", "uniqueItems": true}),
                strict: true,
            },
            "uniqueitems",
        ),
    ] {
        let e = grammars.compile(&c).unwrap_err().to_string();
        assert!(e.to_lowercase().contains(says), "{c:?}: {e}");
    }
    // Without `strict`, a keyword llguidance cannot enforce is ignored.
    let lenient = Constraint::JsonSchema {
        schema: json!({"type": "array", "uniqueItems": true}),
        strict: false,
    };
    assert!(grammars.compile(&lenient).is_ok());
}

#[test]
fn fifty_schemas_give_valid_json_or_a_valid_prefix() {
    let (engine, template) = engine(8);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/structured/schemas.jsonl"
    );
    let cases: Vec<Value> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(cases.len() >= 50);
    let grammars = engine.grammars().unwrap();
    let mut streams = Vec::new();
    for case in &cases {
        let c = Constraint::JsonSchema {
            schema: case["schema"].clone(),
            strict: true,
        };
        let text = format!("{} Answer in JSON.", case["prompt"].as_str().unwrap());
        let mut r = Request::greedy(chat_prompt(&engine, &template, &text), 512);
        r.constraint = Some(
            grammars
                .compile(&c)
                .unwrap_or_else(|e| panic!("{case}: {e}")),
        );
        streams.push((c, engine.submit(r).unwrap()));
    }
    let mut stopped = 0;
    for ((c, stream), case) in streams.into_iter().zip(&cases) {
        let out = collect(stream);
        if out.finish == FinishReason::Length {
            assert_valid_prefix(&engine, &c, &out);
            continue;
        }
        assert_eq!(out.finish, FinishReason::Stop);
        let value: Value =
            serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        let validator = jsonschema::validator_for(&case["schema"]).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{case}\n{}\n{errors:?}", out.text);
        stopped += 1;
    }
    assert!(stopped >= 45, "only {stopped} of {} finished", cases.len());
}

#[test]
fn constraints_survive_preemption_the_prefix_cache_and_n_samples() {
    let (roomy, template) = engine(4);
    let c = Constraint::JsonSchema {
        schema: json!({"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}, "count": {"type": "integer", "minimum": 1, "maximum": 9}, "note": {"type": "string", "maxLength": 30}}, "required": ["color", "count", "note"], "additionalProperties": false}),
        strict: true,
    };
    let prompts: Vec<Vec<u32>> = ["a fruit", "the sky", "a frog", "a rose"]
        .iter()
        .map(|t| chat_prompt(&roomy, &template, &format!("Describe {t} as JSON.")))
        .collect();
    let alone: Vec<Output> = prompts
        .iter()
        .map(|p| generate(&roomy, p.clone(), &c, 60))
        .collect();
    // Again: the prompts now come from the prefix cache.
    for (p, want) in prompts.iter().zip(&alone) {
        assert_eq!(&generate(&roomy, p.clone(), &c, 60), want);
    }

    let (m, tok) = common::model_and_tokenizer();
    let mut tiny = EngineConfig::new(256, 4);
    tiny.kv_budget = engine::KvBudget::Tokens(7 * 16);
    // Shared system-prompt blocks would leave room for everyone.
    tiny.prefix_caching = false;
    let small = Engine::start(m, tok, tiny).unwrap();
    let grammars = small.grammars().unwrap();
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| {
            let mut r = Request::greedy(p.clone(), 60);
            r.constraint = Some(grammars.compile(&c).unwrap());
            small.submit(r).unwrap()
        })
        .collect();
    for (s, want) in streams.into_iter().zip(&alone) {
        assert_eq!(&collect(s), want);
    }
    assert!(
        small.metrics().preemptions > 0,
        "the budget was meant to preempt"
    );

    // Two sampled answers of one request each follow their own matcher.
    let mut r = Request::greedy(prompts[0].clone(), 60);
    r.n = 2;
    r.sampling.temperature = 1.0;
    r.sampling.seed = 7;
    r.constraint = Some(roomy.grammars().unwrap().compile(&c).unwrap());
    let mut texts = vec![String::new(); 2];
    for e in roomy.submit(r).unwrap() {
        if let Event::Token { index, text, .. } = e {
            texts[index].push_str(&text);
        }
    }
    for t in &texts {
        let v: Value = serde_json::from_str(t).unwrap_or_else(|e| panic!("{e}: {t}"));
        assert!(v["count"].is_u64(), "{v}");
    }
}

#[test]
fn a_grammar_counts_the_tokens_it_would_accept_without_following_them() {
    let (engine, _) = engine(1);
    let tok = engine.tokenizer();
    let mut grammar = engine
        .grammars()
        .unwrap()
        .compile(&Constraint::Regex(r"[0-9]+ apples\.".into()))
        .unwrap();
    let fits = tok.encode("12 apples.", false).unwrap();
    let strays = tok.encode("12 pears.", false).unwrap();
    assert_eq!(grammar.valid_prefix(&fits), fits.len());
    let valid = grammar.valid_prefix(&strays);
    assert!(valid < strays.len(), "{valid} of {strays:?}");
    assert_eq!(valid, tok.encode("12", false).unwrap().len());
    // Nothing was followed: the whole sentence still fits, and the grammar still
    // expects a number first.
    assert_eq!(grammar.valid_prefix(&fits), fits.len());
    assert_eq!(
        grammar.valid_prefix(&tok.encode(" apples", false).unwrap()),
        0
    );
}
