//! Tool calling: how a model writes a call (its chat template says which format), the
//! grammar that makes a call valid when one is required, and reading calls back out of
//! the generated text.
//!
//! Formats: Hermes / Qwen 2.5 (`<tool_call>{json}</tool_call>`), Llama 3.x (a bare
//! `{"name", "parameters"}` object, optionally after `<|python_tag|>`), Mistral before
//! v11 (`[TOOL_CALLS][{...}]`) and from v11 (`[TOOL_CALLS]name[ARGS]{...}`), and, for
//! templates that know no tools, a generic JSON reply (`{"tool_call": ...}` or
//! `{"response": ...}`) described to the model in a system message, as llama.cpp does.

use crate::chat::Message;
use crate::constraint::{generation_schema, Constraint};
use crate::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

/// A function the model may call (from the request's `tools`).
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

impl Tool {
    /// `{"name", "description", "parameters"}`, as templates and prompts list tools.
    pub fn describe(&self) -> Value {
        let mut f = Map::new();
        f.insert("name".into(), json!(self.name));
        if let Some(d) = &self.description {
            f.insert("description".into(), json!(d));
        }
        f.insert("parameters".into(), self.parameters.clone());
        Value::Object(f)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    /// No call: the tools are not shown to the model.
    None,
    /// The model chooses between text and calls.
    Auto,
    /// At least one call, of any tool.
    Required,
    /// A call of this tool.
    Named(String),
}

/// One call read from the output.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as compact JSON text.
    pub arguments: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3,
    MistralList,
    MistralArgs,
    Generic,
}

impl ToolFormat {
    /// The format the template renders tools and calls in.
    pub fn detect(template_source: &str) -> ToolFormat {
        let has = |s: &str| template_source.contains(s);
        if has("<tool_call>") {
            ToolFormat::Hermes
        } else if has("[TOOL_CALLS]") && has("[ARGS]") {
            ToolFormat::MistralArgs
        } else if has("[TOOL_CALLS]") {
            ToolFormat::MistralList
        } else if has("<|start_header_id|>") && has("tools") {
            ToolFormat::Llama3
        } else {
            ToolFormat::Generic
        }
    }

    /// Where a call starts in the text (generic replies are JSON from the start).
    pub fn marker(self) -> Option<&'static str> {
        match self {
            ToolFormat::Hermes => Some("<tool_call>"),
            ToolFormat::MistralList | ToolFormat::MistralArgs => Some("[TOOL_CALLS]"),
            ToolFormat::Llama3 | ToolFormat::Generic => None,
        }
    }

    /// The single token that starts a call, when there is one: under `auto` the
    /// grammar switches on when the model samples it.
    pub fn trigger_token(self, tokenizer: &Tokenizer) -> Option<u32> {
        let marker = self.marker()?;
        let ids = tokenizer.encode(marker, true).ok()?;
        match ids.as_slice() {
            [id] => Some(*id),
            _ => None,
        }
    }

    /// The messages as the template should see them: for the generic format, the
    /// tools and the reply format in a system message, earlier calls and results as
    /// JSON text; for the others, call arguments as JSON objects (what templates
    /// expect; clients send them as strings).
    pub fn prepare_messages(
        self,
        messages: &[Message],
        tools: &[Tool],
        choice: &ToolChoice,
    ) -> Vec<Message> {
        let mut out: Vec<Message> = messages.iter().map(|m| self.prepare_message(m)).collect();
        if self == ToolFormat::Generic && !tools.is_empty() && *choice != ToolChoice::None {
            let instructions = generic_instructions(tools, choice);
            match out.first_mut() {
                Some(m) if m.role == "system" => {
                    m.content = format!("{}\n\n{instructions}", m.content);
                }
                _ => out.insert(0, Message::new("system", &instructions)),
            }
        }
        out
    }

    fn prepare_message(self, m: &Message) -> Message {
        let mut m = m.clone();
        let calls: Vec<(String, Value)> = m
            .extra
            .get("tool_calls")
            .and_then(Value::as_array)
            .map(|calls| {
                calls
                    .iter()
                    .filter_map(|c| {
                        let f = c.get("function")?;
                        let name = f.get("name")?.as_str()?.to_string();
                        let args = match f.get("arguments") {
                            Some(Value::String(s)) => {
                                serde_json::from_str(s).unwrap_or(Value::String(s.clone()))
                            }
                            Some(v) => v.clone(),
                            None => json!({}),
                        };
                        Some((name, args))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if calls.is_empty() {
            return m;
        }
        if self == ToolFormat::Generic {
            let call = |(name, args): &(String, Value)| json!({"name": name, "arguments": args});
            let reply = match calls.as_slice() {
                [one] => json!({"tool_call": call(one)}),
                many => json!({"tool_calls": many.iter().map(call).collect::<Vec<_>>()}),
            };
            m.content = reply.to_string();
            m.extra.remove("tool_calls");
        } else if let Some(Value::Array(list)) = m.extra.get_mut("tool_calls") {
            let mut parsed = calls.into_iter();
            for c in list.iter_mut() {
                if let (Some(f), Some((_, args))) = (c.get_mut("function"), parsed.next()) {
                    f["arguments"] = args;
                }
            }
        }
        m
    }

    /// The grammar of the reply: `None` when the model may write anything (`auto` in
    /// a template format, whose calls are read back from the text; the engine can
    /// switch `call_grammar` on at the trigger token instead).
    pub fn reply_constraint(
        self,
        tools: &[Tool],
        choice: &ToolChoice,
        parallel: bool,
        tokenizer: &Tokenizer,
    ) -> Option<Constraint> {
        match (self, choice) {
            (_, ToolChoice::None) => None,
            (ToolFormat::Generic, ToolChoice::Auto) => {
                let call = generic_call_branch(tools, parallel);
                let response = json!({"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"], "additionalProperties": false});
                Some(json_constraint(json!({"anyOf": [call, response]})))
            }
            (ToolFormat::Generic, _) => {
                let tools = chosen(tools, choice);
                Some(json_constraint(generic_call_branch(&tools, parallel)))
            }
            (_, ToolChoice::Auto) => None,
            _ => Some(self.call_grammar(&chosen(tools, choice), parallel, tokenizer)),
        }
    }

    /// The grammar of one call (several when `parallel`) in this format, marker first.
    pub fn call_grammar(self, tools: &[Tool], parallel: bool, tokenizer: &Tokenizer) -> Constraint {
        // A marker that is a control token must be that token, not its spelling.
        let literal = |text: &str| match tokenizer.encode(text, true).ok().as_deref() {
            Some([id]) if tokenizer.is_control(*id) => format!("<[{id}]>"),
            _ => serde_json::to_string(text).unwrap_or_default(),
        };
        let schema = |arguments_key: &str| {
            generation_schema(call_schema(tools, arguments_key), true).to_string()
        };
        // More calls after the first, when allowed.
        let more = |separator: &str, item: &str| {
            if parallel {
                format!(" ({separator} {item})*")
            } else {
                String::new()
            }
        };
        let lark = match self {
            ToolFormat::Hermes => format!(
                "start: call{}\ncall: {} \"\\n\" body \"\\n\" {}\nbody: %json {}\n",
                more("\"\\n\"", "call"),
                literal("<tool_call>"),
                literal("</tool_call>"),
                schema("arguments")
            ),
            ToolFormat::Llama3 | ToolFormat::Generic => {
                format!("start: body\nbody: %json {}\n", schema("parameters"))
            }
            ToolFormat::MistralList => format!(
                "start: {} \"[\" body{} \"]\"\nbody: %json {}\n",
                literal("[TOOL_CALLS]"),
                more("\", \"", "body"),
                schema("arguments")
            ),
            ToolFormat::MistralArgs => {
                let calls: Vec<String> = tools
                    .iter()
                    .map(|t| {
                        format!(
                            "{} {} %json {}",
                            serde_json::to_string(&t.name).unwrap_or_default(),
                            literal("[ARGS]"),
                            generation_schema(t.parameters.clone(), true)
                        )
                    })
                    .collect();
                let rules: Vec<String> = calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("call{i}: {c}"))
                    .collect();
                let alternatives: Vec<String> =
                    (0..calls.len()).map(|i| format!("call{i}")).collect();
                format!(
                    "start: ({} call){}\ncall: {}\n{}\n",
                    literal("[TOOL_CALLS]"),
                    if parallel { "+" } else { "" },
                    alternatives.join(" | "),
                    rules.join("\n")
                )
            }
        };
        Constraint::Lark(lark)
    }

    /// The text before any call (trimmed; `None` when empty) and the calls. Text that
    /// only looks like a call but does not parse stays text.
    pub fn parse(self, text: &str) -> (Option<String>, Vec<ToolCall>) {
        let content = |s: &str| Some(s.trim()).filter(|s| !s.is_empty()).map(String::from);
        let calls = match self {
            ToolFormat::Generic => return parse_generic(text),
            ToolFormat::Llama3 => {
                let body = text.trim_start();
                let body = body.strip_prefix("<|python_tag|>").unwrap_or(body);
                match json_values(body).as_deref() {
                    Some([v]) => call_from(v, "parameters").map(|c| (0, vec![c])),
                    _ => None,
                }
            }
            ToolFormat::Hermes => {
                let start = text.find("<tool_call>");
                start.and_then(|start| {
                    let mut calls = Vec::new();
                    for block in text[start..].split("<tool_call>").skip(1) {
                        let body = block
                            .trim_end()
                            .strip_suffix("</tool_call>")
                            .unwrap_or(block);
                        let body = body.split("</tool_call>").next().unwrap_or(body);
                        calls.push(call_from(
                            &serde_json::from_str(body.trim()).ok()?,
                            "arguments",
                        )?);
                    }
                    Some((start, calls))
                })
            }
            ToolFormat::MistralList => text.find("[TOOL_CALLS]").and_then(|start| {
                let body = text[start + "[TOOL_CALLS]".len()..].trim();
                let list: Vec<Value> = serde_json::from_str(body).ok()?;
                let calls = list
                    .iter()
                    .map(|v| call_from(v, "arguments"))
                    .collect::<Option<Vec<_>>>()?;
                Some((start, calls))
            }),
            ToolFormat::MistralArgs => text.find("[TOOL_CALLS]").and_then(|start| {
                let mut calls = Vec::new();
                for block in text[start..].split("[TOOL_CALLS]").skip(1) {
                    let (name, args) = block.split_once("[ARGS]")?;
                    let args: Value = serde_json::from_str(args.trim()).ok()?;
                    calls.push(ToolCall {
                        name: name.trim().to_string(),
                        arguments: args.to_string(),
                    });
                }
                Some((start, calls))
            }),
        };
        match calls {
            Some((start, calls)) if !calls.is_empty() => (content(&text[..start]), calls),
            _ => (content(text), Vec::new()),
        }
    }
}

/// A reply read as it streams: content is shown as soon as it cannot be part of a
/// call; calls are read when the reply ends. Shown content plus `finish`'s content
/// equals what `ToolFormat::parse` gives for the whole text.
pub struct CallStream {
    format: ToolFormat,
    text: String,
    /// Content shown so far.
    shown: String,
    in_call: bool,
}

impl CallStream {
    pub fn new(format: ToolFormat) -> CallStream {
        CallStream {
            format,
            text: String::new(),
            shown: String::new(),
            in_call: false,
        }
    }

    /// Adds generated text; returns the content that is safe to show now.
    pub fn push(&mut self, delta: &str) -> String {
        self.text.push_str(delta);
        if self.in_call {
            return String::new();
        }
        let safe_end = match self.format {
            // The whole reply is JSON, a call or not.
            ToolFormat::Generic => return String::new(),
            ToolFormat::Llama3 => {
                let t = self.text.trim_start();
                let may_be_call = t.is_empty()
                    || t.starts_with('{')
                    || t.starts_with("<|python_tag|>")
                    || "<|python_tag|>".starts_with(t);
                if may_be_call && self.shown.is_empty() {
                    return String::new();
                }
                self.text.len()
            }
            _ => {
                let marker = self.format.marker().unwrap_or_default();
                match self.text.find(marker) {
                    Some(at) => {
                        self.in_call = true;
                        at
                    }
                    None => self.text.len() - crate::text::partial_suffix_len(&self.text, marker),
                }
            }
        };
        // Content is trimmed: leading whitespace never shows, trailing whitespace waits
        // for more text.
        let ready = self.text[..safe_end].trim();
        let new = ready
            .strip_prefix(self.shown.as_str())
            .unwrap_or_default()
            .to_string();
        self.shown.push_str(&new);
        new
    }

    /// The reply is over: the content not shown yet and the calls.
    pub fn finish(self) -> (String, Vec<ToolCall>) {
        let (content, calls) = self.format.parse(&self.text);
        let content = content.unwrap_or_default();
        let rest = content
            .strip_prefix(self.shown.as_str())
            .unwrap_or(&content)
            .to_string();
        (rest, calls)
    }
}

fn chosen(tools: &[Tool], choice: &ToolChoice) -> Vec<Tool> {
    match choice {
        ToolChoice::Named(name) => tools.iter().filter(|t| t.name == *name).cloned().collect(),
        _ => tools.to_vec(),
    }
}

/// A JSON Schema constraint written the way the generic format asks for.
fn json_constraint(schema: Value) -> Constraint {
    Constraint::JsonSchema {
        schema,
        strict: false,
    }
}

/// A call of one of `tools`: `{"name": ..., arguments_key: {...}}`.
fn call_schema(tools: &[Tool], arguments_key: &str) -> Value {
    let any: Vec<Value> = tools
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                "properties": {"name": {"const": t.name}, arguments_key: t.parameters},
                "required": ["name", arguments_key],
                "additionalProperties": false
            })
        })
        .collect();
    json!({"anyOf": any})
}

fn generic_call_branch(tools: &[Tool], parallel: bool) -> Value {
    if parallel {
        json!({"type": "object", "properties": {"tool_calls": {"type": "array", "items": call_schema(tools, "arguments"), "minItems": 1}}, "required": ["tool_calls"], "additionalProperties": false})
    } else {
        json!({"type": "object", "properties": {"tool_call": call_schema(tools, "arguments")}, "required": ["tool_call"], "additionalProperties": false})
    }
}

fn generic_instructions(tools: &[Tool], choice: &ToolChoice) -> String {
    let listed: Vec<Value> = tools.iter().map(Tool::describe).collect();
    let reply = match choice {
        ToolChoice::Auto => "Reply with one JSON object: either {\"tool_call\": {\"name\": ..., \"arguments\": {...}}} to call a tool, or {\"response\": \"...\"} to answer the user directly.",
        _ => "Reply with one JSON object that calls a tool: {\"tool_call\": {\"name\": ..., \"arguments\": {...}}}.",
    };
    format!(
        "You can call these tools:\n{}\n{reply}",
        serde_json::to_string_pretty(&listed).unwrap_or_default()
    )
}

/// The generic reply: a call, several, or a response (anything else is content).
fn parse_generic(text: &str) -> (Option<String>, Vec<ToolCall>) {
    let whole = || {
        (
            Some(text.to_string()).filter(|t| !t.trim().is_empty()),
            Vec::new(),
        )
    };
    let Ok(v) = serde_json::from_str::<Value>(text.trim()) else {
        return whole();
    };
    if let Some(call) = v.get("tool_call").and_then(|c| call_from(c, "arguments")) {
        return (None, vec![call]);
    }
    if let Some(list) = v.get("tool_calls").and_then(Value::as_array) {
        if let Some(calls) = list
            .iter()
            .map(|c| call_from(c, "arguments"))
            .collect::<Option<Vec<_>>>()
        {
            return (None, calls);
        }
    }
    match v.get("response").and_then(Value::as_str) {
        Some(r) => (Some(r.to_string()), Vec::new()),
        None => whole(),
    }
}

/// A call from `{"name": ..., key: {...}}` (`arguments` also accepted for `key`).
fn call_from(v: &Value, key: &str) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v.get(key).or_else(|| v.get("arguments"))?;
    let args = match args {
        Value::String(s) => serde_json::from_str::<Value>(s).ok()?,
        other => other.clone(),
    };
    Some(ToolCall {
        name,
        arguments: args.to_string(),
    })
}

/// Every JSON value in `text`, in order, when it holds nothing else.
fn json_values(text: &str) -> Option<Vec<Value>> {
    let values = serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    Some(values).filter(|v| !v.is_empty())
}
