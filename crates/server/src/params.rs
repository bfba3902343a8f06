//! Reading OpenAI request bodies: every parameter is checked for type and range, and a
//! bad one is a 400 that names it. Unknown fields are ignored, as OpenAI's clients send
//! fields that other servers add.

use crate::error::ApiError;
use engine::tools::ToolFormat;
use engine::{Constraint, Message, SamplingParams};
use serde_json::{Map, Value};

/// What both endpoints ask of the engine, before the prompt is tokenized.
#[derive(Debug, Clone)]
pub struct Generation {
    pub model: Option<String>,
    pub sampling: SamplingParams,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub n: usize,
    /// `Some(k)`: report each token's log-probability and `k` alternatives.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    /// vLLM's `stream_options.continuous_usage_stats`: usage so far on every chunk.
    pub continuous_usage: bool,
    pub ignore_eos: bool,
    /// What the output must match, and the field that asked (`response_format`...).
    pub constraint: Option<(&'static str, Constraint)>,
    /// The constraint waits for this token (a tool call's first, under `auto`).
    pub constraint_from: Option<u32>,
    /// Chat with tools: how calls are read out of the reply.
    pub tool_format: Option<ToolFormat>,
    /// Completions: the prompt comes back before the text (with its log-probabilities
    /// when `logprobs` is asked).
    pub echo: bool,
}

/// The prompts of a completions request: text or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

pub fn parse_body(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!("malformed JSON: {e}"))),
    }
}

/// Typed access to a request's fields; absent and `null` both mean "not given".
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub fn number(&self, name: &str, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
        self.ranged(name, "a number", Value::as_f64, min, max)
    }

    pub fn integer(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        self.ranged(name, "an integer", Value::as_i64, min, max)
    }

    /// A value of one JSON type within `[min, max]`.
    fn ranged<T: PartialOrd + std::fmt::Display>(
        &self,
        name: &str,
        kind: &str,
        read: impl Fn(&Value) -> Option<T>,
        min: T,
        max: T,
    ) -> Result<Option<T>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let x =
            read(v).ok_or_else(|| ApiError::param(name, format!("expected {kind}, got {v}")))?;
        if x < min || x > max {
            return Err(ApiError::param(
                name,
                format!("{x} is out of range [{min}, {max}]"),
            ));
        }
        Ok(Some(x))
    }

    pub fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::param(
                name,
                format!("expected true or false, got {v}"),
            )),
        }
    }

    pub fn string(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::param(name, format!("expected a string, got {v}"))),
        }
    }

    /// `stop`: a string or a list of up to 4 strings.
    fn stop(&self) -> Result<Vec<String>, ApiError> {
        match self.get("stop") {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) if items.len() <= 4 => items
                .iter()
                .map(|i| {
                    i.as_str().map(String::from).ok_or_else(|| {
                        ApiError::param("stop", "every stop sequence must be a string")
                    })
                })
                .collect(),
            Some(Value::Array(_)) => Err(ApiError::param("stop", "at most 4 stop sequences")),
            Some(v) => Err(ApiError::param(
                "stop",
                format!("expected a string or a list of strings, got {v}"),
            )),
        }
    }

    /// `logit_bias`: {"token id": bias in [-100, 100]}.
    fn logit_bias(&self, vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
        let Some(v) = self.get("logit_bias") else {
            return Ok(Vec::new());
        };
        let Value::Object(m) = v else {
            return Err(ApiError::param(
                "logit_bias",
                "expected an object of token id → bias",
            ));
        };
        m.iter()
            .map(|(k, b)| {
                let id: u32 = k
                    .parse()
                    .ok()
                    .filter(|&id: &u32| (id as usize) < vocab)
                    .ok_or_else(|| {
                        ApiError::param(
                            "logit_bias",
                            format!("{k:?} is not a token id below {vocab}"),
                        )
                    })?;
                let bias = b
                    .as_f64()
                    .filter(|b| (-100.0..=100.0).contains(b))
                    .ok_or_else(|| {
                        ApiError::param(
                            "logit_bias",
                            format!("bias {b} is not a number in [-100, 100]"),
                        )
                    })?;
                Ok((id, bias as f32))
            })
            .collect()
    }
}

/// The parameters chat and completions share. `chat` selects how `logprobs` reads
/// (a boolean plus `top_logprobs` for chat, a count for completions).
pub fn generation(
    body: &Map<String, Value>,
    chat: bool,
    vocab: usize,
    max_n: usize,
) -> Result<Generation, ApiError> {
    let f = Fields(body);
    let echo = f.boolean("echo")?.unwrap_or(false);
    if echo && chat {
        return Err(ApiError::param(
            "echo",
            "echo is for /v1/completions; chat has no prompt text to echo",
        ));
    }
    if f.string("suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::param(
            "suffix",
            "suffix (fill-in-the-middle) is not supported",
        ));
    }
    let _user = f.string("user")?;
    let mut sampling = SamplingParams::default();
    if let Some(t) = f.number("temperature", 0.0, 2.0)? {
        sampling.temperature = t as f32;
    }
    if let Some(p) = f.number("top_p", 0.0, 1.0)? {
        sampling.top_p = p as f32;
    }
    if let Some(k) = f.integer("top_k", 0, vocab as i64)? {
        sampling.top_k = k as usize;
    }
    if let Some(p) = f.number("min_p", 0.0, 1.0)? {
        sampling.min_p = p as f32;
    }
    if let Some(p) = f.number("typical_p", 0.0, 1.0)? {
        sampling.typical_p = p as f32;
    }
    if let Some(p) = f.number("repetition_penalty", 0.01, 10.0)? {
        sampling.repeat_penalty = p as f32;
    }
    if let Some(p) = f.number("presence_penalty", -2.0, 2.0)? {
        sampling.presence_penalty = p as f32;
    }
    if let Some(p) = f.number("frequency_penalty", -2.0, 2.0)? {
        sampling.frequency_penalty = p as f32;
    }
    sampling.logit_bias = f.logit_bias(vocab)?;
    sampling.seed = match f.integer("seed", i64::MIN, i64::MAX)? {
        Some(s) => s as u64,
        None => crate::random_u64(),
    };
    let max_tokens = match f.integer("max_completion_tokens", 1, i64::MAX)? {
        Some(m) => Some(m),
        None => f.integer("max_tokens", 1, i64::MAX)?,
    };
    let logprobs = if chat {
        match f.boolean("logprobs")? {
            Some(true) => Some(f.integer("top_logprobs", 0, 20)?.unwrap_or(0) as usize),
            _ => {
                if f.get("top_logprobs").is_some() {
                    return Err(ApiError::param("top_logprobs", "needs \"logprobs\": true"));
                }
                None
            }
        }
    } else {
        f.integer("logprobs", 0, 20)?.map(|k| k as usize)
    };
    let (include_usage, continuous_usage) = match f.get("stream_options") {
        None => (false, false),
        Some(Value::Object(o)) => (
            Fields(o).boolean("include_usage")?.unwrap_or(false),
            Fields(o)
                .boolean("continuous_usage_stats")?
                .unwrap_or(false),
        ),
        Some(_) => return Err(ApiError::param("stream_options", "expected an object")),
    };
    Ok(Generation {
        model: f.string("model")?.map(String::from),
        sampling,
        max_tokens: max_tokens.map(|m| m as usize),
        stop: f.stop()?,
        n: f.integer("n", 1, max_n as i64)?.unwrap_or(1) as usize,
        logprobs,
        stream: f.boolean("stream")?.unwrap_or(false),
        include_usage,
        continuous_usage,
        ignore_eos: f.boolean("ignore_eos")?.unwrap_or(false),
        constraint: crate::structured::constraint(body)?,
        constraint_from: None,
        tool_format: None,
        echo,
    })
}

/// `chat_template_kwargs`: extra variables for the chat template (vLLM's name), an object.
pub fn chat_template_kwargs(body: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    match body.get("chat_template_kwargs") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(v) => Err(ApiError::param(
            "chat_template_kwargs",
            format!("expected an object, got {v}"),
        )),
    }
}

/// `messages`: a non-empty list of {role, content}, content a string or a list of text parts.
pub fn messages(body: &Map<String, Value>) -> Result<Vec<Message>, ApiError> {
    let list = match body.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::param("messages", "this field is required"))
        }
        Some(Value::Array(l)) if !l.is_empty() => l,
        Some(Value::Array(_)) => {
            return Err(ApiError::param(
                "messages",
                "at least one message is required",
            ))
        }
        Some(v) => {
            return Err(ApiError::param(
                "messages",
                format!("expected a list of messages, got {v}"),
            ))
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("messages[{i}]");
            let Value::Object(m) = m else {
                return Err(ApiError::param(
                    &at,
                    "expected an object with role and content",
                ));
            };
            let role = match m.get("role") {
                Some(Value::String(r))
                    if ["system", "developer", "user", "assistant", "tool"]
                        .contains(&r.as_str()) =>
                {
                    if r == "developer" {
                        "system".to_string()
                    } else {
                        r.clone()
                    }
                }
                Some(r) => {
                    return Err(ApiError::param(
                        &format!("{at}.role"),
                        format!("{r} is not one of system, user, assistant, tool"),
                    ))
                }
                None => {
                    return Err(ApiError::param(
                        &format!("{at}.role"),
                        "this field is required",
                    ))
                }
            };
            let content =
                match m.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None if role == "assistant" => String::new(),
                    Some(Value::Array(parts)) => {
                        let mut text = String::new();
                        for (j, p) in parts.iter().enumerate() {
                            match (
                                p.get("type").and_then(Value::as_str),
                                p.get("text").and_then(Value::as_str),
                            ) {
                                (Some("text"), Some(t)) => text.push_str(t),
                                _ => return Err(ApiError::param(
                                    &format!("{at}.content[{j}]"),
                                    "only {\"type\": \"text\", \"text\": …} parts are supported",
                                )),
                            }
                        }
                        text
                    }
                    Some(v) => {
                        return Err(ApiError::param(
                            &format!("{at}.content"),
                            format!("expected a string or a list of text parts, got {v}"),
                        ))
                    }
                    None => {
                        return Err(ApiError::param(
                            &format!("{at}.content"),
                            "this field is required",
                        ))
                    }
                };
            let mut message = Message::new(&role, &content);
            for (key, ok) in [
                (
                    "tool_calls",
                    m.get("tool_calls")
                        .is_some_and(|c| c.is_array() && role == "assistant"),
                ),
                (
                    "tool_call_id",
                    m.get("tool_call_id").is_some_and(Value::is_string),
                ),
                ("name", m.get("name").is_some_and(Value::is_string)),
            ] {
                match m.get(key) {
                    None | Some(Value::Null) => {}
                    Some(v) if ok => {
                        message.extra.insert(key.into(), v.clone());
                    }
                    Some(_) => {
                        return Err(ApiError::param(
                            &format!("{at}.{key}"),
                            match key {
                                "tool_calls" => "expected a list of calls on an assistant message",
                                _ => "expected a string",
                            },
                        ))
                    }
                }
            }
            Ok(message)
        })
        .collect()
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of such lists.
pub fn prompts(body: &Map<String, Value>) -> Result<Vec<Prompt>, ApiError> {
    let bad = |what: String| Err(ApiError::param("prompt", what));
    let ids = |l: &[Value]| -> Option<Vec<u32>> {
        l.iter()
            .map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect()
    };
    match body.get("prompt") {
        None | Some(Value::Null) => bad("this field is required".into()),
        Some(Value::String(s)) => Ok(vec![Prompt::Text(s.clone())]),
        Some(Value::Array(l)) if l.is_empty() => bad("the list is empty".into()),
        Some(Value::Array(l)) if l.iter().all(Value::is_string) => Ok(l
            .iter()
            .filter_map(|s| s.as_str())
            .map(|s| Prompt::Text(s.into()))
            .collect()),
        Some(Value::Array(l)) if l.iter().all(Value::is_number) => match ids(l) {
            Some(t) => Ok(vec![Prompt::Tokens(t)]),
            None => bad("token ids must be non-negative integers".into()),
        },
        Some(Value::Array(l)) if l.iter().all(Value::is_array) => l
            .iter()
            .map(|p| match p.as_array().and_then(|a| ids(a)) {
                Some(t) => Ok(Prompt::Tokens(t)),
                None => Err(ApiError::param(
                    "prompt",
                    "token ids must be non-negative integers",
                )),
            })
            .collect(),
        Some(v) => bad(format!(
            "expected a string, a list of strings or token ids, got {v}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn wrong_types_and_ranges_name_the_parameter() {
        for (json, param) in [
            (serde_json::json!({"temperature": "hot"}), "temperature"),
            (serde_json::json!({"temperature": 3}), "temperature"),
            (serde_json::json!({"max_tokens": 0}), "max_tokens"),
            (serde_json::json!({"max_tokens": -5}), "max_tokens"),
            (serde_json::json!({"n": 9}), "n"),
            (serde_json::json!({"stop": 5}), "stop"),
            (serde_json::json!({"logit_bias": {"x": 1}}), "logit_bias"),
            (serde_json::json!({"echo": true}), "echo"),
            (serde_json::json!({"top_logprobs": 2}), "top_logprobs"),
            (serde_json::json!({"stream": "yes"}), "stream"),
        ] {
            let e = generation(&body(json.clone()), true, 100, 4).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{json}");
            assert_eq!(e.status, 400);
        }
    }

    #[test]
    fn parameters_reach_the_sampler() {
        let g = generation(
            &body(
                serde_json::json!({"temperature": 0, "top_k": 5, "seed": 3, "stop": ["a", "b"],
                "n": 2, "logprobs": true, "top_logprobs": 3, "max_completion_tokens": 7,
                "logit_bias": {"12": -100}, "unknown_field": 1}),
            ),
            true,
            100,
            4,
        )
        .unwrap();
        assert_eq!(g.sampling.temperature, 0.0);
        assert_eq!(g.sampling.top_k, 5);
        assert_eq!(g.sampling.seed, 3);
        assert_eq!(g.stop, ["a", "b"]);
        assert_eq!((g.n, g.logprobs, g.max_tokens), (2, Some(3), Some(7)));
        assert_eq!(g.sampling.logit_bias, [(12, -100.0)]);
    }

    #[test]
    fn messages_and_prompts_in_every_accepted_shape() {
        let m = messages(&body(serde_json::json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}
        ]})))
        .unwrap();
        assert_eq!(m[1].content, "hi there");
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"messages": "hi"}),
            serde_json::json!({"messages": []}),
            serde_json::json!({"messages": [{"role": "wizard", "content": "x"}]}),
        ] {
            assert!(messages(&body(bad)).is_err());
        }
        let kwargs = serde_json::json!({"chat_template_kwargs": {"enable_thinking": false}});
        assert_eq!(chat_template_kwargs(&body(kwargs)).unwrap().len(), 1);
        assert!(chat_template_kwargs(&body(serde_json::json!({})))
            .unwrap()
            .is_empty());
        let bad = serde_json::json!({"chat_template_kwargs": "enable_thinking"});
        assert!(chat_template_kwargs(&body(bad)).is_err());
        assert_eq!(
            prompts(&body(serde_json::json!({"prompt": [1, 2]}))).unwrap(),
            [Prompt::Tokens(vec![1, 2])]
        );
        assert_eq!(
            prompts(&body(serde_json::json!({"prompt": ["a", "b"]})))
                .unwrap()
                .len(),
            2
        );
        assert!(prompts(&body(serde_json::json!({"prompt": [-1]}))).is_err());
        assert!(prompts(&body(serde_json::json!({}))).is_err());
    }
}
