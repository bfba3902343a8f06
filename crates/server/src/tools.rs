//! A chat request's `tools`, `tool_choice` and `parallel_tool_calls`, and the
//! assistant messages' `tool_calls` as OpenAI shapes them.

use crate::error::ApiError;
use engine::tools::{Tool, ToolCall, ToolChoice};
use serde_json::{json, Map, Value};

/// What a request asks of tool calling.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolRequest {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

/// `None` when the request has no tools (or `tool_choice` is `none`).
pub fn tool_request(body: &Map<String, Value>) -> Result<Option<ToolRequest>, ApiError> {
    let tools = match body.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, t)| tool(&format!("tools[{i}]"), t))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::param("tools", "expected a list of tools")),
    };
    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::param(
                    "tool_choice",
                    format!("{other:?} is not one of none, auto, required"),
                ))
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::param(
                        "tool_choice",
                        "expected {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::param(
                    "tool_choice",
                    format!("no tool is named {name:?}"),
                ));
            }
            ToolChoice::Named(name.to_string())
        }
        Some(_) => {
            return Err(ApiError::param(
                "tool_choice",
                "expected a string or an object",
            ))
        }
    };
    // Off unless asked, as in llama.cpp: small models asked for a list of calls tend
    // to repeat them.
    let parallel = match body.get("parallel_tool_calls") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::param("parallel_tool_calls", "expected a boolean")),
    };
    if tools.is_empty() {
        return match choice {
            ToolChoice::Required => Err(ApiError::param(
                "tool_choice",
                "\"required\" needs at least one tool",
            )),
            _ => Ok(None),
        };
    }
    if choice == ToolChoice::None {
        return Ok(None);
    }
    Ok(Some(ToolRequest {
        tools,
        choice,
        parallel,
    }))
}

fn tool(at: &str, v: &Value) -> Result<Tool, ApiError> {
    let f = match (v.get("type").and_then(Value::as_str), v.get("function")) {
        (Some("function"), Some(Value::Object(f))) => f,
        _ => {
            return Err(ApiError::param(
                at,
                "expected {\"type\": \"function\", \"function\": {\"name\", \"parameters\"}}",
            ))
        }
    };
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
        .ok_or_else(|| {
            ApiError::param(
                &format!("{at}.function.name"),
                "expected a name of letters, digits, _ and -",
            )
        })?;
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(ApiError::param(
                &format!("{at}.function.parameters"),
                "expected a JSON Schema object",
            ))
        }
    };
    Ok(Tool {
        name: name.to_string(),
        description: f
            .get("description")
            .and_then(Value::as_str)
            .map(String::from),
        parameters,
    })
}

/// The request's tools as chat templates expect them.
pub fn template_tools(tools: &[Tool]) -> Value {
    tools
        .iter()
        .map(|t| json!({"type": "function", "function": t.describe()}))
        .collect()
}

/// OpenAI's `tool_calls` entries (`call_` ids; `index` for stream deltas).
pub fn tool_call_json(call: &ToolCall, index: Option<usize>) -> Value {
    let mut v = json!({
        "id": format!("call_{:016x}{:08x}", crate::random_u64(), crate::random_u64() as u32),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    });
    if let Some(i) = index {
        v["index"] = json!(i);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Option<ToolRequest>, ApiError> {
        tool_request(v.as_object().unwrap())
    }

    #[test]
    fn tools_and_choices() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
        assert_eq!(parse(json!({})).unwrap(), None);
        assert_eq!(
            parse(json!({"tools": tools, "tool_choice": "none"})).unwrap(),
            None
        );
        let r = parse(json!({"tools": tools})).unwrap().unwrap();
        assert_eq!((r.choice, r.parallel), (ToolChoice::Auto, false));
        let r = parse(json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": true})).unwrap().unwrap();
        assert_eq!(
            (r.choice, r.parallel),
            (ToolChoice::Named("get_weather".into()), true)
        );
        for (body, param) in [
            (json!({"tools": "x"}), "tools"),
            (json!({"tools": [{"type": "function"}]}), "tools[0]"),
            (
                json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}),
                "tools[0].function.name",
            ),
            (
                json!({"tools": tools, "tool_choice": "sometimes"}),
                "tool_choice",
            ),
            (
                json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
                "tool_choice",
            ),
            (json!({"tool_choice": "required"}), "tool_choice"),
        ] {
            assert_eq!(
                parse(body.clone()).unwrap_err().param.as_deref(),
                Some(param),
                "{body}"
            );
        }
    }
}
