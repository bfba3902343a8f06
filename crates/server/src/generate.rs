//! `/v1/chat/completions` and `/v1/completions`: parse, submit one engine request per
//! prompt, and answer with one JSON body or a stream of server-sent events. A client
//! that goes away drops the engine streams, which cancels the generation.

use crate::error::ApiError;
use crate::limits::Client;
use crate::params::{self, Generation, Prompt};
use crate::routes::{model_and_body, unknown_model};
use crate::tools::{self, tool_call_json};
use crate::{unix_now, AppState, Model, RequestId};
use axum::body::Body;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use engine::serving::PromptLogprob;
use engine::tools::{CallStream, ToolChoice, ToolFormat};
use engine::{Constraint, Event, FinishReason, GrammarState, Request, Tokenizer};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    fn route(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }
}

pub async fn chat(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    Extension(id): Extension<RequestId>,
    body: Body,
) -> Result<Response, ApiError> {
    let (model, body) = model_and_body(&state, body).await?;
    let prompt = chat_prompt(&state, model, &body, true)?;
    let mut g = generation(&state, &body, Endpoint::Chat)?;
    if let Some(t) = &prompt.tools {
        if let Some((param, _)) = g.constraint {
            return Err(ApiError::param(
                param,
                "a constraint cannot be combined with tools",
            ));
        }
        let format = prompt.format;
        let tokenizer = model.engine.tokenizer();
        match format.reply_constraint(&t.tools, &t.choice, t.parallel, tokenizer) {
            Some(c) => g.constraint = Some(("tools", c)),
            None => {
                if let Some(trigger) = format.trigger_token(tokenizer) {
                    let c = format.call_grammar(&t.tools, t.parallel, tokenizer);
                    g.constraint = Some(("tools", c));
                    g.constraint_from = Some(trigger);
                }
            }
        }
        g.tool_format = Some(format);
    }
    run(state, client, id, Endpoint::Chat, g, vec![prompt.ids]).await
}

/// A chat request's prompt and what it asks of tools.
pub struct ChatPrompt {
    pub ids: Vec<u32>,
    /// `None` without tools (or with `tool_choice: none`).
    pub tools: Option<tools::ToolRequest>,
    /// How the template writes calls.
    pub format: ToolFormat,
}

/// The token ids of a chat request's `messages` (with its `tools`) through the
/// model's template, with message text kept as text unless the server says otherwise.
pub fn chat_prompt(
    state: &AppState,
    model: &Model,
    body: &Map<String, Value>,
    add_generation_prompt: bool,
) -> Result<ChatPrompt, ApiError> {
    let mut messages = params::messages(body)?;
    let mut kwargs = params::chat_template_kwargs(body)?;
    let format = ToolFormat::detect(model.template.source());
    let request = tools::tool_request(body)?;
    let (tools, choice) = match &request {
        Some(t) => (t.tools.as_slice(), t.choice.clone()),
        None => (&[][..], ToolChoice::None),
    };
    messages = format.prepare_messages(&messages, tools, &choice);
    if request.is_some() && format != ToolFormat::Generic {
        kwargs.insert("tools".into(), tools::template_tools(tools));
    }
    let ids = model.template.encode(
        model.engine.tokenizer(),
        &messages,
        add_generation_prompt,
        &kwargs,
        state.config.content_tokens,
    )?;
    Ok(ChatPrompt {
        ids,
        tools: request,
        format,
    })
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    Extension(id): Extension<RequestId>,
    body: Body,
) -> Result<Response, ApiError> {
    let (model, body) = model_and_body(&state, body).await?;
    let prompts = params::prompts(&body)?;
    let g = generation(&state, &body, Endpoint::Completions)?;
    let tokenizer = model.engine.tokenizer();
    let prompts = prompts
        .into_iter()
        .map(|p| match p {
            Prompt::Text(t) => tokenizer.encode_prompt(&t, true),
            Prompt::Tokens(t) => Ok(t),
        })
        .collect::<Result<Vec<_>, _>>()?;
    run(state, client, id, Endpoint::Completions, g, prompts).await
}

fn generation(
    state: &AppState,
    body: &serde_json::Map<String, Value>,
    endpoint: Endpoint,
) -> Result<Generation, ApiError> {
    let model = state.model()?;
    let g = params::generation(
        body,
        endpoint == Endpoint::Chat,
        model.engine.model_config().vocab_size,
        model.engine.config().max_seqs,
    )?;
    match &g.model {
        Some(m) if !state.config.serves(m) => Err(unknown_model(state, m)),
        _ => Ok(g),
    }
}

/// A request's constraint compiled against the model's vocabulary, off the async
/// threads (the first use builds the vocabulary's trie; a large schema takes a while).
async fn compile(
    state: &Arc<AppState>,
    param: &str,
    c: Constraint,
) -> Result<GrammarState, ApiError> {
    let state = state.clone();
    let compiled = tokio::task::spawn_blocking(move || {
        let engine = &state.model()?.engine;
        Ok::<_, ApiError>(engine.grammars()?.compile(&c))
    })
    .await
    .map_err(|e| ApiError::internal(format!("compiling the constraint failed: {e}")))??;
    compiled.map_err(|e| ApiError::param(param, e.to_string()))
}

/// One output choice as it accumulates.
#[derive(Default, Clone)]
struct Choice {
    text: String,
    tokens: Vec<TokenInfo>,
    finish: Option<&'static str>,
    /// With `echo` and `logprobs`: the prompt's tokens.
    prompt: Vec<PromptLogprob>,
}

#[derive(Clone)]
struct TokenInfo {
    id: u32,
    logprob: f32,
    top: Vec<(u32, f32)>,
}

/// What the stream of one HTTP request carries: (prompt index, engine event).
type Tagged = (usize, Event);

struct Job {
    state: Arc<AppState>,
    client: Client,
    request_id: RequestId,
    endpoint: Endpoint,
    g: Generation,
    /// Prompt lengths, for usage.
    prompt_lens: Vec<usize>,
    /// With `echo`: each prompt's text, as its tokens spell it.
    echoed: Vec<String>,
    started: Instant,
    id: String,
    created: u64,
    model: String,
}

async fn run(
    state: Arc<AppState>,
    client: Client,
    request_id: RequestId,
    endpoint: Endpoint,
    g: Generation,
    prompts: Vec<Vec<u32>>,
) -> Result<Response, ApiError> {
    let engine = &state.model()?.engine;
    let grammar = match &g.constraint {
        Some((param, c)) => Some(compile(&state, param, c.clone()).await?),
        None => None,
    };
    let mut streams = Vec::with_capacity(prompts.len());
    for prompt in &prompts {
        let request = Request {
            constraint: grammar.clone(),
            constraint_from: g.constraint_from,
            prompt: prompt.clone(),
            sampling: g.sampling.clone(),
            max_tokens: g.max_tokens.unwrap_or(state.config.max_tokens_default),
            stop: g.stop.clone(),
            ignore_eos: g.ignore_eos,
            n: g.n,
            logprobs: g.logprobs,
            prompt_logprobs: if g.echo { g.logprobs } else { None },
        };
        streams.push(engine.submit(request)?);
    }
    // One task per engine stream feeds a single channel; when the HTTP side drops the
    // receiver, each task ends and drops its stream, which cancels the generation.
    let (tx, rx) = mpsc::unbounded_channel::<Tagged>();
    for (i, mut stream) in streams.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = stream.recv() => match event {
                        Some(e) => if tx.send((i, e)).is_err() { break },
                        None => break,
                    },
                    _ = tx.closed() => break,
                }
            }
        });
    }
    drop(tx);
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completions => "cmpl",
    };
    let job = Job {
        model: g
            .model
            .clone()
            .unwrap_or_else(|| state.config.model_id.clone()),
        state: state.clone(),
        client,
        request_id,
        endpoint,
        prompt_lens: prompts.iter().map(Vec::len).collect(),
        echoed: if g.echo {
            let tokenizer = engine.tokenizer();
            prompts.iter().map(|p| tokenizer.decode(p)).collect()
        } else {
            Vec::new()
        },
        started: Instant::now(),
        id: format!(
            "{prefix}-{:016x}{:016x}",
            crate::random_u64(),
            crate::random_u64()
        ),
        created: unix_now(),
        g,
    };
    if job.g.stream {
        Ok(stream_response(job, rx))
    } else {
        let timeout = state.config.request_timeout;
        let collect = collect_response(job, rx);
        match timeout {
            Some(t) => tokio::time::timeout(t, collect)
                .await
                .map_err(|_| ApiError::timeout(t.as_secs_f64()))?,
            None => collect.await,
        }
    }
}

fn finish_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

impl Job {
    fn choices(&self) -> usize {
        self.prompt_lens.len() * self.g.n
    }

    fn usage(&self, completion_tokens: usize, cached: usize) -> Value {
        let prompt: usize = self.prompt_lens.iter().sum();
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            // The shape OpenAI's API answers: no audio, no predicted outputs, and
            // reasoning text is not told apart from the reply.
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        })
    }

    /// Books the finished request: token budget, latency, log line.
    fn done(&self, completion_tokens: usize) {
        let prompt: usize = self.prompt_lens.iter().sum();
        self.state
            .limiter
            .charge(&self.client, prompt + completion_tokens);
        let seconds = self.started.elapsed().as_secs_f64();
        self.state
            .metrics
            .e2e_latency
            .with_label_values(&[self.endpoint.route()])
            .observe(seconds);
        tracing::info!(
            request_id = %self.request_id.0,
            prompt_tokens = prompt,
            completion_tokens,
            ms = seconds * 1e3,
            "generation"
        );
    }

    fn tokenizer(&self) -> &Tokenizer {
        self.state
            .model()
            .map(|m| m.engine.tokenizer().as_ref())
            .expect("a job exists only once the model is loaded")
    }

    fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.tokenizer().token_bytes(id)).into_owned()
    }

    /// Logprobs of some tokens in the endpoint's shape.
    fn logprobs(&self, tokens: &[TokenInfo], text_offset: usize) -> Value {
        match self.endpoint {
            Endpoint::Chat => {
                let entry = |id: u32, lp: f32| {
                    let bytes = self.tokenizer().token_bytes(id).to_vec();
                    json!({"token": self.token_text(id), "logprob": lp, "bytes": bytes})
                };
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let mut e = entry(t.id, t.logprob);
                        e["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
                        e
                    })
                    .collect();
                json!({ "content": content, "refusal": null })
            }
            Endpoint::Completions => self.completion_table(
                tokens
                    .iter()
                    .map(|t| (t.id, Some(t.logprob), t.top.as_slice())),
                text_offset,
            ),
        }
    }

    /// Completions logprobs for an echoed prompt and what followed it: the first
    /// prompt token has none (`null`), as in OpenAI's API.
    fn echo_logprobs(&self, prompt: &[PromptLogprob], generated: &[TokenInfo]) -> Value {
        let prompt = prompt
            .iter()
            .map(|t| (t.id, t.logprob, t.top_logprobs.as_slice()));
        let generated = generated
            .iter()
            .map(|t| (t.id, Some(t.logprob), t.top.as_slice()));
        self.completion_table(prompt.chain(generated), 0)
    }

    /// Completions logprobs of prompt tokens.
    fn prompt_logprobs(&self, prompt: &[PromptLogprob]) -> Value {
        let entries = prompt
            .iter()
            .map(|t| (t.id, t.logprob, t.top_logprobs.as_slice()));
        self.completion_table(entries, 0)
    }

    /// The completions shape of (token, logprob, alternatives) entries whose text starts
    /// at `text_offset`; a token without a logprob has `null` alternatives too.
    fn completion_table<'a>(
        &self,
        entries: impl Iterator<Item = (u32, Option<f32>, &'a [(u32, f32)])>,
        text_offset: usize,
    ) -> Value {
        let (mut tokens, mut logprobs, mut tops, mut offsets) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut offset = text_offset;
        for (id, logprob, top) in entries {
            let text = self.token_text(id);
            offsets.push(offset);
            offset += text.len();
            tokens.push(text);
            logprobs.push(logprob);
            tops.push(match logprob {
                None => Value::Null,
                Some(_) => top
                    .iter()
                    .map(|&(id, lp)| (self.token_text(id), json!(lp)))
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
            });
        }
        json!({
            "tokens": tokens,
            "token_logprobs": logprobs,
            "top_logprobs": tops,
            "text_offset": offsets,
        })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Vec<Value>) -> Value {
        let mut envelope = json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": concat!("llama-gpu-", env!("CARGO_PKG_VERSION")),
            "choices": choices,
        });
        // OpenAI's chat objects say which processing tier served them; there is one here.
        if self.endpoint == Endpoint::Chat {
            envelope["service_tier"] = json!("default");
        }
        envelope
    }
}

async fn collect_response(
    job: Job,
    mut rx: mpsc::UnboundedReceiver<Tagged>,
) -> Result<Response, ApiError> {
    let mut choices = vec![Choice::default(); job.choices()];
    let (mut completion, mut cached) = (0, 0);
    while let Some((p, event)) = rx.recv().await {
        match event {
            Event::Prompt { logprobs } => {
                for c in &mut choices[p * job.g.n..(p + 1) * job.g.n] {
                    c.prompt = logprobs.clone();
                }
            }
            Event::Token {
                index,
                id,
                text,
                logprob,
                top_logprobs,
            } => {
                let c = &mut choices[p * job.g.n + index];
                c.text.push_str(&text);
                if let Some(lp) = logprob {
                    c.tokens.push(TokenInfo {
                        id,
                        logprob: lp,
                        top: top_logprobs,
                    });
                }
            }
            Event::Finished {
                index,
                reason,
                usage,
                error,
            } => {
                if let Some(e) = error {
                    return Err(ApiError::internal(format!("generation failed: {e}")));
                }
                choices[p * job.g.n + index].finish = Some(finish_name(reason));
                completion += usage.completion_tokens;
                if index == 0 {
                    cached += usage.cached_prompt_tokens;
                }
            }
        }
    }
    job.done(completion);
    let body: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let echoed = job.echoed.get(i / job.g.n).map_or("", String::as_str);
            let logprobs = match (job.g.logprobs, echoed.is_empty()) {
                (None, _) => Value::Null,
                (Some(_), true) => job.logprobs(&c.tokens, 0),
                (Some(_), false) => job.echo_logprobs(&c.prompt, &c.tokens),
            };
            match job.endpoint {
                Endpoint::Chat => {
                    let mut message =
                        json!({"role": "assistant", "content": c.text, "refusal": null});
                    let mut finish = c.finish;
                    if let Some(format) = job.g.tool_format {
                        let (content, calls) = format.parse(&c.text);
                        message["content"] = json!(content);
                        if !calls.is_empty() {
                            message["tool_calls"] =
                                calls.iter().map(|c| tool_call_json(c, None)).collect();
                            finish = finish.map(|f| if f == "stop" { "tool_calls" } else { f });
                        }
                    }
                    json!({
                        "index": i,
                        "message": message,
                        "logprobs": logprobs,
                        "finish_reason": finish,
                    })
                }
                Endpoint::Completions => json!({
                    "index": i,
                    "text": format!("{echoed}{}", c.text),
                    "logprobs": logprobs,
                    "finish_reason": c.finish,
                }),
            }
        })
        .collect();
    let mut out = job.envelope(false, body);
    out["usage"] = job.usage(completion, cached);
    Ok(Json(out).into_response())
}

/// Server-sent events: (chat) a first chunk with the role, then text deltas as soon as
/// they are complete UTF-8, a last chunk per choice with its finish reason, the usage
/// chunk when asked, and `[DONE]`.
fn stream_response(job: Job, rx: mpsc::UnboundedReceiver<Tagged>) -> Response {
    let deadline = job
        .state
        .config
        .request_timeout
        .map(|t| tokio::time::Instant::now() + t);
    let (tx, out) = mpsc::channel::<Result<SseEvent, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        let send = |v: Value| SseEvent::default().data(v.to_string());
        let mut rx = rx;
        if job.endpoint == Endpoint::Chat {
            for i in 0..job.choices() {
                let first = json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null});
                let chunk = job.envelope(true, vec![first]);
                if tx.send(Ok(send(chunk))).await.is_err() {
                    return;
                }
            }
        }
        let mut text_offsets = vec![0usize; job.choices()];
        // Echo without log-probabilities needs no engine event: the prompt goes first.
        if job.g.logprobs.is_none() {
            for (i, offset) in text_offsets.iter_mut().enumerate() {
                let Some(text) = job.echoed.get(i / job.g.n) else {
                    break;
                };
                *offset = text.len();
                let choice =
                    json!({"index": i, "text": text, "logprobs": null, "finish_reason": null});
                if tx
                    .send(Ok(send(job.envelope(true, vec![choice]))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let mut calls: Vec<Option<CallStream>> = (0..job.choices())
            .map(|_| job.g.tool_format.map(CallStream::new))
            .collect();
        let (mut completion, mut cached) = (0, 0);
        let mut streamed_tokens = 0;
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                    Ok(e) => e,
                    Err(_) => {
                        let e = ApiError::timeout(
                            job.state
                                .config
                                .request_timeout
                                .map_or(0.0, |t| t.as_secs_f64()),
                        );
                        let _ = tx.send(Ok(send(e.body()))).await;
                        break;
                    }
                },
                None => rx.recv().await,
            };
            let Some((p, event)) = next else { break };
            let mut chunk = match event {
                Event::Prompt { logprobs } => {
                    let text = job.echoed.get(p).cloned().unwrap_or_default();
                    let lp = job.prompt_logprobs(&logprobs);
                    let mut choices = Vec::new();
                    let n = job.g.n;
                    for (i, offset) in text_offsets.iter_mut().enumerate().skip(p * n).take(n) {
                        *offset = text.len();
                        choices.push(json!({"index": i, "text": text, "logprobs": lp, "finish_reason": null}));
                    }
                    job.envelope(true, choices)
                }
                Event::Token {
                    index,
                    id,
                    text,
                    logprob,
                    top_logprobs,
                } => {
                    let i = p * job.g.n + index;
                    streamed_tokens += 1;
                    let text = match &mut calls[i] {
                        Some(stream) => stream.push(&text),
                        None => text,
                    };
                    if text.is_empty() && logprob.is_none() {
                        continue;
                    }
                    let logprobs = match logprob {
                        Some(lp) => job.logprobs(
                            &[TokenInfo {
                                id,
                                logprob: lp,
                                top: top_logprobs,
                            }],
                            text_offsets[i],
                        ),
                        None => Value::Null,
                    };
                    text_offsets[i] += text.len();
                    let choice = match job.endpoint {
                        Endpoint::Chat => {
                            json!({"index": i, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": null})
                        }
                        Endpoint::Completions => {
                            json!({"index": i, "text": text, "logprobs": logprobs, "finish_reason": null})
                        }
                    };
                    job.envelope(true, vec![choice])
                }
                Event::Finished {
                    index,
                    reason,
                    usage,
                    error,
                } => {
                    if let Some(e) = error {
                        let _ = tx
                            .send(Ok(send(
                                ApiError::internal(format!("generation failed: {e}")).body(),
                            )))
                            .await;
                        return;
                    }
                    completion += usage.completion_tokens;
                    if index == 0 {
                        cached += usage.cached_prompt_tokens;
                    }
                    let i = p * job.g.n + index;
                    let mut finish = finish_name(reason);
                    if let Some(stream) = calls[i].take() {
                        let (rest, found) = stream.finish();
                        let mut deltas = Vec::new();
                        if !rest.is_empty() {
                            deltas.push(json!({"content": rest}));
                        }
                        for (k, call) in found.iter().enumerate() {
                            deltas.push(json!({"tool_calls": [tool_call_json(call, Some(k))]}));
                        }
                        if !found.is_empty() && finish == "stop" {
                            finish = "tool_calls";
                        }
                        for delta in deltas {
                            let choice = json!({"index": i, "delta": delta, "logprobs": null, "finish_reason": null});
                            if tx
                                .send(Ok(send(job.envelope(true, vec![choice]))))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    let choice = match job.endpoint {
                        Endpoint::Chat => {
                            json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": finish})
                        }
                        Endpoint::Completions => {
                            json!({"index": i, "text": "", "logprobs": null, "finish_reason": finish})
                        }
                    };
                    job.envelope(true, vec![choice])
                }
            };
            if job.g.continuous_usage {
                chunk["usage"] = job.usage(streamed_tokens, cached);
            }
            if tx.send(Ok(send(chunk))).await.is_err() {
                // The client left: dropping `rx` cancels the engine requests.
                return;
            }
        }
        job.done(completion);
        if job.g.include_usage {
            let mut chunk = job.envelope(true, Vec::new());
            chunk["usage"] = job.usage(completion, cached);
            let _ = tx.send(Ok(send(chunk))).await;
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    let events =
        futures_util::stream::unfold(
            out,
            |mut out| async move { out.recv().await.map(|e| (e, out)) },
        );
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
