//! A real mock OpenAI-compatible upstream: an HTTP server on `127.0.0.1:0`
//! serving `POST /v1/chat/completions` (and `/chat/completions`).
//!
//! Every request is recorded (headers and parsed JSON body). What the mock
//! answers is scripted with [`Behavior`]s:
//!
//! 1. a behaviour set for the request's `model` ([`MockUpstream::set_for_model`]) wins;
//! 2. else the next queued behaviour ([`MockUpstream::push`]) is consumed;
//! 3. else the default ([`MockUpstream::set_default`]), initially
//!    [`Behavior::echo`]: stream the text of the last user message back.
//!
//! The mock notices a client that goes away before a response finished (the
//! response body stream, or the pending handler future, is dropped early) and
//! counts it as a disconnect ([`MockUpstream::disconnects`],
//! [`MockUpstream::wait_for_disconnect`], [`MockUpstream::disconnect_since`]).
//!
//! ```no_run
//! # async fn demo() {
//! use e2e::mock::{Behavior, MockUpstream};
//! use std::time::Duration;
//!
//! let mock = MockUpstream::start().await;
//! mock.push(Behavior::text("hello world").with_usage(12, 2));
//! mock.set_for_model("m-fail", Behavior::error(500, "boom"));
//! // ... point a provider at `mock.base_url()` and run something ...
//! assert!(mock.wait_for_requests(1, Duration::from_secs(5)).await);
//! let req = &mock.requests()[0];
//! assert_eq!(req.body["stream"], true);
//! # }
//! ```

use crate::serve::{bind_loopback, ServerTask};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::future::BoxFuture;
use futures::FutureExt;
use futures::StreamExt as _;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Usage reported by [`Behavior::text`] and [`Behavior::tool_call`] unless changed.
pub const DEFAULT_USAGE: (u32, u32) = (11, 7);

/// Pause before a [`Behavior::ResetAfter`] abort, so the chunks reach the client first.
const RESET_FLUSH_PAUSE: Duration = Duration::from_millis(30);

/// One tool call the mock streams in a [`Behavior::ToolCalls`] answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockToolCall {
    /// The call id; `None` streams the call without an id (some upstreams do).
    pub id: Option<String>,
    /// Function name.
    pub name: String,
    /// The JSON arguments text, streamed in fragments.
    pub arguments: String,
}

impl MockToolCall {
    /// A call with an id.
    pub fn new(id: &str, name: &str, arguments: &str) -> Self {
        Self { id: Some(id.to_string()), name: name.to_string(), arguments: arguments.to_string() }
    }

    /// A call whose upstream gives no id.
    pub fn without_id(name: &str, arguments: &str) -> Self {
        Self { id: None, name: name.to_string(), arguments: arguments.to_string() }
    }
}

/// A gate a [`Behavior::Gated`] answer waits on until the test opens it.
#[derive(Debug, Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Gate(Arc::new(watch::channel(false).0))
    }

    /// Opens the gate: every waiter (now and later) proceeds.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Whether the gate is open.
    pub fn is_open(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the gate is open.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we wait.
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// What the mock answers to one request.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Stream the text of the last user message back, split at word boundaries,
    /// with `delay` between pieces. Usage: (number of request messages, number of pieces).
    EchoLastUser {
        /// Pause between pieces.
        delay: Duration,
    },
    /// A streamed (SSE) text answer.
    Stream {
        /// The text pieces, one `data:` chunk each.
        chunks: Vec<String>,
        /// Pause between chunks.
        delay: Duration,
        /// The finish reason of the finish chunk.
        finish_reason: String,
        /// `(prompt_tokens, completion_tokens)`, sent only when the request asked
        /// for usage (`stream_options.include_usage`).
        usage: Option<(u32, u32)>,
    },
    /// A streamed answer made of tool calls (finish reason `tool_calls`).
    ToolCalls {
        /// The calls, in index order.
        calls: Vec<MockToolCall>,
        /// How many fragments each call's arguments are split into (at least 1).
        fragments: usize,
        /// Pause between chunks.
        delay: Duration,
        /// Usage, sent when asked for.
        usage: Option<(u32, u32)>,
    },
    /// A non-2xx answer with this JSON body.
    Status(u16, Value),
    /// Wait before answering (before the status line and headers).
    DelayThen(Duration, Box<Behavior>),
    /// Wait until the gate is opened, then answer.
    Gated(Gate, Box<Behavior>),
    /// Accept the request and never answer (a dropped client is still noticed).
    Hang,
    /// Send the status, headers and these text chunks, then abort the connection.
    ResetAfter {
        /// Text chunks sent before the abort.
        chunks: Vec<String>,
    },
    /// `200` SSE whose second event is `data: {not json`.
    Malformed,
    /// `200` SSE whose second event is a `data:` line that never ends (64 KiB
    /// of `x` after another, for as long as the client reads).
    EndlessLine,
    /// A plain `200` JSON answer (an upstream that ignores `stream: true`).
    Json(Value),
    /// `200` SSE with these JSON values as the `data:` of successive events, then
    /// `data: [DONE]`: for upstream quirks the other behaviours do not produce.
    RawSse(Vec<Value>),
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior::echo()
    }
}

impl Behavior {
    /// The initial default: echo the last user message's text.
    pub fn echo() -> Self {
        Behavior::EchoLastUser { delay: Duration::ZERO }
    }

    /// Echo the last user message with `delay` between pieces.
    pub fn echo_slow(delay: Duration) -> Self {
        Behavior::EchoLastUser { delay }
    }

    /// A streamed text answer, split into pieces at word boundaries (spaces stay
    /// attached to the preceding word), finish `stop`, usage [`DEFAULT_USAGE`].
    pub fn text(text: &str) -> Self {
        Behavior::Stream {
            chunks: split_pieces(text),
            delay: Duration::ZERO,
            finish_reason: "stop".into(),
            usage: Some(DEFAULT_USAGE),
        }
    }

    /// A streamed answer made of exactly these chunks.
    pub fn chunks<S: Into<String>>(chunks: impl IntoIterator<Item = S>) -> Self {
        Behavior::Stream {
            chunks: chunks.into_iter().map(Into::into).collect(),
            delay: Duration::ZERO,
            finish_reason: "stop".into(),
            usage: Some(DEFAULT_USAGE),
        }
    }

    /// An answer that trickles in: [`numbered_words`]`(prefix, n)` as chunks,
    /// `delay` apart (a slow upstream is what such tests look at).
    pub fn trickle(prefix: &str, n: usize, delay: Duration) -> Self {
        Behavior::chunks(numbered_words(prefix, n)).with_delay(delay)
    }

    /// One tool call, arguments in 3 fragments, usage [`DEFAULT_USAGE`].
    pub fn tool_call(id: &str, name: &str, arguments: &str) -> Self {
        Behavior::tool_calls(vec![MockToolCall::new(id, name, arguments)])
    }

    /// Several (parallel) tool calls, arguments in 3 fragments each.
    pub fn tool_calls(calls: Vec<MockToolCall>) -> Self {
        Behavior::ToolCalls { calls, fragments: 3, delay: Duration::ZERO, usage: Some(DEFAULT_USAGE) }
    }

    /// A non-2xx answer with an OpenAI-style error body `{"error":{"message","type"}}`.
    pub fn error(status: u16, message: &str) -> Self {
        let ty = match status {
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        Behavior::Status(status, json!({"error": {"message": message, "type": ty}}))
    }

    /// A plain JSON (non-streaming) completion with this text.
    pub fn json_completion(text: &str, usage: (u32, u32)) -> Self {
        Behavior::Json(json!({
            "id": "chatcmpl-mock-json",
            "object": "chat.completion",
            "created": unix_now(),
            "model": "mock",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }],
            "usage": usage_json(usage),
        }))
    }

    /// Sets the pause between chunks (streaming behaviours; others unchanged).
    pub fn with_delay(mut self, d: Duration) -> Self {
        match &mut self {
            Behavior::EchoLastUser { delay }
            | Behavior::Stream { delay, .. }
            | Behavior::ToolCalls { delay, .. } => *delay = d,
            Behavior::DelayThen(_, inner) | Behavior::Gated(_, inner) => {
                **inner = inner.as_ref().clone().with_delay(d)
            }
            _ => {}
        }
        self
    }

    /// Sets the usage numbers (streaming text / tool-call behaviours).
    pub fn with_usage(mut self, prompt_tokens: u32, completion_tokens: u32) -> Self {
        match &mut self {
            Behavior::Stream { usage, .. } | Behavior::ToolCalls { usage, .. } => {
                *usage = Some((prompt_tokens, completion_tokens))
            }
            Behavior::DelayThen(_, inner) | Behavior::Gated(_, inner) => {
                **inner = inner.as_ref().clone().with_usage(prompt_tokens, completion_tokens)
            }
            _ => {}
        }
        self
    }

    /// Never sends a usage chunk.
    pub fn without_usage(mut self) -> Self {
        match &mut self {
            Behavior::Stream { usage, .. } | Behavior::ToolCalls { usage, .. } => *usage = None,
            Behavior::DelayThen(_, inner) | Behavior::Gated(_, inner) => {
                **inner = inner.as_ref().clone().without_usage()
            }
            _ => {}
        }
        self
    }

    /// Sets the finish reason of a [`Behavior::Stream`].
    pub fn with_finish(mut self, reason: &str) -> Self {
        if let Behavior::Stream { finish_reason, .. } = &mut self {
            *finish_reason = reason.to_string();
        }
        self
    }

    /// Sets how many fragments each tool call's arguments are split into.
    pub fn with_fragments(mut self, n: usize) -> Self {
        if let Behavior::ToolCalls { fragments, .. } = &mut self {
            *fragments = n.max(1);
        }
        self
    }

    /// Waits `d` before answering like `self`.
    pub fn delayed(self, d: Duration) -> Self {
        Behavior::DelayThen(d, Box::new(self))
    }

    /// Waits for `gate` before answering like `self`.
    pub fn gated(self, gate: &Gate) -> Self {
        Behavior::Gated(gate.clone(), Box::new(self))
    }
}

/// `n` words `"<prefix>0 "`, `"<prefix>1 "`, …: an answer long enough to be cut.
pub fn numbered_words(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i} ")).collect()
}

/// Splits text into word pieces, each keeping its trailing whitespace.
pub fn split_pieces(text: &str) -> Vec<String> {
    let pieces: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
    if pieces.is_empty() {
        vec![String::new()]
    } else {
        pieces
    }
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The request path (`/v1/chat/completions`).
    pub path: String,
    /// All request headers.
    pub headers: HeaderMap,
    /// The body parsed as JSON (`Null` when it was not JSON).
    pub body: Value,
    /// The raw body text.
    pub raw_body: String,
    /// When the request (headers and body) had arrived.
    pub received_at: Instant,
}

impl RecordedRequest {
    /// The `model` field.
    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    /// The `messages` array (empty when missing).
    pub fn messages(&self) -> Vec<Value> {
        self.body.get("messages").and_then(Value::as_array).cloned().unwrap_or_default()
    }

    /// `(role, text)` of every message; the text joins all text parts.
    pub fn message_texts(&self) -> Vec<(String, String)> {
        self.messages()
            .iter()
            .map(|m| {
                let role = m.get("role").and_then(Value::as_str).unwrap_or_default().to_string();
                (role, content_text(m.get("content").unwrap_or(&Value::Null)))
            })
            .collect()
    }

    /// The roles of the messages, in order.
    pub fn roles(&self) -> Vec<String> {
        self.message_texts().into_iter().map(|(r, _)| r).collect()
    }

    /// Whether `stream: true` was asked for.
    pub fn stream(&self) -> bool {
        self.body.get("stream").and_then(Value::as_bool).unwrap_or(false)
    }

    /// Whether `stream_options.include_usage: true` was asked for.
    pub fn include_usage(&self) -> bool {
        self.body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false)
    }

    /// The text of the last `user` message.
    pub fn last_user_text(&self) -> Option<String> {
        self.message_texts().into_iter().rev().find(|(r, _)| r == "user").map(|(_, t)| t)
    }
}

/// The text of an OpenAI `content` value: a string, or the text parts of an array joined.
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("")
        }
        _ => String::new(),
    }
}

#[derive(Default)]
struct Script {
    queue: VecDeque<Behavior>,
    default: Behavior,
    per_model: HashMap<String, Behavior>,
    requests: Vec<RecordedRequest>,
    /// When each disconnect was noticed, in order.
    disconnected_at: Vec<Instant>,
    in_flight: usize,
    max_in_flight: usize,
}

struct Inner {
    script: Mutex<Script>,
    requests_tx: watch::Sender<usize>,
    disconnects_tx: watch::Sender<usize>,
    seq: AtomicU64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The running mock upstream. Dropping it stops the server.
pub struct MockUpstream {
    inner: Arc<Inner>,
    addr: SocketAddr,
    server: ServerTask,
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream").field("addr", &self.addr).finish()
    }
}

impl MockUpstream {
    /// Starts the mock on `127.0.0.1:0`. Panics when it cannot bind (test setup failure).
    pub async fn start() -> MockUpstream {
        match Self::try_start().await {
            Ok(m) => m,
            Err(e) => panic!("mock upstream: cannot bind 127.0.0.1:0: {e}"),
        }
    }

    /// Starts the mock on `127.0.0.1:0`.
    pub async fn try_start() -> std::io::Result<MockUpstream> {
        let (listener, addr) = bind_loopback().await?;
        let inner = Arc::new(Inner {
            script: Mutex::new(Script::default()),
            requests_tx: watch::channel(0).0,
            disconnects_tx: watch::channel(0).0,
            seq: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .route("/chat/completions", post(handle))
            .fallback(|uri: Uri| async move {
                (StatusCode::NOT_FOUND, axum::Json(json!({"error": {"message": format!("no route {uri}")}})))
            })
            .with_state(inner.clone());
        let server = ServerTask::spawn("mock upstream", |stop| {
            axum::serve(listener, app).with_graceful_shutdown(stop)
        });
        Ok(MockUpstream { inner, addr, server })
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`, for a provider's `baseUrl`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues a behaviour for the next request (consumed in order).
    pub fn push(&self, b: Behavior) {
        self.inner.lock().queue.push_back(b);
    }

    /// Queues several behaviours.
    pub fn push_all(&self, bs: impl IntoIterator<Item = Behavior>) {
        self.inner.lock().queue.extend(bs);
    }

    /// Sets the behaviour used when the queue is empty.
    pub fn set_default(&self, b: Behavior) {
        self.inner.lock().default = b;
    }

    /// Answers every request for `model` (the upstream name, without `provider/`)
    /// with `b`; takes precedence over the queue and is not consumed.
    pub fn set_for_model(&self, model: &str, b: Behavior) {
        self.inner.lock().per_model.insert(model.to_string(), b);
    }

    /// Removes a per-model behaviour.
    pub fn clear_for_model(&self, model: &str) {
        self.inner.lock().per_model.remove(model);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.lock().requests.clone()
    }

    /// The most recent request.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.inner.lock().requests.last().cloned()
    }

    /// How many requests arrived.
    pub fn request_count(&self) -> usize {
        self.inner.lock().requests.len()
    }

    /// Waits until at least `n` requests arrived; false on timeout.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.inner.requests_tx.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await.is_ok_and(|r| r.is_ok())
    }

    /// How many responses were abandoned by the client before they finished.
    pub fn disconnects(&self) -> usize {
        *self.inner.disconnects_tx.borrow()
    }

    /// Waits until at least one disconnect happened; false on timeout.
    pub async fn wait_for_disconnect(&self, timeout: Duration) -> bool {
        self.wait_for_disconnects(1, timeout).await
    }

    /// Waits until at least `n` disconnects happened; false on timeout.
    pub async fn wait_for_disconnects(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.inner.disconnects_tx.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await.is_ok_and(|r| r.is_ok())
    }

    /// When the last disconnect was noticed.
    pub fn last_disconnect_at(&self) -> Option<Instant> {
        self.inner.lock().disconnected_at.last().copied()
    }

    /// Waits for a disconnect noticed at or after `since` and returns when it was
    /// noticed; `None` when there is none within `timeout`.
    pub async fn disconnect_since(&self, since: Instant, timeout: Duration) -> Option<Instant> {
        let mut rx = self.inner.disconnects_tx.subscribe();
        let found = || self.inner.lock().disconnected_at.iter().copied().find(|at| *at >= since);
        let wait = async {
            loop {
                if let Some(at) = found() {
                    return Some(at);
                }
                rx.changed().await.ok()?;
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Requests currently being answered.
    pub fn in_flight(&self) -> usize {
        self.inner.lock().in_flight
    }

    /// The most requests ever answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.inner.lock().max_in_flight
    }

    /// Stops the server (open connections are dropped).
    pub async fn shutdown(mut self) {
        self.server.stop(Duration::ZERO).await;
    }
}

/// Tracks one response: counts a disconnect when dropped before completion.
struct ResponseGuard {
    inner: Arc<Inner>,
    done: bool,
}

impl ResponseGuard {
    fn new(inner: Arc<Inner>) -> Self {
        {
            let mut s = inner.lock();
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
        }
        ResponseGuard { inner, done: false }
    }

    /// The response was (or is about to be) delivered completely, or ended on purpose.
    fn complete(&mut self) {
        if !self.done {
            self.done = true;
            let mut s = self.inner.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }
}

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            {
                let mut s = self.inner.lock();
                s.in_flight = s.in_flight.saturating_sub(1);
                s.disconnected_at.push(Instant::now());
            }
            self.inner.disconnects_tx.send_modify(|c| *c += 1);
        }
    }
}

/// Per-request data the answers need.
#[derive(Clone)]
struct Ctx {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    request: Value,
}

async fn handle(State(inner): State<Arc<Inner>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let raw_body = String::from_utf8_lossy(&body).into_owned();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = parsed.get("model").and_then(Value::as_str).unwrap_or("mock").to_string();
    let include_usage =
        parsed.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    let recorded = RecordedRequest {
        path: uri.path().to_string(),
        headers,
        body: parsed.clone(),
        raw_body,
        received_at: Instant::now(),
    };
    let behavior = {
        let mut s = inner.lock();
        s.requests.push(recorded);
        match s.per_model.get(&model) {
            Some(b) => b.clone(),
            None => match s.queue.pop_front() {
                Some(b) => b,
                None => s.default.clone(),
            },
        }
    };
    inner.requests_tx.send_modify(|c| *c += 1);
    let n = inner.seq.fetch_add(1, Ordering::Relaxed);
    let ctx =
        Ctx { id: format!("chatcmpl-mock-{n}"), created: unix_now(), model, include_usage, request: parsed };
    let guard = ResponseGuard::new(inner);
    respond(behavior, ctx, guard).await
}

fn respond(behavior: Behavior, ctx: Ctx, mut guard: ResponseGuard) -> BoxFuture<'static, Response> {
    async move {
        match behavior {
            Behavior::EchoLastUser { delay } => {
                let text = last_user_text(&ctx.request);
                let pieces = split_pieces(&text);
                let msgs = ctx.request.get("messages").and_then(Value::as_array).map_or(0, Vec::len);
                let usage =
                    (u32::try_from(msgs).unwrap_or(u32::MAX), u32::try_from(pieces.len()).unwrap_or(0));
                sse(text_steps(&ctx, &pieces, delay, "stop", Some(usage)), guard)
            }
            Behavior::Stream { chunks, delay, finish_reason, usage } => {
                sse(text_steps(&ctx, &chunks, delay, &finish_reason, usage), guard)
            }
            Behavior::ToolCalls { calls, fragments, delay, usage } => {
                sse(tool_steps(&ctx, &calls, fragments, delay, usage), guard)
            }
            Behavior::Status(code, body) => {
                guard.complete();
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, axum::Json(body)).into_response()
            }
            Behavior::Json(body) => {
                guard.complete();
                axum::Json(body).into_response()
            }
            Behavior::DelayThen(d, inner) => {
                tokio::time::sleep(d).await;
                respond(*inner, ctx, guard).await
            }
            Behavior::Gated(gate, inner) => {
                gate.wait().await;
                respond(*inner, ctx, guard).await
            }
            Behavior::Hang => {
                // Holding the guard: when hyper drops this future (client gone), it counts.
                std::future::pending::<()>().await;
                drop(guard);
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
            Behavior::ResetAfter { chunks } => {
                let mut steps =
                    vec![Step::Data(chunk(&ctx, json!({"role": "assistant", "content": ""}), None))];
                for c in &chunks {
                    steps.push(Step::Data(chunk(&ctx, json!({"content": c}), None)));
                }
                // Let hyper flush what was sent before the abort (else the client
                // may see a truncated head instead of a broken body).
                steps.push(Step::Sleep(RESET_FLUSH_PAUSE));
                steps.push(Step::Fail);
                sse(steps, guard)
            }
            Behavior::RawSse(events) => {
                let mut steps: Vec<Step> =
                    events.iter().map(|v| Step::Data(format!("data: {v}\n\n"))).collect();
                steps.push(Step::Data("data: [DONE]\n\n".to_string()));
                sse(steps, guard)
            }
            Behavior::EndlessLine => {
                let head =
                    format!("{}data: ", chunk(&ctx, json!({"role": "assistant", "content": ""}), None));
                let piece = Bytes::from(vec![b'x'; 64 * 1024]);
                let body = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) })
                    .chain(futures::stream::repeat_with(move || Ok(piece.clone())));
                // The guard stays: the client's drop is what ends this answer.
                let body = body.map(move |b| {
                    let _ = &guard;
                    b
                });
                Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .body(Body::from_stream(body))
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
            }
            Behavior::Malformed => {
                let steps = vec![
                    Step::Data(chunk(&ctx, json!({"role": "assistant", "content": ""}), None)),
                    Step::Data("data: {not json\n\n".to_string()),
                    Step::Data("data: [DONE]\n\n".to_string()),
                ];
                sse(steps, guard)
            }
        }
    }
    .boxed()
}

/// One step of a streamed body.
enum Step {
    /// Send these bytes (a complete SSE event).
    Data(String),
    /// Pause.
    Sleep(Duration),
    /// Abort the connection.
    Fail,
}

fn text_steps(
    ctx: &Ctx,
    pieces: &[String],
    delay: Duration,
    finish_reason: &str,
    usage: Option<(u32, u32)>,
) -> Vec<Step> {
    let mut steps = vec![Step::Data(chunk(ctx, json!({"role": "assistant", "content": ""}), None))];
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 && !delay.is_zero() {
            steps.push(Step::Sleep(delay));
        }
        steps.push(Step::Data(chunk(ctx, json!({"content": p}), None)));
    }
    finish_steps(ctx, &mut steps, finish_reason, usage);
    steps
}

fn tool_steps(
    ctx: &Ctx,
    calls: &[MockToolCall],
    fragments: usize,
    delay: Duration,
    usage: Option<(u32, u32)>,
) -> Vec<Step> {
    let mut steps = vec![Step::Data(chunk(ctx, json!({"role": "assistant", "content": null}), None))];
    for (index, call) in calls.iter().enumerate() {
        for (f, piece) in split_n(&call.arguments, fragments).into_iter().enumerate() {
            if !delay.is_zero() {
                steps.push(Step::Sleep(delay));
            }
            let delta = if f == 0 {
                let mut tc = json!({
                    "index": index,
                    "type": "function",
                    "function": {"name": call.name, "arguments": piece},
                });
                if let (Some(id), Some(obj)) = (&call.id, tc.as_object_mut()) {
                    obj.insert("id".into(), json!(id));
                }
                json!({"tool_calls": [tc]})
            } else {
                json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            };
            steps.push(Step::Data(chunk(ctx, delta, None)));
        }
    }
    finish_steps(ctx, &mut steps, "tool_calls", usage);
    steps
}

fn finish_steps(ctx: &Ctx, steps: &mut Vec<Step>, finish_reason: &str, usage: Option<(u32, u32)>) {
    steps.push(Step::Data(chunk(ctx, json!({}), Some(finish_reason))));
    if let (true, Some(u)) = (ctx.include_usage, usage) {
        let body = json!({
            "id": ctx.id,
            "object": "chat.completion.chunk",
            "created": ctx.created,
            "model": ctx.model,
            "choices": [],
            "usage": usage_json(u),
        });
        steps.push(Step::Data(format!("data: {body}\n\n")));
    }
    steps.push(Step::Data("data: [DONE]\n\n".to_string()));
}

/// Splits text into `n` char-boundary pieces (fewer when it is short; at least one).
fn split_n(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.max(1).min(chars.len().max(1));
    let size = chars.len().div_ceil(n).max(1);
    let mut out: Vec<String> = chars.chunks(size).map(|c| c.iter().collect()).collect();
    if out.is_empty() {
        out.push(String::new());
    }
    out
}

fn chunk(ctx: &Ctx, delta: Value, finish_reason: Option<&str>) -> String {
    let body = json!({
        "id": ctx.id,
        "object": "chat.completion.chunk",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    });
    format!("data: {body}\n\n")
}

fn usage_json((p, c): (u32, u32)) -> Value {
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

fn last_user_text(request: &Value) -> String {
    request
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|ms| ms.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user")))
        .map(|m| content_text(m.get("content").unwrap_or(&Value::Null)))
        .unwrap_or_default()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Turns steps into an SSE response whose body owns the guard.
fn sse(steps: Vec<Step>, guard: ResponseGuard) -> Response {
    let state = (VecDeque::from(steps), guard);
    let stream = futures::stream::unfold(state, |(mut steps, mut guard)| async move {
        loop {
            match steps.pop_front()? {
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Data(s) => {
                    if steps.is_empty() {
                        // The last bytes are handed to hyper: the answer is complete.
                        guard.complete();
                    }
                    return Some((Ok(Bytes::from(s)), (steps, guard)));
                }
                Step::Fail => {
                    guard.complete();
                    steps.clear();
                    let err = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock reset");
                    return Some((Err(err), (steps, guard)));
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
