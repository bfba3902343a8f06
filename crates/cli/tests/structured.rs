//! Structured output and tool calling through `llama-gpu serve` on the default model:
//! replies are valid, streams reassemble to the same message, and bad constraints are
//! a 400 that leaves the server healthy.

use crate::common;
use common::server::Server;
use serde_json::{json, Value};

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "search_web", "description": "Search the web",
            "parameters": {"type": "object", "properties": {"query": {"type": "string", "maxLength": 60}, "max_results": {"type": "integer", "minimum": 1, "maximum": 10}}, "required": ["query", "max_results"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "create_event", "description": "Put an event in the calendar",
            "parameters": {"type": "object", "properties": {"title": {"type": "string", "maxLength": 40}, "date": {"type": "string", "format": "date"}, "attendees": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3}}, "required": ["title", "date", "attendees"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "convert_currency", "description": "Convert money between currencies",
            "parameters": {"type": "object", "properties": {"amount": {"type": "number", "minimum": 0, "maximum": 1000000}, "from": {"type": "string", "pattern": "^[A-Z]{3}$"}, "to": {"type": "string", "pattern": "^[A-Z]{3}$"}}, "required": ["amount", "from", "to"], "additionalProperties": false}}}
    ])
}

const PROMPTS: [&str; 20] = [
    "What is the weather in Paris?",
    "Is it raining in London right now?",
    "How hot is it in Cairo today, in fahrenheit?",
    "Find recent news about solar power.",
    "Search for the best pizza recipe.",
    "Look up who won the last world cup.",
    "Schedule a team meeting on 2027-01-15 with Ana and Bo.",
    "Add my dentist appointment on 2026-12-20 to the calendar.",
    "Create an event called Launch party for next Friday.",
    "Convert 100 USD to EUR.",
    "How many yen is 250 dollars?",
    "Change 75 GBP into CHF.",
    "Tell me a joke.",
    "What is 12 times 7?",
    "Write a haiku about autumn.",
    "Who wrote Pride and Prejudice?",
    "Weather in Tokyo and a search for sushi places, please.",
    "Is it cold in Oslo?",
    "Find flights to Rome.",
    "Remind me to call mom on 2026-12-25.",
];

/// The arguments of a call, checked against its tool's parameters.
fn check_call(call: &Value, only: Option<&str>) {
    assert!(call["id"].as_str().unwrap().starts_with("call_"), "{call}");
    assert_eq!(call["type"], "function");
    let name = call["function"]["name"].as_str().unwrap();
    if let Some(only) = only {
        assert_eq!(name, only);
    }
    let tool = tools()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no tool {name}"));
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    let validator = jsonschema::validator_for(&tool["function"]["parameters"]).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&args)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{call}: {errors:?}");
}

/// The message a stream's deltas add up to: (content, [(name, arguments)], finish).
fn reassemble(events: &[String]) -> (String, Vec<(String, String)>, String) {
    let mut content = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut finish = String::new();
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        let Some(choice) = v["choices"].get(0) else {
            continue;
        };
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str() {
            content.push_str(t);
        }
        for c in delta["tool_calls"].as_array().into_iter().flatten() {
            let k = c["index"].as_u64().unwrap() as usize;
            if k == calls.len() {
                assert!(c["id"].as_str().unwrap().starts_with("call_"), "{c}");
                assert_eq!(c["type"], "function");
                calls.push((
                    c["function"]["name"].as_str().unwrap().into(),
                    String::new(),
                ));
            }
            calls[k]
                .1
                .push_str(c["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.into();
        }
    }
    (content, calls, finish)
}

#[test]
fn tools_in_every_choice_give_valid_calls_streamed_and_not() {
    let s = Server::start(&["--parallel", "8"]);
    let choices = [
        json!("required"),
        json!({"type": "function", "function": {"name": "get_weather"}}),
        json!("auto"),
        json!("none"),
    ];
    let jobs: Vec<(usize, Value)> = PROMPTS
        .iter()
        .flat_map(|p| choices.iter().cloned().enumerate().map(move |c| (p, c)))
        .map(|(p, (k, choice))| {
            (k, json!({"messages": [{"role": "user", "content": p}], "tools": tools(), "tool_choice": choice, "max_tokens": 128, "temperature": 0}))
        })
        .collect();
    let s = &s;
    std::thread::scope(|scope| {
        for chunk in jobs.chunks(jobs.len().div_ceil(8)) {
            scope.spawn(move || {
                for (k, body) in chunk {
                    let (status, r) = s.post("/v1/chat/completions", body.clone());
                    assert_eq!(status, 200, "{r}");
                    let choice = &r["choices"][0];
                    let message = &choice["message"];
                    let calls = message["tool_calls"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    match k {
                        0 | 1 => {
                            assert_eq!(choice["finish_reason"], "tool_calls", "{r}");
                            assert!(!calls.is_empty());
                            assert!(message["content"].is_null(), "{r}");
                        }
                        2 => assert!(!calls.is_empty() || message["content"].is_string(), "{r}"),
                        _ => {
                            assert!(calls.is_empty() && message["content"].is_string(), "{r}");
                            assert_ne!(choice["finish_reason"], "tool_calls");
                        }
                    }
                    for c in &calls {
                        check_call(c, (*k == 1).then_some("get_weather"));
                    }
                    let mut streamed = body.clone();
                    streamed["stream"] = json!(true);
                    let (content, stream_calls, finish) =
                        reassemble(&s.stream("/v1/chat/completions", streamed));
                    assert_eq!(content, message["content"].as_str().unwrap_or(""), "{r}");
                    let want: Vec<(String, String)> = calls
                        .iter()
                        .map(|c| {
                            (
                                c["function"]["name"].as_str().unwrap().into(),
                                c["function"]["arguments"].as_str().unwrap().into(),
                            )
                        })
                        .collect();
                    assert_eq!(stream_calls, want);
                    assert_eq!(finish, choice["finish_reason"].as_str().unwrap());
                }
            });
        }
    });
    assert_eq!(s.get("/health").0, 200);
}

#[test]
fn response_formats_give_valid_json_and_bad_constraints_are_a_400() {
    let s = Server::start(&[]);
    let schema = json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 30}, "legs": {"type": "integer", "minimum": 0, "maximum": 8}}, "required": ["name", "legs"], "additionalProperties": false});
    let ask = |extra: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "Describe an animal."}], "max_tokens": 100, "temperature": 0});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let format = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "animal", "schema": schema, "strict": true}}});
    let (status, r) = s.post("/v1/chat/completions", ask(format.clone()));
    assert_eq!(status, 200, "{r}");
    let text = r["choices"][0]["message"]["content"].as_str().unwrap();
    let v: Value = serde_json::from_str(text).unwrap();
    assert!(jsonschema::is_valid(&schema, &v), "{v}");
    let mut streamed = ask(format);
    streamed["stream"] = json!(true);
    let (content, calls, finish) = reassemble(&s.stream("/v1/chat/completions", streamed));
    assert_eq!(
        (content.as_str(), calls.len(), finish.as_str()),
        (text, 0, "stop")
    );

    let (_, r) = s.post("/v1/completions", json!({"prompt": "A list of three colors:", "max_tokens": 40, "temperature": 0, "guided_json": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 3, "maxItems": 3}}));
    let v: Value = serde_json::from_str(r["choices"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3, "{r}");

    for (body, param) in [
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": {"type": "array", "uniqueItems": true}}}}),
            "response_format",
        ),
        (json!({"guided_regex": "(unclosed"}), "guided_regex"),
        (json!({"grammar": "root ::= missing-rule"}), "grammar"),
        (
            json!({"guided_grammar": "start: nowhere"}),
            "guided_grammar",
        ),
        (
            json!({"guided_json": {"type": "object", "properties": {"a": {"$ref": "#/$defs/none"}}}}),
            "guided_json",
        ),
        (
            json!({"response_format": {"type": "json_object"}, "tools": tools()}),
            "response_format",
        ),
    ] {
        let (status, r) = s.post("/v1/chat/completions", ask(body.clone()));
        assert_eq!(status, 400, "{body}: {r}");
        assert_eq!(r["error"]["param"], param, "{r}");
        assert!(!r["error"]["message"].as_str().unwrap().is_empty());
    }
    let (status, _) = s.post("/v1/chat/completions", ask(json!({"max_tokens": 2})));
    assert_eq!(status, 200);
}

#[test]
fn the_openai_python_client_parses_models_and_round_trips_tools() {
    common::server::run_openai_script("openai_structured.py", "openai, pydantic", &[], &[]);
}
