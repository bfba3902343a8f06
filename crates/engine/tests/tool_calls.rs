//! Tool calls read back from recorded replies of each format, whole and streamed in
//! every split, and the call grammars accept exactly those replies.

use crate::common;
use engine::tools::{CallStream, Tool, ToolCall, ToolChoice, ToolFormat};
use engine::{Grammars, Message};
use serde_json::json;
use std::sync::Arc;

fn call(name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        name: name.into(),
        arguments: arguments.into(),
    }
}

const PARIS: &str = r#"{"city":"Paris"}"#;
const ROME: &str = r#"{"city":"Rome","days":2}"#;

/// (format, reply, content, calls, whether the call grammar produces this reply)
type Recorded = (
    ToolFormat,
    &'static str,
    Option<&'static str>,
    Vec<ToolCall>,
    bool,
);

fn recorded() -> Vec<Recorded> {
    use ToolFormat::*;
    let one = || vec![call("get_weather", PARIS)];
    let two = || vec![call("get_weather", PARIS), call("get_forecast", ROME)];
    vec![
        (Hermes, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>", None, one(), true),
        (Hermes, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_forecast\", \"arguments\": {\"city\": \"Rome\", \"days\": 2}}\n</tool_call>", None, two(), true),
        (Hermes, "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>", Some("Let me check."), one(), false),
        (Hermes, "It is sunny in <b>Paris</b>, no <tool_ call needed.", Some("It is sunny in <b>Paris</b>, no <tool_ call needed."), vec![], false),
        (Llama3, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", None, one(), true),
        (Llama3, "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", None, one(), false),
        (Llama3, "  The weather is {nice}.", Some("The weather is {nice}."), vec![], false),
        (MistralList, "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]", None, one(), true),
        (MistralList, "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"get_forecast\", \"arguments\": {\"city\": \"Rome\", \"days\": 2}}]", None, two(), true),
        (MistralList, "Sure. [TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]", Some("Sure."), one(), false),
        (MistralArgs, "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}", None, one(), true),
        (MistralArgs, "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_forecast[ARGS]{\"city\": \"Rome\", \"days\": 2}", None, two(), true),
        (MistralArgs, "On it![TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}", Some("On it!"), one(), false),
        (Generic, "{\"tool_call\": {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}}", None, one(), false),
        (Generic, "{\"tool_calls\": [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"get_forecast\", \"arguments\": {\"city\": \"Rome\", \"days\": 2}}]}", None, two(), false),
        (Generic, "{\"response\": \"Hello there\"}", Some("Hello there"), vec![], false),
        (Generic, "not JSON at all", Some("not JSON at all"), vec![], false),
    ]
}

fn streamed(format: ToolFormat, pieces: &[&str]) -> (String, Vec<ToolCall>) {
    let mut stream = CallStream::new(format);
    let mut shown: String = pieces.iter().map(|p| stream.push(p)).collect();
    let (rest, calls) = stream.finish();
    shown.push_str(&rest);
    (shown, calls)
}

#[test]
fn every_format_reads_its_calls_whole_and_in_every_split() {
    for (format, reply, content, calls, _) in recorded() {
        assert_eq!(
            format.parse(reply),
            (content.map(String::from), calls.clone()),
            "{format:?} {reply:?}"
        );
        let want = (content.unwrap_or_default().to_string(), calls);
        let cuts: Vec<usize> = (0..=reply.len())
            .filter(|&i| reply.is_char_boundary(i))
            .collect();
        for (a, &i) in cuts.iter().enumerate() {
            for &j in &cuts[a..] {
                let pieces = [&reply[..i], &reply[i..j], &reply[j..]];
                assert_eq!(
                    streamed(format, &pieces),
                    want,
                    "{format:?} split at {i}, {j}"
                );
            }
        }
        let chars: Vec<String> = reply.chars().map(String::from).collect();
        let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(streamed(format, &chars), want, "{format:?} char by char");
    }
}

#[test]
fn content_never_shows_part_of_a_call_while_it_streams() {
    let reply =
        "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>";
    let mut stream = CallStream::new(ToolFormat::Hermes);
    let mut shown = String::new();
    for c in reply.chars() {
        shown.push_str(&stream.push(&c.to_string()));
        assert!(!shown.contains('<'), "{shown:?}");
    }
    assert_eq!(shown, "Let me check.");
}

#[test]
fn formats_are_read_from_the_template() {
    let cases = [
        (
            "{% for m in messages %}<tool_call>{% endfor %}",
            ToolFormat::Hermes,
        ),
        (
            "[TOOL_CALLS]{{ name }}[ARGS]{{ args }}",
            ToolFormat::MistralArgs,
        ),
        ("[TOOL_CALLS]{{ calls | tojson }}", ToolFormat::MistralList),
        (
            "<|start_header_id|>{% if tools %}{% endif %}",
            ToolFormat::Llama3,
        ),
        ("<|im_start|>{{ m.content }}", ToolFormat::Generic),
    ];
    for (source, format) in cases {
        assert_eq!(ToolFormat::detect(source), format, "{source}");
    }
}

fn tools() -> Vec<Tool> {
    let object = |props: serde_json::Value, required: serde_json::Value| json!({"type": "object", "properties": props, "required": required, "additionalProperties": false});
    vec![
        Tool {
            name: "get_weather".into(),
            description: Some("Weather now".into()),
            parameters: object(json!({"city": {"type": "string"}}), json!(["city"])),
        },
        Tool {
            name: "get_forecast".into(),
            description: None,
            parameters: object(
                json!({"city": {"type": "string"}, "days": {"type": "integer"}}),
                json!(["city", "days"]),
            ),
        },
    ]
}

#[test]
fn call_grammars_accept_the_recorded_calls_and_end_there() {
    let (m, tok) = common::model_and_tokenizer();
    let tok = Arc::new(tok);
    let grammars = Grammars::new(tok.clone(), m.config.vocab_size).unwrap();
    for (format, reply, _, calls, produced) in recorded() {
        if !produced {
            continue;
        }
        let grammar = format.call_grammar(&tools(), calls.len() > 1, &tok);
        let mut state = grammars
            .compile(&grammar)
            .unwrap_or_else(|e| panic!("{format:?}: {e}\n{grammar:?}"));
        for id in tok.encode(reply, true).unwrap() {
            state
                .consume(id)
                .unwrap_or_else(|e| panic!("{format:?} {reply:?}: {e}"));
        }
        // The reply may end here; a single call must.
        if !state.is_finished() {
            let allowed = state.mask().unwrap().allowed();
            let eog = tok.end_of_generation_tokens();
            assert!(eog.iter().all(|id| allowed.contains(id)), "{format:?}");
            assert!(calls.len() > 1 || allowed == eog, "{format:?} {allowed:?}");
        }
    }
    // Without `parallel`, a second call is refused.
    let grammar = ToolFormat::Hermes.call_grammar(&tools(), false, &tok);
    let mut state = grammars.compile(&grammar).unwrap();
    let two = recorded()[1].1;
    let ids = tok.encode(two, true).unwrap();
    assert!(ids.iter().any(|&id| state.consume(id).is_err()));
}

#[test]
fn generic_templates_get_the_tools_in_a_system_message_and_calls_as_json() {
    let mut assistant = Message::new("assistant", "");
    assistant.extra.insert(
        "tool_calls".into(),
        json!([{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]),
    );
    let messages = [Message::new("user", "Weather in Paris?"), assistant];
    let out = ToolFormat::Generic.prepare_messages(&messages, &tools(), &ToolChoice::Auto);
    assert_eq!(out[0].role, "system");
    assert!(out[0].content.contains("get_forecast") && out[0].content.contains("\"response\""));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out[2].content).unwrap(),
        json!({"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}})
    );
    // Template formats get the arguments as objects, and no extra system message.
    let out = ToolFormat::Hermes.prepare_messages(&messages, &tools(), &ToolChoice::Auto);
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[1].extra["tool_calls"][0]["function"]["arguments"],
        json!({"city": "Paris"})
    );
}
