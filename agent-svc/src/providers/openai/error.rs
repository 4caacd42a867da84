//! How the upstream's failures become [`ProviderError`]s: a request that got
//! no answer, an HTTP error status with upstream's message quoted, an error
//! reported inside an answer, and a stream that broke off. Messages never
//! carry the URL (it may hold a key).

use super::http::{Response, SendError};
use super::read_capped;
use super::wire::{ErrorEnvelope, ErrorField};
use crate::providers::ProviderError;
use std::time::Duration;

/// Cap on an error response body we read (enough for any real error message).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How much of a non-JSON error body is quoted back.
const ERROR_TEXT_CHARS: usize = 500;

/// Maps a failure to get response headers. hyper's errors never carry the URL
/// (it could hold a key in its query string; it is not the client's business).
pub(super) fn send_error(e: SendError) -> ProviderError {
    match e {
        SendError::ConnectTimeout(limit) => {
            ProviderError::Timeout(format!("connecting to provider timed out after {} ms", limit.as_millis()))
        }
        SendError::Connect(e) => {
            ProviderError::Upstream(format!("could not connect to provider: {}", describe(&e)))
        }
        SendError::Request(e) => {
            ProviderError::Upstream(format!("provider request failed: {}", describe(&e)))
        }
    }
}

/// Turns a non-2xx response into the matching error, quoting upstream's message.
pub(super) async fn error_from_response(resp: Response, limit: Duration) -> ProviderError {
    let status = resp.status();
    // A body that is slow or breaks off still leaves us the status to report.
    let body = match tokio::time::timeout(limit, read_capped(resp, MAX_ERROR_BODY, None)).await {
        Ok(Ok(b)) => b,
        _ => Vec::new(),
    };
    let overflow = error_code(&body).as_deref() == Some(CONTEXT_CODE);
    let mut msg = error_message(&body);
    if msg.is_empty() {
        msg = status.to_string();
    }
    status_error(status.as_u16(), msg, overflow)
}

/// The code by which OpenAI says a prompt is over the model's context window.
const CONTEXT_CODE: &str = "context_length_exceeded";

/// Whether upstream says the prompt is over the model's context window: by its
/// code, or by the wording other servers (vLLM, Ollama, llama.cpp) use.
fn context_overflow(code_says: bool, message: &str) -> bool {
    const WORDINGS: [&str; 6] = [
        "context length",
        "context_length",
        "context window",
        "maximum context",
        "prompt is too long",
        "too many tokens",
    ];
    code_says || {
        let m = message.to_ascii_lowercase();
        WORDINGS.iter().any(|w| m.contains(w))
    }
}

/// The error for an HTTP status, given upstream's message and whether its
/// code said the context was exceeded.
fn status_error(status: u16, msg: String, overflow_code: bool) -> ProviderError {
    match status {
        429 => ProviderError::RateLimited(msg),
        401 | 403 => ProviderError::Upstream(format!("provider authentication failed ({status}): {msg}")),
        // Only a forwarding proxy answers this (the proxy's page is not the provider's message).
        407 => ProviderError::Upstream("egress proxy authentication failed (407)".into()),
        // An unknown model or a wrong base URL is the gateway's config, not the request.
        404 => ProviderError::Upstream(format!("provider returned HTTP 404: {msg}")),
        400..=499 if context_overflow(overflow_code, &msg) => ProviderError::ContextTooLong(msg),
        400..=499 => ProviderError::Rejected(msg),
        _ => ProviderError::Upstream(format!("provider returned HTTP {status}: {msg}")),
    }
}

/// An error the upstream reported inside an answer (a stream chunk or a
/// completion with `error`): the request's fault (`Rejected`, a `400`) when its
/// type or code says so (e.g. `context_length_exceeded`), else the provider's.
pub(super) fn reported(err: ErrorField) -> ProviderError {
    let request_fault = err.is_request_fault();
    let overflow_code = err.code() == Some(CONTEXT_CODE);
    let msg = err.message().filter(|m| !m.is_empty()).unwrap_or_else(|| "provider reported an error".into());
    if request_fault && context_overflow(overflow_code, &msg) {
        ProviderError::ContextTooLong(msg)
    } else if request_fault {
        ProviderError::Rejected(msg)
    } else {
        ProviderError::Upstream(msg)
    }
}

/// Upstream's error code from an error body (`error.code`), if it is a string.
fn error_code(body: &[u8]) -> Option<String> {
    let env = serde_json::from_slice::<ErrorEnvelope>(body).ok()?;
    env.error.as_ref().and_then(ErrorField::code).map(str::to_owned)
}

/// Upstream's error message from an error body: `error.message`, `error` as a
/// string, or a top-level `message` (older vLLM); else the text, truncated.
fn error_message(body: &[u8]) -> String {
    if let Ok(env) = serde_json::from_slice::<ErrorEnvelope>(body) {
        let top = match env.message {
            Some(serde_json::Value::String(s)) => Some(s),
            _ => None,
        };
        if let Some(m) = env.error.and_then(ErrorField::message).or(top).filter(|m| !m.trim().is_empty()) {
            return truncate_chars(m.trim(), 4 * ERROR_TEXT_CHARS);
        }
    }
    truncate_chars(String::from_utf8_lossy(body).trim(), ERROR_TEXT_CHARS)
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_string(),
    }
}

/// An error and its sources on one line (hyper's top-level message alone,
/// "client error (Connect)", says nothing about refused vs reset).
pub(super) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_reported_in_an_answer_blame_the_request_when_they_say_so() {
        let field = |v: serde_json::Value| serde_json::from_value::<ErrorField>(v).unwrap();
        let e = reported(field(
            serde_json::json!({"message": "This model's maximum context length is 8192 tokens",
            "type": "invalid_request_error", "code": "context_length_exceeded"}),
        ));
        assert!(matches!(e, ProviderError::ContextTooLong(m) if m.contains("maximum context length")));
        let e =
            reported(field(serde_json::json!({"message": "too long", "code": "context_length_exceeded"})));
        assert!(matches!(e, ProviderError::ContextTooLong(_)));
        let e = reported(field(serde_json::json!({"message": "bad n", "type": "invalid_request_error"})));
        assert!(matches!(e, ProviderError::Rejected(_)));
        let e = reported(field(serde_json::json!({"message": "overloaded", "type": "server_error"})));
        assert!(matches!(e, ProviderError::Upstream(m) if m == "overloaded"));
        let e = reported(field(serde_json::json!("boom")));
        assert!(matches!(e, ProviderError::Upstream(m) if m == "boom"));
    }

    #[test]
    fn error_bodies_and_status_mapping() {
        assert_eq!(
            error_message(br#"{"error":{"message":"context too long","type":"x"}}"#),
            "context too long"
        );
        assert_eq!(error_message(br#"{"error":"model not found"}"#), "model not found");
        assert_eq!(error_message(br#"{"object":"error","message":"bad n"}"#), "bad n");
        assert_eq!(error_message(b"  plain text  "), "plain text");
        let long = "x".repeat(2000);
        let m = error_message(long.as_bytes());
        assert_eq!(m.len(), ERROR_TEXT_CHARS + 3);

        assert_eq!(status_error(429, "slow".into(), false), ProviderError::RateLimited("slow".into()));
        assert_eq!(
            status_error(401, "bad key".into(), false),
            ProviderError::Upstream("provider authentication failed (401): bad key".into())
        );
        assert!(matches!(status_error(403, "x".into(), false), ProviderError::Upstream(_)));
        assert_eq!(status_error(400, "bad n".into(), false), ProviderError::Rejected("bad n".into()));
        assert_eq!(
            status_error(400, "too long".into(), true),
            ProviderError::ContextTooLong("too long".into())
        );
        let vllm = "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens";
        assert!(matches!(status_error(400, vllm.into(), false), ProviderError::ContextTooLong(_)));
        assert!(matches!(status_error(404, "x".into(), false), ProviderError::Upstream(_)));
        // A forwarding proxy's 407 is not the request's fault, and its page is not quoted.
        match status_error(407, "<html>proxy page</html>".into(), false) {
            ProviderError::Upstream(m) => assert!(m.contains("proxy") && !m.contains("html"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(status_error(500, "x".into(), false), ProviderError::Upstream(_)));
        assert!(matches!(status_error(302, "x".into(), false), ProviderError::Upstream(_)));
        assert_eq!(
            error_code(br#"{"error":{"message":"m","code":"context_length_exceeded"}}"#).as_deref(),
            Some(CONTEXT_CODE)
        );
    }
}
