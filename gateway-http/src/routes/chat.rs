//! `POST /v1/chat/completions`.

use crate::client::CallContext;
use crate::error::ApiError;
use crate::openai::{self, ChunkWriter, Overrides, SseRun};
use crate::routes::Authorized;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue, Version};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::time::{Duration, Instant};

// Parsed once: a lookup by `&str` parses and validates the name every time.
const AGENT_ID: HeaderName = HeaderName::from_static("x-openclaw-agent-id");
const MODEL: HeaderName = HeaderName::from_static("x-openclaw-model");
const SESSION_KEY: HeaderName = HeaderName::from_static("x-openclaw-session-key");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Checks come in SPEC order: auth (the extractor) → JSON content type →
/// body size → JSON → semantics (here, then agent-svc).
pub async fn completions(
    State(state): State<AppState>,
    _: Authorized,
    req: Request,
) -> Result<Response, ApiError> {
    let started_at = Instant::now();
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    if !is_json(headers) {
        return Ok(unread_body(ApiError::UnsupportedMediaType, parts.version));
    }
    let settings = state.chat();
    let body = match read_body(headers, body, settings.max_body_bytes, settings.body_timeout).await {
        Ok(body) => body,
        Err(e) => return Ok(unread_body(e, parts.version)),
    };
    let overrides = Overrides {
        agent_id: header_str(headers, &AGENT_ID)?,
        model: header_str(headers, &MODEL)?,
        session_key: header_str(headers, &SESSION_KEY)?,
    };
    let chat = openai::parse_chat_request(&body, &overrides, &state.chat().images)?;
    drop(body);

    let ctx = CallContext {
        request_id: header_str(headers, &REQUEST_ID)
            .ok()
            .flatten()
            .map_or_else(|| services::ids::with_uuid(&[]), str::to_owned),
        traceparent: header_str(headers, &TRACEPARENT).ok().flatten().map(str::to_owned),
    };
    let include_usage = chat.run.include_usage;
    let in_flight = state.begin_run()?;
    let events = state.client().run(chat.run, &ctx).await?;
    let id = openai::completion_id();
    let created = openai::unix_now();

    if chat.stream {
        let writer = ChunkWriter::new(id, created, chat.model, include_usage);
        let sse = SseRun::begin(events, writer, state.clone(), started_at, in_flight).await?;
        let mut resp = Response::new(Body::empty());
        let h = resp.headers_mut();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
        common_headers(h, sse.session_key(), &ctx.request_id);
        *resp.body_mut() = sse.into_body(state.chat().max_buffered_bytes);
        Ok(resp)
    } else {
        let fold = openai::collect(events, state.metrics(), started_at).await?;
        drop(in_flight);
        let json = fold.to_json(&id, created, &chat.model);
        let mut resp = Response::new(Body::from(json));
        let h = resp.headers_mut();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        common_headers(h, fold.session_key.as_deref(), &ctx.request_id);
        Ok(resp)
    }
}

fn common_headers(h: &mut HeaderMap, session_key: Option<&str>, request_id: &str) {
    if let Some(v) = session_key.and_then(|k| HeaderValue::from_str(k).ok()) {
        h.insert(SESSION_KEY, v);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(REQUEST_ID, v);
    }
}

/// A header as UTF-8 (session keys may carry user names); empty counts as absent.
fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => match std::str::from_utf8(v.as_bytes()) {
            Ok(s) => Ok(Some(s.trim()).filter(|s| !s.is_empty())),
            Err(_) => Err(ApiError::invalid_no_param(format!("The `{name}` header must be UTF-8."))),
        },
    }
}

/// Whether the body is declared JSON (`application/json` or `application/*+json`,
/// parameters allowed). A browser's "simple" cross-site request can only send
/// `text/plain`, form or multipart bodies, so this keeps it from running.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else { return false };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// The answer when the body was not read to its end: on HTTP/1 the rest of it
/// would be taken for the next request, so the connection is closed
/// (`Connection` is illegal in HTTP/2, where the stream is simply reset).
fn unread_body(e: ApiError, version: Version) -> Response {
    let mut resp = e.into_response();
    if version < Version::HTTP_2 {
        resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Reads the body within `max` bytes and `timeout`: a `Content-Length` over the
/// cap is refused before reading anything, the read itself is capped (chunked
/// bodies), and a body that trickles in (or stops after the headers) is `408`.
async fn read_body(headers: &HeaderMap, body: Body, max: u64, timeout: Duration) -> Result<Bytes, ApiError> {
    let declared =
        headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(ApiError::PayloadTooLarge);
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let read = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    let Ok(read) = read else { return Err(ApiError::RequestTimeout) };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::PayloadTooLarge),
        Err(_) => Err(ApiError::invalid_no_param("Failed to read the request body.")),
    }
}
