//! The Gateway WebSocket protocol (SPEC §7) on the HTTP port.
//!
//! [`UpgradeLayer`] sits in front of the routes: a request asking for a
//! WebSocket (`Upgrade: websocket` with `Connection: upgrade`, or an HTTP/2
//! extended CONNECT) on any path is upgraded here; every other request goes on
//! to the routes untouched (the check is a header lookup, and the HTTP path's
//! future is not boxed). The protocol works whether or not the HTTP chat
//! endpoints are enabled, and authenticates with the same secret and the same
//! failed-attempt limiter as HTTP ([`crate::auth::Auth::check_secret`]).
//!
//! Modules: [`protocol`] (frames, error and close codes), `conn` (handshake,
//! request loop, keepalive), `outbox` (the byte-budgeted send queue and the
//! writer task), [`methods`] (the method handlers), [`chat`] (`chat.send` runs,
//! which outlive their connection), [`idempotency`] (the bounded TTL map behind
//! `idempotencyKey`).

pub mod chat;
mod conn;
pub mod idempotency;
pub mod methods;
mod outbox;
pub mod protocol;

use crate::state::AppState;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, Either};
use http::{header, HeaderMap, Method};
use services::config::{AuthMode, LoadedConfig, WsConfig};
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

/// `gateway.ws` as the connections need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsSettings {
    /// Largest frame accepted after `connect` (the socket layer refuses bigger
    /// ones, closing with 1009, without buffering them).
    pub max_payload: usize,
    /// Outgoing bytes a connection may have queued; over it the client is disconnected.
    pub max_buffered_bytes: usize,
    /// Ping / `tick` interval; twice this without a frame from the client closes it.
    pub tick_interval: Duration,
    /// Time allowed for the `connect` request.
    pub handshake_timeout: Duration,
}

impl WsSettings {
    /// Reads `gateway.ws` from the config.
    pub fn from_config(config: &LoadedConfig) -> WsSettings {
        WsSettings::from(&config.config.gateway.ws)
    }
}

impl From<&WsConfig> for WsSettings {
    fn from(c: &WsConfig) -> WsSettings {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        WsSettings {
            max_payload: size(c.max_payload),
            max_buffered_bytes: size(c.max_buffered_bytes),
            tick_interval: Duration::from_millis(c.tick_interval_ms.max(1)),
            handshake_timeout: Duration::from_millis(c.handshake_timeout_ms.max(1)),
        }
    }
}

impl Default for WsSettings {
    fn default() -> Self {
        WsSettings::from(&WsConfig::default())
    }
}

/// Whether a request asks for a WebSocket. HTTP/1.1: `Upgrade: websocket`
/// (case-insensitive) and an `upgrade` token in `Connection`; HTTP/2: extended
/// CONNECT with `:protocol websocket`.
pub fn wants_websocket(req: &Request) -> bool {
    let headers = req.headers();
    match headers.get(header::UPGRADE) {
        Some(upgrade) => upgrade.as_bytes().eq_ignore_ascii_case(b"websocket") && connection_upgrade(headers),
        None => {
            req.method() == Method::CONNECT
                && req
                    .extensions()
                    .get::<hyper::ext::Protocol>()
                    .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
        }
    }
}

fn connection_upgrade(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    })
}

/// Upgrades a WebSocket request (answers 400 when the upgrade headers are
/// incomplete) and serves the connection in its own task.
async fn accept(state: AppState, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let caller = crate::routes::caller(&parts, &state);
    // Mode `trusted-proxy`: the identity rides on the upgrade request, not in `connect`.
    let proxied = (state.auth().mode() == AuthMode::TrustedProxy)
        .then(|| state.auth().proxy_identity(caller.peer, &parts.headers).is_ok());
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let settings = *state.ws();
    let tracker = state.ws_connections().clone();
    upgrade
        .max_message_size(settings.max_payload)
        .max_frame_size(settings.max_payload)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| tracker.track_future(conn::serve(socket, state, caller, proxied)))
}

/// The layer that takes WebSocket requests off the routes (see the module docs).
#[derive(Debug, Clone)]
pub struct UpgradeLayer {
    state: AppState,
}

impl UpgradeLayer {
    /// A layer serving WebSocket connections with `state`.
    pub fn new(state: AppState) -> UpgradeLayer {
        UpgradeLayer { state }
    }
}

impl<S> Layer<S> for UpgradeLayer {
    type Service = Upgrade<S>;

    fn layer(&self, inner: S) -> Upgrade<S> {
        Upgrade { inner, state: self.state.clone() }
    }
}

/// The service of [`UpgradeLayer`].
#[derive(Debug, Clone)]
pub struct Upgrade<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for Upgrade<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner service is an axum route: always ready, reserving nothing, so
        // answering a WebSocket request without calling it leaks nothing.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if wants_websocket(&req) {
            let state = self.state.clone();
            Either::Left(Box::pin(async move { Ok(accept(state, req).await) }))
        } else {
            Either::Right(self.inner.call(req))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn req(method: Method, headers: &[(&str, &str)]) -> Request {
        let mut b = http::Request::builder().method(method).uri("/anything");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn detects_websocket_requests() {
        assert!(wants_websocket(&req(Method::GET, &[("upgrade", "websocket"), ("connection", "Upgrade")])));
        assert!(wants_websocket(&req(
            Method::GET,
            &[("upgrade", "WebSocket"), ("connection", "keep-alive, upgrade")]
        )));
        assert!(wants_websocket(&req(
            Method::GET,
            &[("upgrade", "websocket"), ("connection", "keep-alive"), ("connection", "Upgrade")]
        )));
        // A stray Upgrade header without `Connection: upgrade` is plain HTTP.
        assert!(!wants_websocket(&req(Method::POST, &[("upgrade", "websocket")])));
        assert!(!wants_websocket(&req(Method::GET, &[("upgrade", "h2c"), ("connection", "upgrade")])));
        assert!(!wants_websocket(&req(Method::GET, &[("connection", "upgradez")])));
        assert!(!wants_websocket(&req(Method::GET, &[])));
        assert!(!wants_websocket(&req(Method::CONNECT, &[])));
    }

    #[test]
    fn settings_from_config() {
        let s = WsSettings::default();
        assert_eq!(s.max_payload, 1 << 20);
        assert_eq!(s.max_buffered_bytes, 4 << 20);
        assert_eq!(s.tick_interval, Duration::from_secs(30));
        assert_eq!(s.handshake_timeout, Duration::from_secs(10));
    }
}
