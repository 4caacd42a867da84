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

/// Ready: agent-svc passes its gRPC health check (200), else 503.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let up = state.client().health().await;
    state.metrics().agent_svc_up(up);
    let (status, body) = if up {
        (StatusCode::OK, r#"{"status":"ready"}"#)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"unavailable"}"#)
    };
    (status, [no_store(), json()], body).into_response()
}

/// Prometheus text exposition of this gateway's metrics.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([no_store(), (CONTENT_TYPE, content_type)], state.metrics().render()).into_response()
}
