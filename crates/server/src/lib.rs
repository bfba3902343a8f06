//! `llama-gpu serve`: an OpenAI-compatible HTTP server on axum. The engine runs on its
//! own thread; handlers validate requests, render chat templates, submit to the engine
//! and turn its events into JSON or server-sent events.

mod error;
mod generate;
mod limits;
mod metrics;
mod params;
mod routes;
mod structured;
mod tools;

pub use error::ApiError;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use engine::{ChatTemplate, ContentTokens, Engine};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The id clients name the model by (`/v1/models`).
    pub model_id: String,
    /// Other names requests may use for it.
    pub model_aliases: Vec<String>,
    pub api_keys: Vec<String>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub max_body_bytes: usize,
    /// Generation requests end after this long (non-streaming: 504).
    pub request_timeout: Option<Duration>,
    /// Origins allowed by CORS; empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Whether control-token spellings in chat message text become control tokens.
    pub content_tokens: ContentTokens,
    /// Tokens generated for a request that does not set `max_tokens`: a forgotten limit
    /// must not hold a sequence until the context is full.
    pub max_tokens_default: usize,
}

impl ServerConfig {
    /// Whether a request naming `model` is for the model served here.
    pub fn serves(&self, model: &str) -> bool {
        model == self.model_id || self.model_aliases.iter().any(|a| a == model)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model_id: "default".into(),
            model_aliases: Vec::new(),
            api_keys: Vec::new(),
            requests_per_minute: None,
            tokens_per_minute: None,
            max_body_bytes: 4 << 20,
            request_timeout: None,
            cors_origins: Vec::new(),
            content_tokens: ContentTokens::Text,
            max_tokens_default: 4096,
        }
    }
}

/// The loaded model: what handlers need once loading is over.
pub struct Model {
    pub engine: Engine,
    pub template: ChatTemplate,
}

pub struct AppState {
    pub config: ServerConfig,
    model: OnceLock<Model>,
    limiter: limits::RateLimiter,
    metrics: metrics::HttpMetrics,
    /// Unix seconds at start (`created` of the model object).
    started: u64,
    next_request: AtomicU64,
}

impl AppState {
    pub fn new(config: ServerConfig) -> Arc<AppState> {
        Arc::new(AppState {
            limiter: limits::RateLimiter::new(config.requests_per_minute, config.tokens_per_minute),
            config,
            model: OnceLock::new(),
            metrics: metrics::HttpMetrics::new(),
            started: unix_now(),
            next_request: AtomicU64::new(1),
        })
    }

    /// Makes the server ready; `/health` turns 200.
    pub fn set_model(&self, model: Model) {
        if self.model.set(model).is_err() {
            tracing::warn!("the model was already set");
        }
    }

    fn model(&self) -> Result<&Model, ApiError> {
        self.model
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading"))
    }
}

/// A random number (seeds of requests without one, response ids): the standard
/// library's per-process random hash keys, mixed with the time.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn router(state: Arc<AppState>) -> Router {
    let mut app = Router::new()
        .route("/v1/chat/completions", post(generate::chat))
        .route("/v1/completions", post(generate::completions))
        .route("/v1/models", get(routes::models))
        .route("/v1/models/{id}", get(routes::model))
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        .route("/tokenizer_info", get(routes::tokenizer_info))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), limits::guard))
        .layer(middleware::from_fn_with_state(state.clone(), access_log));
    if !state.config.cors_origins.is_empty() {
        let origins: Vec<axum::http::HeaderValue> = state
            .config
            .cors_origins
            .iter()
            .filter_map(|o| o.parse().ok())
            .collect();
        app = app.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods(tower_http::cors::Any)
                .allow_headers(tower_http::cors::Any),
        );
    }
    app.with_state(state)
}

/// A request's id, for logs and the `x-request-id` header.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Counts and times every request, and logs it.
async fn access_log(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = RequestId(format!(
        "req-{}",
        state.next_request.fetch_add(1, Ordering::Relaxed)
    ));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    req.extensions_mut().insert(id.clone());
    let mut response = next.run(req).await;
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    state
        .metrics
        .requests
        .with_label_values(&[route.as_str(), &status.to_string()])
        .inc();
    state
        .metrics
        .response_time
        .with_label_values(&[route.as_str()])
        .observe(seconds);
    if let Ok(v) = id.0.parse() {
        response.headers_mut().insert("x-request-id", v);
    }
    tracing::info!(
        request_id = %id.0,
        %method,
        path,
        status,
        ms = seconds * 1e3,
        "request"
    );
    response
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish for up to
/// `grace`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        let _ = stopping_tx.send(());
    };
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(signal);
    let deadline = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server => r,
        _ = deadline => {
            tracing::warn!("shutdown deadline of {} s reached; ending requests in flight", grace.as_secs_f64());
            Ok(())
        }
    }
}
