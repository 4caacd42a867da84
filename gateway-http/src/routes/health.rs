//! `GET /healthz`, `GET /readyz` (no auth, never cached) and `GET /metrics`.

use crate::state::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};

fn no_store() -> (http::HeaderName, HeaderValue) {
    (CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

fn json() -> (http::HeaderName, HeaderValue) {
    (CONTENT_TYPE, HeaderValue::from_static("application/json"))
}

/// Alive: always 200.
pub async fn healthz() -> Response {
    ([no_store(), json()], r#"{"status":"ok"}"#).into_response()
}

/// Ready while at least one agent-svc replica passes its gRPC health check
/// (200), else 503; the body says how many are up.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let r = state.client().readiness().await;
    let (status, word) =
        if r.up > 0 { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "unavailable") };
    let body = format!(r#"{{"status":"{word}","agentService":{{"replicas":{},"up":{}}}}}"#, r.total, r.up);
    (status, [no_store(), json()], body).into_response()
}

/// Prometheus text exposition of this gateway's metrics.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([no_store(), (CONTENT_TYPE, content_type)], state.metrics().render()).into_response()
}
