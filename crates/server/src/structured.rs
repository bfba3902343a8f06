//! Structured output requests: OpenAI's `response_format`, and the extensions llama.cpp
//! (`grammar`, `json_schema`) and vLLM (`guided_json`, `guided_regex`, `guided_choice`,
//! `guided_grammar`, `structured_outputs`) name. At most one may be given.

use crate::error::ApiError;
use engine::Constraint;
use serde_json::{json, Map, Value};

/// The constraint a request asks for, if any, and the field that asked.
pub fn constraint(
    body: &Map<String, Value>,
) -> Result<Option<(&'static str, Constraint)>, ApiError> {
    let mut found: Vec<(&str, Constraint)> = Vec::new();
    let given = |name: &str| body.get(name).filter(|v| !v.is_null());
    if let Some(v) = given("response_format") {
        if let Some(c) = response_format(v)? {
            found.push(("response_format", c));
        }
    }
    if let Some(v) = given("json_schema") {
        found.push(("json_schema", schema("json_schema", v, false)?));
    }
    if let Some(v) = given("grammar") {
        found.push(("grammar", grammar("grammar", v)?));
    }
    if let Some(v) = given("guided_json") {
        found.push(("guided_json", schema("guided_json", v, false)?));
    }
    if let Some(v) = given("guided_regex") {
        found.push((
            "guided_regex",
            Constraint::Regex(string("guided_regex", v)?),
        ));
    }
    if let Some(v) = given("guided_choice") {
        found.push(("guided_choice", choice("guided_choice", v)?));
    }
    if let Some(v) = given("guided_grammar") {
        found.push(("guided_grammar", grammar("guided_grammar", v)?));
    }
    if let Some(v) = given("structured_outputs") {
        let Value::Object(o) = v else {
            return Err(ApiError::param("structured_outputs", "expected an object"));
        };
        for (key, v) in o.iter().filter(|(_, v)| !v.is_null()) {
            let at = format!("structured_outputs.{key}");
            let c = match key.as_str() {
                "json" => schema(&at, v, false)?,
                "regex" => Constraint::Regex(string(&at, v)?),
                "choice" => choice(&at, v)?,
                "grammar" => grammar(&at, v)?,
                "json_object" if v == &Value::Bool(true) => Constraint::JsonObject,
                _ => continue,
            };
            found.push(("structured_outputs", c));
        }
    }
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => Err(ApiError::param(
            found[1].0,
            format!(
                "give one constraint, not {} ({})",
                found.len(),
                found.iter().map(|f| f.0).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

fn response_format(v: &Value) -> Result<Option<Constraint>, ApiError> {
    let at = "response_format";
    let Value::Object(o) = v else {
        return Err(ApiError::param(at, "expected an object with a type"));
    };
    match o.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => match o.get("schema").filter(|s| !s.is_null()) {
            // llama.cpp's form: a schema beside the type.
            Some(s) => Ok(Some(schema("response_format.schema", s, false)?)),
            None => Ok(Some(Constraint::JsonObject)),
        },
        Some("json_schema") => {
            let at = "response_format.json_schema";
            let Some(Value::Object(spec)) = o.get("json_schema") else {
                return Err(ApiError::param(
                    at,
                    "expected an object with name and schema",
                ));
            };
            let strict = match spec.get("strict") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::param(
                        &format!("{at}.strict"),
                        "expected a boolean",
                    ))
                }
            };
            let schema_value = spec.get("schema").cloned().unwrap_or(json!({}));
            Ok(Some(schema(
                &format!("{at}.schema"),
                &schema_value,
                strict,
            )?))
        }
        Some(other) => Err(ApiError::param(
            "response_format.type",
            format!("{other:?} is not one of text, json_object, json_schema"),
        )),
        None => Err(ApiError::param(
            "response_format.type",
            "this field is required",
        )),
    }
}

/// A JSON Schema given as an object (or boolean), or as a string holding one.
fn schema(at: &str, v: &Value, strict: bool) -> Result<Constraint, ApiError> {
    let schema = match v {
        Value::Object(_) | Value::Bool(_) => v.clone(),
        Value::String(s) => serde_json::from_str(s)
            .map_err(|e| ApiError::param(at, format!("the schema is not valid JSON: {e}")))?,
        _ => return Err(ApiError::param(at, "expected a JSON Schema object")),
    };
    Ok(Constraint::JsonSchema { schema, strict })
}

/// GBNF, unless it is llguidance's Lark (`%llguidance` first, as llama.cpp marks it, or
/// Lark's `:` rules without GBNF's `::=`).
fn grammar(at: &str, v: &Value) -> Result<Constraint, ApiError> {
    let text = string(at, v)?;
    let lark = text.trim_start().starts_with("%llguidance") || !text.contains("::=");
    Ok(if lark {
        Constraint::Lark(text)
    } else {
        Constraint::Gbnf(text)
    })
}

fn choice(at: &str, v: &Value) -> Result<Constraint, ApiError> {
    let choices = v
        .as_array()
        .and_then(|l| {
            l.iter()
                .map(|c| c.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
        })
        .filter(|l| !l.is_empty())
        .ok_or_else(|| ApiError::param(at, "expected a non-empty list of strings"))?;
    Ok(Constraint::Choice(choices))
}

fn string(at: &str, v: &Value) -> Result<String, ApiError> {
    v.as_str()
        .map(String::from)
        .ok_or_else(|| ApiError::param(at, "expected a string"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Option<Constraint>, ApiError> {
        Ok(constraint(v.as_object().unwrap())?.map(|(_, c)| c))
    }

    #[test]
    fn every_spelling_of_a_constraint() {
        let schema = json!({"type": "object"});
        let cases = [
            (json!({}), None),
            (json!({"response_format": {"type": "text"}}), None),
            (
                json!({"response_format": {"type": "json_object"}}),
                Some(Constraint::JsonObject),
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}}),
                Some(Constraint::JsonSchema {
                    schema: schema.clone(),
                    strict: true,
                }),
            ),
            (
                json!({"response_format": {"type": "json_object", "schema": schema}}),
                Some(Constraint::JsonSchema {
                    schema: schema.clone(),
                    strict: false,
                }),
            ),
            (
                json!({"json_schema": schema}),
                Some(Constraint::JsonSchema {
                    schema: schema.clone(),
                    strict: false,
                }),
            ),
            (
                json!({"guided_json": "{\"type\": \"object\"}"}),
                Some(Constraint::JsonSchema {
                    schema: schema.clone(),
                    strict: false,
                }),
            ),
            (
                json!({"guided_regex": "a+"}),
                Some(Constraint::Regex("a+".into())),
            ),
            (
                json!({"guided_choice": ["a", "b"]}),
                Some(Constraint::Choice(vec!["a".into(), "b".into()])),
            ),
            (
                json!({"grammar": "root ::= \"a\""}),
                Some(Constraint::Gbnf("root ::= \"a\"".into())),
            ),
            (
                json!({"guided_grammar": "start: \"a\""}),
                Some(Constraint::Lark("start: \"a\"".into())),
            ),
            (
                json!({"structured_outputs": {"regex": "b"}}),
                Some(Constraint::Regex("b".into())),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(parse(body.clone()).unwrap(), want, "{body}");
        }
    }

    #[test]
    fn malformed_or_conflicting_constraints_name_the_field() {
        for (body, param) in [
            (json!({"response_format": "json"}), "response_format"),
            (
                json!({"response_format": {"type": "yaml"}}),
                "response_format.type",
            ),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format.json_schema",
            ),
            (json!({"guided_json": "{not json"}), "guided_json"),
            (json!({"guided_choice": []}), "guided_choice"),
            (json!({"guided_regex": 3}), "guided_regex"),
            (
                json!({"guided_regex": "a", "grammar": "root ::= \"a\""}),
                "guided_regex",
            ),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
    }
}
