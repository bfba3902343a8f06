//! The small routes: models, tokenize/detokenize, health, metrics, and 404/405 answers.

use crate::error::ApiError;
use crate::generate::chat_prompt;
use crate::params::{parse_body, Fields};
use crate::{AppState, Model};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine::ContentTokens;
use serde_json::{json, Value};
use std::sync::Arc;

/// The loaded model and the request's JSON object: 503 while loading, 413 past the
/// body size limit, 400 when it is not a JSON object.
pub async fn model_and_body(
    state: &AppState,
    body: Body,
) -> Result<(&Model, serde_json::Map<String, Value>), ApiError> {
    let model = state.model()?;
    let fields = parse_body(&read_body(body, state.config.max_body_bytes).await?)?;
    Ok((model, fields))
}

/// The body, refused with 413 past the configured size.
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        let mut too_large = false;
        while let Some(c) = cause {
            too_large |= c.is::<http_body_util::LengthLimitError>();
            cause = c.source();
        }
        if too_large {
            ApiError::too_large(limit)
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        }
    })
}

fn model_object(state: &AppState) -> Value {
    let mut m = json!({
        "id": state.config.model_id,
        "object": "model",
        "created": state.started,
        "owned_by": "llama-gpu",
    });
    if let Ok(model) = state.model() {
        let c = model.engine.model_config();
        m["meta"] = json!({
            "n_vocab": c.vocab_size,
            "n_ctx": model.engine.config().context,
            "n_ctx_train": c.context_length,
            "n_embd": c.dim,
            "n_layers": c.n_layers,
        });
    }
    m
}

pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&state)]}))
}

pub async fn model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.config.serves(&id) {
        return Err(unknown_model(&state, &id));
    }
    Ok(Json(model_object(&state)))
}

pub fn unknown_model(state: &AppState, id: &str) -> ApiError {
    ApiError {
        param: Some("model".into()),
        ..ApiError::not_found(
            format!(
                "the model {id:?} does not exist; this server serves {:?}",
                state.config.model_id
            ),
            "model_not_found",
        )
    }
}

/// `{"content"|"prompt": TEXT, "add_special"|"add_special_tokens": bool, "parse_special":
/// bool}` or `{"messages": [...], "add_generation_prompt": bool}` → `{"tokens": [...]}`,
/// with `special_tokens` saying how control-token spellings in the input were read:
/// `parsed`, `text`, or `template_only` (chat messages: only the template's own text).
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (model, body) = model_and_body(&state, body).await?;
    let f = Fields(&body);
    let (tokens, rule) = if body.contains_key("messages") {
        let add_generation_prompt = f.boolean("add_generation_prompt")?.unwrap_or(true);
        let tokens = chat_prompt(&state, model, &body, add_generation_prompt)?.ids;
        let rule = match state.config.content_tokens {
            ContentTokens::Text => "template_only",
            ContentTokens::Special => "parsed",
        };
        (tokens, rule)
    } else {
        let text = match (f.string("content")?, f.string("prompt")?) {
            (Some(text), None) | (None, Some(text)) => text,
            (Some(_), Some(_)) => {
                return Err(ApiError::param(
                    "prompt",
                    "give one of content, prompt and messages",
                ))
            }
            (None, None) => {
                return Err(ApiError::param(
                    "content",
                    "one of content, prompt and messages is required",
                ))
            }
        };
        let add_special = match (f.boolean("add_special")?, f.boolean("add_special_tokens")?) {
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => body.contains_key("prompt"),
        };
        let parse_special = f.boolean("parse_special")?.unwrap_or(true);
        let tokenizer = model.engine.tokenizer();
        let tokens = if add_special {
            tokenizer.encode_prompt(text, parse_special)
        } else {
            tokenizer.encode(text, parse_special)
        }?;
        (tokens, if parse_special { "parsed" } else { "text" })
    };
    Ok(Json(json!({
        "tokens": tokens,
        "count": tokens.len(),
        "max_model_len": model.engine.config().context,
        "special_tokens": rule,
    })))
}

/// vLLM's `GET /tokenizer_info`, which evaluation harnesses look for: the special
/// tokens' texts, the chat template and the context length.
pub async fn tokenizer_info(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let model = state.model()?;
    let tokenizer = model.engine.tokenizer();
    let text = |id: Option<u32>| {
        id.map(|id| String::from_utf8_lossy(tokenizer.token_bytes(id)).into_owned())
    };
    Ok(Json(json!({
        "tokenizer_class": if tokenizer.is_sentencepiece() { "LlamaTokenizer" } else { "GPT2Tokenizer" },
        "bos_token": text(tokenizer.bos),
        "eos_token": text(tokenizer.eos),
        "pad_token": null,
        "add_bos_token": tokenizer.add_bos,
        "chat_template": model.template.source(),
        "model_max_length": model.engine.config().context,
        "vocab_size": model.engine.model_config().vocab_size,
    })))
}

/// `{"tokens": [...]}` → `{"content": TEXT, "prompt": TEXT}` (llama.cpp's and vLLM's
/// names).
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (model, body) = model_and_body(&state, body).await?;
    let vocab = model.engine.model_config().vocab_size;
    let tokens: Vec<u32> = match body.get("tokens") {
        Some(Value::Array(l)) => l
            .iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&t| (t as usize) < vocab)
                    .map(|t| t as u32)
            })
            .collect::<Option<_>>()
            .ok_or_else(|| {
                ApiError::param(
                    "tokens",
                    format!("token ids must be integers below {vocab}"),
                )
            })?,
        _ => return Err(ApiError::param("tokens", "expected a list of token ids")),
    };
    let text = model.engine.tokenizer().decode(&tokens);
    Ok(Json(json!({ "content": text, "prompt": text })))
}

pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.model() {
        Ok(_) => Json(json!({"status": "ok"})).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let engine = state.model().ok().map(|m| m.engine.metrics());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(engine.as_ref()),
    )
        .into_response()
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()), "not_found")
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        ..ApiError::bad_request(format!("{method} is not allowed on {}", uri.path()))
    }
}
