//! The frames of the Gateway WebSocket protocol (SPEC §7) and nothing else:
//! parsing a client's text frame into a [`Request`], and writing `res` and
//! `event` frames. All frames are JSON text.
//!
//! - request `{"type":"req","id","method","params"}` (client → server);
//! - response `{"type":"res","id","ok":true,"payload"}` or
//!   `{"type":"res","id","ok":false,"error":{"code","message","retryable"?,"retryAfterMs"?}}`;
//! - event `{"type":"event","event","payload","seq"?}` (server → client).

use crate::error::ApiError;
use serde::Serialize;
use serde_json::Value;
use std::borrow::Cow;

/// The protocol version this gateway speaks (must lie in the client's
/// `[minProtocol, maxProtocol]`).
pub const PROTOCOL_VERSION: u64 = 4;

/// Largest frame accepted before `connect` succeeded (SPEC: 64 KiB).
pub const PRECONNECT_MAX_BYTES: usize = 64 * 1024;

/// Longest request `id` accepted (it is echoed in the reply).
pub const MAX_ID_BYTES: usize = 256;

/// The methods offered after `connect` (`hello-ok.features.methods`).
pub const METHODS: [&str; 10] = [
    "health",
    "models.list",
    "agents.list",
    "sessions.list",
    "sessions.reset",
    "sessions.delete",
    "sessions.compact",
    "chat.history",
    "chat.send",
    "chat.abort",
];

/// The events this gateway sends (`hello-ok.features.events`).
pub const EVENTS: [&str; 3] = ["chat", "connect.challenge", "tick"];

/// Error codes of `res.error.code`.
pub mod code {
    /// Malformed frame, unknown method, bad params, protocol mismatch.
    pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
    /// Missing or wrong secret on `connect`.
    pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
    /// Too many failed attempts, too many requests in flight.
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
}

/// WebSocket close codes used by the gateway (RFC 6455 §7.4.1).
pub mod close {
    /// The client closed, or the gateway has nothing more to say.
    pub const NORMAL: u16 = 1000;
    /// Keepalive timeout: the client stopped answering pings.
    pub const GOING_AWAY: u16 = 1001;
    /// Handshake failed (bad first frame, bad auth, protocol mismatch,
    /// handshake timeout) or the client is too slow to read what it is sent.
    pub const POLICY: u16 = 1008;
    /// A frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The gateway is shutting down.
    pub const RESTART: u16 = 1012;
}

/// A client request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The request id (a string, or an integer that fits an i64), echoed in the reply.
    pub id: Value,
    /// The method name.
    pub method: String,
    /// The params (`Null` when absent).
    pub params: Value,
}

/// Why a text frame is not a usable request. `id` is the frame's id when it
/// could be read (else `null`), so the error reply can still be matched.
#[derive(Debug, Clone, PartialEq)]
pub struct BadFrame {
    /// The id to answer with.
    pub id: Value,
    /// What is wrong.
    pub message: Cow<'static, str>,
}

impl BadFrame {
    fn new(id: Value, message: impl Into<Cow<'static, str>>) -> BadFrame {
        BadFrame { id, message: message.into() }
    }
}

/// Parses a text frame as a request. Never panics on client data.
pub fn parse_request(text: &str) -> Result<Request, BadFrame> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| BadFrame::new(Value::Null, format!("Invalid JSON frame: {e}")))?;
    let Value::Object(mut frame) = value else {
        return Err(BadFrame::new(Value::Null, "A frame must be a JSON object."));
    };
    let id = match frame.remove("id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_BYTES => Value::String(s),
        // Only integers that fit an i64: a fraction, an exponent or a bigger
        // number would not come back as the client wrote it (nor fit a JS number).
        Some(Value::Number(n)) if n.is_i64() => Value::Number(n),
        _ => {
            return Err(BadFrame::new(
                Value::Null,
                format!(
                    "`id` must be a non-empty string of at most {MAX_ID_BYTES} bytes, or an integer \
                     from -2^63 to 2^63-1."
                ),
            ))
        }
    };
    if frame.get("type").and_then(Value::as_str) != Some("req") {
        return Err(BadFrame::new(id, "Only `{\"type\":\"req\"}` frames are accepted."));
    }
    let method = match frame.remove("method") {
        Some(Value::String(m)) if !m.is_empty() => m,
        _ => return Err(BadFrame::new(id, "`method` must be a non-empty string.")),
    };
    let params = frame.remove("params").unwrap_or(Value::Null);
    Ok(Request { id, method, params })
}

/// `res.error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorShape {
    /// One of the codes in [`code`] (or [`ApiError::ws_code`]).
    pub code: &'static str,
    /// For humans.
    pub message: String,
    /// Present (`true`) when retrying later may succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// How long to wait before retrying, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorShape {
    /// `INVALID_REQUEST` with this message.
    pub fn invalid(message: impl Into<String>) -> ErrorShape {
        ErrorShape {
            code: code::INVALID_REQUEST,
            message: message.into(),
            retryable: None,
            retry_after_ms: None,
        }
    }
}

impl From<&ApiError> for ErrorShape {
    fn from(e: &ApiError) -> ErrorShape {
        ErrorShape {
            code: e.ws_code(),
            message: e.to_string(),
            retryable: e.ws_retryable().then_some(true),
            retry_after_ms: e.retry_after().map(|s| s.saturating_mul(1000)),
        }
    }
}

#[derive(Serialize)]
struct ResOk<'a, P: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a Value,
    ok: bool,
    payload: &'a P,
}

#[derive(Serialize)]
struct ResErr<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a Value,
    ok: bool,
    error: &'a ErrorShape,
}

#[derive(Serialize)]
struct EventFrame<'a, P: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    event: &'a str,
    payload: &'a P,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

/// Serializes a frame; our frame types always serialize, but should one not,
/// the client gets an `INTERNAL` error instead of a broken frame.
fn to_text(frame: &impl Serialize) -> String {
    serde_json::to_string(frame).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialize a WebSocket frame");
        r#"{"type":"res","id":null,"ok":false,"error":{"code":"INTERNAL","message":"Internal error"}}"#
            .to_owned()
    })
}

/// `{"type":"res","id","ok":true,"payload"}`.
pub fn res_ok(id: &Value, payload: &impl Serialize) -> String {
    to_text(&ResOk { kind: "res", id, ok: true, payload })
}

/// `{"type":"res","id","ok":true,"payload"}` around an already serialized payload.
pub fn res_ok_json(id: &Value, payload_json: &str) -> String {
    let id = serde_json::to_string(id).unwrap_or_else(|_| "null".into());
    let mut out = String::with_capacity(payload_json.len() + id.len() + 40);
    out.push_str("{\"type\":\"res\",\"id\":");
    out.push_str(&id);
    out.push_str(",\"ok\":true,\"payload\":");
    out.push_str(payload_json);
    out.push('}');
    out
}

/// `{"type":"res","id","ok":false,"error"}`.
pub fn res_err(id: &Value, error: &ErrorShape) -> String {
    to_text(&ResErr { kind: "res", id, ok: false, error })
}

/// `{"type":"event","event","payload","seq"?}`.
pub fn event(event: &str, payload: &impl Serialize, seq: Option<u64>) -> String {
    to_text(&EventFrame { kind: "event", event, payload, seq })
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_requests() {
        let r = parse_request(r#"{"type":"req","id":"1","method":"health"}"#).unwrap();
        assert_eq!(r, Request { id: json!("1"), method: "health".into(), params: Value::Null });
        let r =
            parse_request(r#"{"type":"req","id":7,"method":"chat.send","params":{"a":1},"x":true}"#).unwrap();
        assert_eq!(r.id, json!(7));
        assert_eq!(r.params, json!({"a": 1}));
    }

    #[test]
    fn bad_frames_keep_the_id_when_they_can() {
        let cases: [(&str, Value, &str); 10] = [
            ("not json", Value::Null, "Invalid JSON"),
            ("", Value::Null, "Invalid JSON"),
            ("[1,2]", Value::Null, "object"),
            ("\"req\"", Value::Null, "object"),
            (r#"{"type":"req","method":"health"}"#, Value::Null, "`id`"),
            (r#"{"type":"req","id":"","method":"health"}"#, Value::Null, "`id`"),
            (r#"{"type":"req","id":{"a":1},"method":"health"}"#, Value::Null, "`id`"),
            (r#"{"type":"event","id":"9","method":"health"}"#, json!("9"), "req"),
            (r#"{"type":"req","id":"9"}"#, json!("9"), "`method`"),
            (r#"{"type":"req","id":"9","method":42}"#, json!("9"), "`method`"),
        ];
        for (text, id, needle) in cases {
            let e = parse_request(text).unwrap_err();
            assert_eq!(e.id, id, "{text}");
            assert!(e.message.contains(needle), "{text}: {}", e.message);
        }
        // Numeric ids are integers that fit an i64 (found by the fuzzer: others were echoed changed).
        for id in ["9223372036854775808", "18446744073709551615", "1.5", "1e3", "-0.0", "1E400"] {
            let text = format!(r#"{{"type":"req","id":{id},"method":"health"}}"#);
            let e = parse_request(&text).unwrap_err();
            assert_eq!(e.id, Value::Null, "{id}");
        }
        for id in [i64::MIN, -1, 0, i64::MAX] {
            let text = format!(r#"{{"type":"req","id":{id},"method":"health"}}"#);
            assert_eq!(parse_request(&text).unwrap().id, json!(id));
        }
        let long = format!(r#"{{"type":"req","id":"{}","method":"health"}}"#, "x".repeat(MAX_ID_BYTES + 1));
        assert_eq!(parse_request(&long).unwrap_err().id, Value::Null);
        // Deeply nested garbage is refused by the parser's recursion limit, not a stack overflow.
        let deep = "[".repeat(100_000);
        assert!(parse_request(&deep).is_err());
    }

    #[test]
    fn frames_serialize() {
        let v: Value = serde_json::from_str(&res_ok(&json!("a"), &json!({"x": 1}))).unwrap();
        assert_eq!(v, json!({"type": "res", "id": "a", "ok": true, "payload": {"x": 1}}));
        let err = ErrorShape::invalid("nope");
        let v: Value = serde_json::from_str(&res_err(&Value::Null, &err)).unwrap();
        assert_eq!(
            v,
            json!({"type": "res", "id": null, "ok": false, "error": {"code": "INVALID_REQUEST", "message": "nope"}})
        );
        let v: Value = serde_json::from_str(&res_ok_json(&json!(5), r#"{"a":[1]}"#)).unwrap();
        assert_eq!(v, json!({"type": "res", "id": 5, "ok": true, "payload": {"a": [1]}}));
        let v: Value = serde_json::from_str(&event("tick", &json!({"ts": 1}), Some(3))).unwrap();
        assert_eq!(v, json!({"type": "event", "event": "tick", "payload": {"ts": 1}, "seq": 3}));
        let v: Value = serde_json::from_str(&event("connect.challenge", &json!({}), None)).unwrap();
        assert!(v.get("seq").is_none());
    }

    #[test]
    fn api_errors_become_error_shapes() {
        let e = ErrorShape::from(&ApiError::AuthLockedOut { retry_after_secs: 5 });
        assert_eq!(e.code, "RATE_LIMITED");
        assert_eq!(e.retryable, Some(true));
        assert_eq!(e.retry_after_ms, Some(5000));
        let e = ErrorShape::from(&ApiError::Unauthorized);
        assert_eq!((e.code, e.message.as_str(), e.retryable), ("UNAUTHORIZED", "Unauthorized", None));
        let e = ErrorShape::from(&ApiError::AgentUnavailable("agent-svc is unavailable".into()));
        assert_eq!((e.code, e.retryable, e.retry_after_ms), ("UNAVAILABLE", Some(true), Some(1000)));
    }
}
