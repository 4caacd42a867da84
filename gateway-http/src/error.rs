//! Errors of gateway-http.
//!
//! [`ApiError`] is the one type every request path fails with. It has one
//! mapping to an HTTP response (SPEC §4 "Errors"); the one mapping from an
//! agent-svc gRPC status lives with the gRPC client ([`crate::client`]).
//! [`GatewayError`] is what [`crate::start`] fails with before anything is served.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;
use std::borrow::Cow;

/// `Retry-After` sent when no agent-svc is reachable.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 1;

/// Every way a request can fail. Each variant maps to exactly one status and
/// (except the plain-text 404/405) one `{"error":{…}}` body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Unknown route or disabled endpoint: plain-text `Not Found`.
    #[error("Not Found")]
    NotFound,
    /// Wrong method: plain-text `Method Not Allowed` with `Allow`.
    #[error("Method Not Allowed")]
    MethodNotAllowed {
        /// The `Allow` header value.
        allow: &'static str,
    },
    /// A request the gateway itself rejects (400 `invalid_request_error`).
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong, for the client.
        message: Cow<'static, str>,
        /// The field at fault.
        param: Option<Cow<'static, str>>,
    },
    /// Missing or wrong secret.
    #[error("Unauthorized")]
    Unauthorized,
    /// Too many failed attempts from this client IP.
    #[error("Too many failed authentication attempts. Retry later.")]
    AuthLockedOut {
        /// Seconds until the lockout ends (rounded up).
        retry_after_secs: u64,
    },
    /// The body is over `maxBodyBytes` (on HTTP/1 the chat handler also closes the connection).
    #[error("Payload too large")]
    PayloadTooLarge,
    /// The request body did not arrive within `gateway.http.bodyTimeoutMs`
    /// (`408`; the connection is closed).
    #[error("Request body not received in time")]
    RequestTimeout,
    /// A browser `Origin` that is neither the gateway's own nor allowed (`403`,
    /// before authentication).
    #[error("Origin not allowed")]
    OriginNotAllowed,
    /// A chat completion whose body is not declared JSON (`415`): a cross-site
    /// form or `text/plain` "simple" request must not run.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// `GET /v1/models/{id}` for an id that is not listed (see [`ApiError::model_not_found`]).
    #[error("{0}")]
    ModelNotFound(String),
    /// agent-svc answered with an error status; the fields come from its metadata.
    #[error("{message}")]
    Agent {
        /// HTTP status chosen from the gRPC code.
        status: StatusCode,
        /// OpenAI error type (`openclaw-error-type`).
        kind: String,
        /// Error code (`openclaw-error-code`).
        code: Option<String>,
        /// Field at fault (`openclaw-error-param`).
        param: Option<String>,
        /// The status message.
        message: String,
        /// Seconds to wait before retrying (`openclaw-retry-after`).
        retry_after: Option<u64>,
    },
    /// No agent-svc could be reached (refused, reset, unreachable, shutting down).
    #[error("{0}")]
    AgentUnavailable(String),
    /// A global bound is reached (connections, runs in flight here or on every
    /// agent-svc replica): refused at once, `503 overloaded` + `Retry-After`.
    #[error("{0}")]
    Overloaded(String),
}

/// The `error` object of an error body (also sent as an SSE `data:` event).
#[derive(Debug, Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
}

/// `{"error": {...}}`.
#[derive(Debug, Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorObject<'a>,
}

impl ApiError {
    /// A 400 naming the field at fault.
    pub fn invalid(param: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::InvalidRequest { message: message.into(), param: Some(Cow::Borrowed(param)) }
    }

    /// A 400 that names no single field.
    pub fn invalid_no_param(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::InvalidRequest { message: message.into(), param: None }
    }

    /// A 404 for a model id that is not listed.
    pub fn model_not_found(id: &str) -> Self {
        ApiError::ModelNotFound(format!("The model '{id}' does not exist."))
    }

    /// An upstream failure detected by the gateway itself (502 `upstream_error`).
    pub fn upstream(message: impl Into<String>) -> Self {
        ApiError::Agent {
            status: StatusCode::BAD_GATEWAY,
            kind: "api_error".into(),
            code: Some("upstream_error".into()),
            param: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound | ApiError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::AuthLockedOut { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::OriginNotAllowed => StatusCode::FORBIDDEN,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Agent { status, .. } => *status,
            ApiError::AgentUnavailable(_) | ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// `Retry-After` seconds, when the client should be told to wait.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::AuthLockedOut { retry_after_secs } => Some(*retry_after_secs),
            ApiError::Agent { retry_after, .. } => *retry_after,
            ApiError::AgentUnavailable(_) | ApiError::Overloaded(_) => Some(UNAVAILABLE_RETRY_AFTER_SECS),
            _ => None,
        }
    }

    /// The WebSocket protocol's error code (SPEC §7), derived from the HTTP
    /// status so that both surfaces classify a failure the same way:
    /// 401/403 `UNAUTHORIZED`, 404 `NOT_FOUND`, 429 `RATE_LIMITED`, other 4xx
    /// `INVALID_REQUEST`, 502/503/504 `UNAVAILABLE`, anything else `INTERNAL`.
    pub fn ws_code(&self) -> &'static str {
        match self.status().as_u16() {
            401 | 403 => "UNAUTHORIZED",
            404 => "NOT_FOUND",
            429 => "RATE_LIMITED",
            400..=499 => "INVALID_REQUEST",
            502..=504 => "UNAVAILABLE",
            _ => "INTERNAL",
        }
    }

    /// Whether a WebSocket client may retry the same request later
    /// (`UNAVAILABLE` and `RATE_LIMITED`).
    pub fn ws_retryable(&self) -> bool {
        matches!(self.ws_code(), "UNAVAILABLE" | "RATE_LIMITED")
    }

    /// Whether agent-svc ended the run because it was aborted (`AbortRun`).
    pub fn is_aborted(&self) -> bool {
        matches!(self, ApiError::Agent { code: Some(code), .. } if code == "aborted")
    }

    /// The JSON error object's fields; `None` for the plain-text errors.
    fn object(&self) -> Option<ErrorObject<'_>> {
        let (message, kind, param, code): (&str, &str, Option<&str>, Option<&str>) = match self {
            ApiError::NotFound | ApiError::MethodNotAllowed { .. } => return None,
            ApiError::InvalidRequest { message, param } => {
                (message, "invalid_request_error", param.as_deref(), None)
            }
            ApiError::Unauthorized => ("Unauthorized", "unauthorized", None, None),
            ApiError::AuthLockedOut { .. } => (
                "Too many failed authentication attempts. Retry later.",
                "rate_limit_error",
                None,
                Some("auth_rate_limited"),
            ),
            ApiError::PayloadTooLarge => ("Payload too large", "invalid_request_error", None, None),
            ApiError::RequestTimeout => (
                "The request body was not received in time.",
                "invalid_request_error",
                None,
                Some("request_timeout"),
            ),
            ApiError::OriginNotAllowed => (
                "This origin may not use the gateway (gateway.allowedOrigins).",
                "forbidden",
                None,
                Some("origin_not_allowed"),
            ),
            ApiError::UnsupportedMediaType => (
                "Content-Type must be application/json.",
                "invalid_request_error",
                None,
                Some("unsupported_media_type"),
            ),
            ApiError::ModelNotFound(message) => {
                (message, "invalid_request_error", Some("model"), Some("model_not_found"))
            }
            ApiError::Agent { kind, code, param, message, .. } => {
                (message, kind, param.as_deref(), code.as_deref())
            }
            ApiError::AgentUnavailable(message) => (message, "api_error", None, Some("agent_unavailable")),
            ApiError::Overloaded(message) => (message, "api_error", None, Some("overloaded")),
        };
        Some(ErrorObject { message, kind, param, code })
    }

    /// The `{"error":{…}}` body as JSON bytes (also used for SSE error events).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.write_json(&mut out);
        out
    }

    /// Writes the `{"error":{…}}` body to `out`.
    pub(crate) fn write_json(&self, out: impl std::io::Write) {
        // The plain-text errors never reach a JSON body; give them a valid shape anyway.
        let error = self.object().unwrap_or(ErrorObject {
            message: if matches!(self, ApiError::NotFound) { "Not Found" } else { "Method Not Allowed" },
            kind: "invalid_request_error",
            param: None,
            code: None,
        });
        // Serializing borrowed strings into a Vec cannot fail.
        let _ = serde_json::to_writer(out, &ErrorEnvelope { error });
    }
}

/// A shared request rule was broken (`services::rules`): a 400.
impl From<services::rules::RuleError> for ApiError {
    fn from(e: services::rules::RuleError) -> Self {
        ApiError::InvalidRequest { message: e.message.into(), param: e.param.map(Cow::Borrowed) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = match &self {
            ApiError::NotFound => (status, "Not Found").into_response(),
            ApiError::MethodNotAllowed { allow } => {
                let mut r = (status, "Method Not Allowed").into_response();
                r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
                r
            }
            _ => {
                let mut r = (status, self.to_json()).into_response();
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
        };
        let headers = resp.headers_mut();
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Why [`crate::start`] could not start the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The config breaks a rule (one line naming key and file).
    #[error(transparent)]
    Config(#[from] services::config::ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address tried.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// `--agent-svc` / `AGENT_SVC_URL` / `gateway.agentService.url` is not a usable URL.
    #[error("invalid agent-svc URL {url:?}: {reason}")]
    AgentSvcUrl {
        /// The URL given.
        url: String,
        /// Why it is unusable.
        reason: String,
    },
    /// The embedded agent-svc failed to start.
    #[error(transparent)]
    AgentSvc(#[from] agent_svc::AgentError),
    /// Any other I/O failure while starting or stopping.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(e: &ApiError) -> serde_json::Value {
        serde_json::from_slice(&e.to_json()).unwrap()
    }

    #[test]
    fn responses() {
        let r = ApiError::NotFound.into_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(r.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
        let r = ApiError::MethodNotAllowed { allow: "POST" }.into_response();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "POST");
        let r = ApiError::PayloadTooLarge.into_response();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let r = ApiError::AuthLockedOut { retry_after_secs: 42 }.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "42");
        let b = body(&ApiError::Unauthorized);
        assert_eq!(b, serde_json::json!({"error": {"message": "Unauthorized", "type": "unauthorized"}}));
        let b = body(&ApiError::model_not_found("openclaw/nope"));
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert!(b["error"]["message"].as_str().unwrap().contains("openclaw/nope"));
    }
}
