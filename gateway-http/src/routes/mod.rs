//! The HTTP surface: [`router`] builds it from an [`AppState`], so tests and
//! [`crate::start`] serve the same thing.
//!
//! Order of checks on `/v1/*` (SPEC §4): route enabled (a disabled endpoint is
//! simply not routed → plain 404) → method (the method router's fallback → 405
//! with `Allow`, before any extractor runs) → auth (the [`Authorized`]
//! extractor, first argument of every `/v1` handler) → body size → JSON →
//! semantics (in the chat handler, in that order).
//!
//! The WebSocket protocol (SPEC §7) plugs in here: [`crate::ws::UpgradeLayer`],
//! outermost, takes any request with `Upgrade: websocket` (any path, whether or
//! not the chat endpoints are enabled) before routing, metrics or auth; its
//! `connect` frame reuses [`crate::auth::Auth::check_secret`].

mod chat;
mod health;
mod models;
mod openapi;

pub use openapi::OPENAPI_JSON;

use crate::auth::Caller;
use crate::browser::BrowserGuardLayer;
use crate::error::ApiError;
use crate::metrics::Route;
use crate::state::AppState;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use http::request::Parts;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

/// The gateway's router, with `state` applied.
pub fn router(state: AppState) -> Router {
    const GET: &str = "GET, HEAD";
    let mut r = Router::new()
        .route("/healthz", get(health::healthz).fallback(|| not_allowed(GET)))
        .route("/readyz", get(health::readyz).fallback(|| not_allowed(GET)))
        .route("/metrics", get(health::metrics).fallback(|| not_allowed(GET)))
        .route("/openapi.json", get(openapi::document).fallback(|| not_allowed(GET)));
    if state.chat().enabled {
        r = r
            .route("/v1/chat/completions", post(chat::completions).fallback(|| not_allowed("POST")))
            .route("/v1/models", get(models::list).fallback(|| not_allowed(GET)))
            // A wildcard so that both `openclaw%2Fmain` and `openclaw/main` reach the handler.
            .route("/v1/models/{*id}", get(models::get).fallback(|| not_allowed(GET)));
    }
    r.fallback(|| async { ApiError::NotFound })
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(crate::ws::UpgradeLayer::new(state.clone()))
        .layer(BrowserGuardLayer::new(state.origins().clone(), state.metrics_handle().clone()))
        .with_state(state)
}

async fn not_allowed(allow: &'static str) -> ApiError {
    ApiError::MethodNotAllowed { allow }
}

/// Counts every request by route and status, with its latency (until the
/// response head). A request whose client went away before the answer is
/// counted as `499`.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    struct Pending<'a> {
        state: &'a AppState,
        route: Route,
        start: Instant,
        status: u16,
    }
    impl Drop for Pending<'_> {
        fn drop(&mut self) {
            self.state.metrics().request(self.route, self.status, self.start.elapsed());
        }
    }
    let mut pending =
        Pending { state: &state, route: Route::of(req.uri().path()), start: Instant::now(), status: 499 };
    let resp = next.run(req).await;
    pending.status = resp.status().as_u16();
    resp
}

/// Proof that the request passed [`crate::auth::Auth`]. Taking it as the first
/// argument of a handler puts auth after routing and method, before the body.
#[derive(Debug, Clone, Copy)]
pub struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match state.auth().check_request(caller(parts, state), &parts.headers) {
            Ok(()) => Ok(Authorized),
            // A wrong secret from an exempt client is answered late (guessing made slow).
            Err(refusal) => Err(refusal.answer().await),
        }
    }
}

/// Who is asking: the peer, the client behind it when the peer is a trusted
/// proxy, and whether a browser sent the request.
pub(crate) fn caller(parts: &Parts, state: &AppState) -> Caller {
    let browser = parts.headers.contains_key(http::header::ORIGIN);
    state.auth().caller(client_ip(parts), &parts.headers, browser)
}

/// The peer address of the connection (never a header: those are client-chosen).
/// Without connection info (a router driven directly, in tests) the address is
/// `0.0.0.0`, which is never loopback-exempt.
pub(crate) fn client_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(addr)| addr.ip())
}

#[cfg(test)]
mod tests {
    use super::OPENAPI_JSON;
    use serde_json::Value;

    /// The paths [`super::router`] registers, read from this file's own source
    /// (axum cannot list a router's routes), wildcards written as OpenAPI
    /// parameters (`{*id}` → `{id}`).
    fn routed_paths() -> Vec<String> {
        let source = include_str!("mod.rs");
        let needle = concat!(".route", "(\"");
        source
            .match_indices(needle)
            .filter_map(|(at, _)| {
                let rest = &source[at + needle.len()..];
                rest.find('"').map(|end| rest[..end].replace("{*", "{"))
            })
            .collect()
    }

    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc: Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is valid JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.1.")), Some(true));
        let paths = doc["paths"].as_object().expect("the document has paths");
        let routed = routed_paths();
        assert!(routed.len() >= 7, "the source scan found the routes: {routed:?}");
        for path in &routed {
            assert!(paths.contains_key(path), "route {path} is not in openapi.json");
        }
        // And nothing documented that is not routed (the WebSocket upgrade takes any path).
        for path in paths.keys().filter(|p| p.as_str() != "/") {
            assert!(routed.contains(path), "openapi.json documents {path}, which is not routed");
        }
    }
}
