//! API keys and per-key rate limits. Keys are compared in constant time; each key
//! (or, without keys, every client together) has a token bucket of requests per minute
//! and one of generated-plus-prompt tokens per minute.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use subtle::ConstantTimeEq;

/// Who is asking: the API key used (empty without keys). Handlers charge tokens to it.
#[derive(Clone, Debug, Default)]
pub struct Client(pub Arc<str>);

/// Refills continuously at `per_minute`, holds at most one minute's worth.
#[derive(Debug, Clone)]
struct Bucket {
    level: f64,
    per_minute: f64,
    at: Instant,
}

impl Bucket {
    fn new(per_minute: f64, now: Instant) -> Bucket {
        Bucket {
            level: per_minute,
            per_minute,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let minutes = now.duration_since(self.at).as_secs_f64() / 60.0;
        self.level = (self.level + minutes * self.per_minute).min(self.per_minute);
        self.at = now;
    }

    /// Seconds until the level reaches `amount`.
    fn wait_for(&self, amount: f64) -> u64 {
        ((amount - self.level).max(0.0) / self.per_minute * 60.0).ceil() as u64
    }
}

#[derive(Default)]
struct Buckets {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

pub struct RateLimiter {
    requests_per_minute: Option<u32>,
    tokens_per_minute: Option<u32>,
    clients: Mutex<HashMap<Arc<str>, Buckets>>,
}

impl RateLimiter {
    pub fn new(requests_per_minute: Option<u32>, tokens_per_minute: Option<u32>) -> Self {
        RateLimiter {
            requests_per_minute,
            tokens_per_minute,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, client: &Client, f: impl FnOnce(&mut Buckets, Instant) -> T) -> T {
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let b = clients.entry(client.0.clone()).or_insert_with(|| Buckets {
            requests: self.requests_per_minute.map(|r| Bucket::new(r as f64, now)),
            tokens: self.tokens_per_minute.map(|t| Bucket::new(t as f64, now)),
        });
        f(b, now)
    }

    /// Takes one request from the client's budget, or says how long to wait.
    pub fn admit(&self, client: &Client) -> Result<(), ApiError> {
        self.with(client, |b, now| {
            if let Some(t) = &mut b.tokens {
                t.refill(now);
                if t.level < 1.0 {
                    return Err(ApiError::rate_limited("tokens per minute", t.wait_for(1.0)));
                }
            }
            if let Some(r) = &mut b.requests {
                r.refill(now);
                if r.level < 1.0 {
                    return Err(ApiError::rate_limited(
                        "requests per minute",
                        r.wait_for(1.0),
                    ));
                }
                r.level -= 1.0;
            }
            Ok(())
        })
    }

    /// Charges the tokens a finished request used (the budget may go below zero: the
    /// next request then waits until it has refilled).
    pub fn charge(&self, client: &Client, tokens: usize) {
        self.with(client, |b, now| {
            if let Some(t) = &mut b.tokens {
                t.refill(now);
                t.level -= tokens as f64;
            }
        })
    }
}

/// The key in `Authorization: Bearer KEY` (or `x-api-key: KEY`).
fn presented_key(req: &Request) -> Option<&str> {
    let h = req.headers();
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return v.strip_prefix("Bearer ").map(str::trim);
    }
    h.get("x-api-key").and_then(|v| v.to_str().ok())
}

/// Everything but `/health` needs a valid key when keys are set, and passes the rate
/// limits.
pub async fn guard(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let keys = &state.config.api_keys;
    let client = if keys.is_empty() {
        Client::default()
    } else {
        let presented = presented_key(&req).unwrap_or("").as_bytes();
        // Every key is compared, so the time does not say which one nearly matched.
        let mut found = None;
        for k in keys {
            if bool::from(k.as_bytes().ct_eq(presented)) {
                found = Some(k);
            }
        }
        match found {
            Some(k) => Client(Arc::from(k.as_str())),
            None => return ApiError::unauthorized().into_response(),
        }
    };
    let limited = req.uri().path().starts_with("/v1/") || req.uri().path().ends_with("tokenize");
    if limited {
        if let Err(e) = state.limiter.admit(&client) {
            return e.into_response();
        }
    }
    req.extensions_mut().insert(client);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bucket_empties_and_says_when_to_retry() {
        let l = RateLimiter::new(Some(2), None);
        let c = Client(Arc::from("k"));
        assert!(l.admit(&c).is_ok());
        assert!(l.admit(&c).is_ok());
        let e = l.admit(&c).unwrap_err();
        assert_eq!(e.status, 429);
        assert!((1..=30).contains(&e.retry_after.unwrap()));
        // Another key has its own budget.
        assert!(l.admit(&Client(Arc::from("other"))).is_ok());
    }

    #[test]
    fn token_budget_is_charged_after_the_fact() {
        let l = RateLimiter::new(None, Some(100));
        let c = Client::default();
        assert!(l.admit(&c).is_ok());
        l.charge(&c, 250);
        let e = l.admit(&c).unwrap_err();
        assert!(e.message.contains("tokens per minute"));
        assert!(e.retry_after.unwrap() >= 90);
    }
}
