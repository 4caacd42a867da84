//! The browser guard (SPEC §3): a web page open in the user's browser may not
//! drive the gateway unless its origin is allowed.
//!
//! Browsers send `Origin` on every cross-origin request and on every WebSocket
//! upgrade, and let any page open `ws://127.0.0.1:18789`; SDKs, curl and servers
//! send none. So, outermost (before the WebSocket upgrade, routing and
//! authentication): a request whose `Origin` is neither the gateway's own nor
//! in `gateway.allowedOrigins` is refused with `403`; one without `Origin` goes
//! on untouched. CORS preflights are answered for allowed origins only, and
//! responses to allowed cross-origin requests carry the CORS headers a page
//! needs to read them.
//!
//! The gateway's own origin is the one whose `host[:port]` is the request's
//! `Host` — when that host is an IP address or `localhost`. A page served from
//! a DNS name never counts as same-origin by itself (DNS rebinding lets any
//! site point its own name at 127.0.0.1): name it in `gateway.allowedOrigins`.

use crate::error::ApiError;
use crate::metrics::Metrics;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, Either};
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Methods a preflight may ask for.
const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
/// Request headers a page may send.
const ALLOW_HEADERS: &str =
    "authorization, content-type, x-openclaw-agent-id, x-openclaw-model, x-openclaw-session-key, x-request-id, traceparent";
/// Response headers a page may read.
const EXPOSE_HEADERS: &str = "x-openclaw-session-key, x-request-id, retry-after";
/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// Which origins may call the gateway.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// `gateway.allowedOrigins`, normalized (`scheme://host[:port]`, lowercase).
    allowed: Arc<[String]>,
}

/// What the guard makes of a request's `Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// No `Origin`: not a browser.
    NotBrowser,
    /// The gateway's own origin.
    SameOrigin,
    /// An allowed other origin (CORS headers go on the answer).
    Allowed(HeaderValue),
    /// Anything else.
    Refused,
}

impl Origins {
    /// The allowed origins (entries that are not origins are left out; the
    /// config check refuses them at start).
    pub fn new<'a>(allowed: impl IntoIterator<Item = &'a String>) -> Origins {
        Origins { allowed: allowed.into_iter().filter_map(|o| services::net::normalize_origin(o)).collect() }
    }

    fn verdict(&self, req: &Request) -> Verdict {
        let Some(origin) = req.headers().get(header::ORIGIN) else { return Verdict::NotBrowser };
        let Some(normalized) = origin.to_str().ok().and_then(services::net::normalize_origin) else {
            // `null` (sandboxed frames, file:) and garbage are never allowed.
            return Verdict::Refused;
        };
        if self.allowed.contains(&normalized) {
            return Verdict::Allowed(origin.clone());
        }
        let authority = normalized.split_once("://").map_or("", |(_, a)| a);
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        if host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) && addressed_directly(authority) {
            return Verdict::SameOrigin;
        }
        Verdict::Refused
    }
}

/// Whether `host[:port]` names the machine by address (an IP or `localhost`),
/// not by a DNS name that anyone could point at it.
fn addressed_directly(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(v6) => return v6.split(']').next().is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.parse::<std::net::IpAddr>().is_ok() || host == "localhost" || host.ends_with(".localhost")
}

/// The layer (outermost: before the WebSocket upgrade and the routes).
#[derive(Debug, Clone)]
pub struct BrowserGuardLayer {
    origins: Origins,
    metrics: Arc<Metrics>,
}

impl BrowserGuardLayer {
    /// A guard allowing `origins` (and the gateway's own).
    pub fn new(origins: Origins, metrics: Arc<Metrics>) -> BrowserGuardLayer {
        BrowserGuardLayer { origins, metrics }
    }
}

impl<S> Layer<S> for BrowserGuardLayer {
    type Service = BrowserGuard<S>;

    fn layer(&self, inner: S) -> BrowserGuard<S> {
        BrowserGuard { inner, origins: self.origins.clone(), metrics: self.metrics.clone() }
    }
}

/// The service of [`BrowserGuardLayer`].
#[derive(Debug, Clone)]
pub struct BrowserGuard<S> {
    inner: S,
    origins: Origins,
    metrics: Arc<Metrics>,
}

impl<S> Service<Request> for BrowserGuard<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.origins.verdict(&req) {
            Verdict::NotBrowser | Verdict::SameOrigin => Either::Right(self.inner.call(req)),
            Verdict::Refused => {
                self.metrics.origin_refused();
                Either::Left(Box::pin(std::future::ready(Ok(ApiError::OriginNotAllowed.into_response()))))
            }
            Verdict::Allowed(origin) if is_preflight(&req) => {
                Either::Left(Box::pin(std::future::ready(Ok(preflight(origin)))))
            }
            Verdict::Allowed(origin) => {
                let answer = self.inner.call(req);
                Either::Left(Box::pin(async move {
                    let mut resp = answer.await?;
                    let h = resp.headers_mut();
                    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
                    h.append(header::VARY, HeaderValue::from_static("origin"));
                    Ok(resp)
                }))
            }
        }
    }
}

fn is_preflight(req: &Request) -> bool {
    req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// `204` allowing the origin, the methods and the gateway's headers.
fn preflight(origin: HeaderValue) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(PREFLIGHT_MAX_AGE));
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn req(headers: &[(&str, &str)]) -> Request {
        let mut b = http::Request::builder().uri("/v1/models");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn verdicts() {
        let o = Origins::new(&["https://App.example.com".to_string()]);
        let v = |h: &[(&str, &str)]| o.verdict(&req(h));
        assert_eq!(v(&[("host", "127.0.0.1:18789")]), Verdict::NotBrowser);
        assert_eq!(
            v(&[("origin", "http://127.0.0.1:18789"), ("host", "127.0.0.1:18789")]),
            Verdict::SameOrigin
        );
        assert_eq!(
            v(&[("origin", "http://localhost:18789"), ("host", "localhost:18789")]),
            Verdict::SameOrigin
        );
        assert_eq!(v(&[("origin", "http://[::1]:18789"), ("host", "[::1]:18789")]), Verdict::SameOrigin);
        assert!(matches!(v(&[("origin", "https://app.example.com"), ("host", "gw:1")]), Verdict::Allowed(_)));
        // Foreign, forged-looking, or DNS-rebound names.
        assert_eq!(v(&[("origin", "https://evil.example"), ("host", "127.0.0.1:18789")]), Verdict::Refused);
        assert_eq!(v(&[("origin", "http://127.0.0.1:9999"), ("host", "127.0.0.1:18789")]), Verdict::Refused);
        assert_eq!(
            v(&[("origin", "http://evil.example:18789"), ("host", "evil.example:18789")]),
            Verdict::Refused
        );
        assert_eq!(v(&[("origin", "null"), ("host", "127.0.0.1:18789")]), Verdict::Refused);
        assert_eq!(v(&[("origin", "http://127.0.0.1:18789")]), Verdict::Refused, "no Host to compare with");
    }
}
