//! The `openai-completions` provider: any OpenAI-compatible `/chat/completions`
//! upstream (OpenAI, vLLM, Ollama, LM Studio, OpenRouter, ...).
//!
//! One attempt is one `POST {baseUrl}/chat/completions` with `stream: true`. The
//! answer is read as server-sent events (`eventsource-stream`, which never
//! reconnects, so an answer is never replayed) and turned into
//! [`ProviderEvent`]s as chunks arrive. Nothing is spawned: the returned stream
//! owns the response body, so dropping it closes the upstream connection.

use super::{Provider, ProviderError, ProviderEvent, ProviderFuture, ProviderRequest};
use crate::error::AgentError;
use eventsource_stream::EventStreamError;
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use services::config::ProviderConfig;
use services::proto::{content_part, tool_choice, ContentPart, Message, Tool, ToolChoice};
use services::run_events::finish_reason_with_calls;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Cap on an error response body we read (enough for any real error message).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Cap on a non-streamed (`application/json`) completion body.
const MAX_JSON_BODY: usize = 16 * 1024 * 1024;
/// How much of a non-JSON error body is quoted back.
const ERROR_TEXT_CHARS: usize = 500;
/// Idle pooled connections are closed after this; shorter than most servers'
/// and load balancers' keep-alive, so we rarely reuse a connection they closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Detects dead peers on long, quiet streams.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Time allowed to read an error body when no first-byte timeout is configured.
const DEFAULT_ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// A provider speaking the OpenAI Chat Completions API (streaming).
///
/// Cheap to share: it holds one pooled `reqwest::Client` for its upstream.
pub struct OpenAiProvider {
    name: Arc<str>,
    url: reqwest::Url,
    client: reqwest::Client,
    first_byte_timeout: Option<Duration>,
}

// Hand-written so that headers (the API key) can never reach a log.
impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("first_byte_timeout", &self.first_byte_timeout)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// Builds the provider `name` (its key under `models.providers`) from its config.
    ///
    /// Fails with [`AgentError::Startup`] when the base URL is not an absolute
    /// `http(s)` URL or a header (including the API key) is not a valid HTTP header.
    pub fn new(name: &str, cfg: &ProviderConfig) -> Result<Self, AgentError> {
        let key = |k: &str| format!("models.providers.{name}.{k}");
        let base = cfg.base_url.trim().trim_end_matches('/');
        if base.is_empty() {
            return Err(AgentError::Startup(format!("{}: is required", key("baseUrl"))));
        }
        let url = reqwest::Url::parse(&format!("{base}/chat/completions"))
            .map_err(|e| AgentError::Startup(format!("{}: invalid URL: {e}", key("baseUrl"))))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(AgentError::Startup(format!("{}: must be an http(s) URL", key("baseUrl"))));
        }

        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        if let Some(api_key) = cfg.api_key.as_deref().map(str::trim).filter(|k| !k.is_empty()) {
            // The value is never echoed: it is the secret.
            let mut v = HeaderValue::from_str(&format!("Bearer {api_key}")).map_err(|_| {
                AgentError::Startup(format!("{}: contains characters not allowed in a header", key("apiKey")))
            })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        for (k, v) in &cfg.headers {
            let hk = format!("headers.{k}");
            let n = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| AgentError::Startup(format!("{}: invalid header name", key(&hk))))?;
            let mut hv = HeaderValue::from_str(v)
                .map_err(|_| AgentError::Startup(format!("{}: invalid header value", key(&hk))))?;
            // Extra headers often carry credentials too.
            hv.set_sensitive(true);
            headers.insert(n, hv);
        }

        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("openclaw-agent-svc/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .tcp_nodelay(true)
            .tcp_keepalive(TCP_KEEPALIVE)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            // A redirected POST would be replayed as a GET or leak headers; an API
            // base URL that redirects is a misconfiguration, reported as such.
            .redirect(reqwest::redirect::Policy::none());
        if cfg.connect_timeout_ms > 0 {
            builder = builder.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
        }
        let client = builder
            .build()
            .map_err(|e| AgentError::Startup(format!("models.providers.{name}: HTTP client: {e}")))?;

        Ok(Self {
            name: Arc::from(name),
            url,
            client,
            first_byte_timeout: (cfg.first_byte_timeout_ms > 0)
                .then(|| Duration::from_millis(cfg.first_byte_timeout_ms)),
        })
    }

    /// The provider's name (its key under `models.providers`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The full `.../chat/completions` URL requests go to.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }
}

impl Provider for OpenAiProvider {
    fn stream(&self, req: ProviderRequest) -> ProviderFuture {
        let body = match build_body(&req) {
            Ok(b) => b,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        // The big request (images, transcript) is freed before we wait on the network.
        drop(req);
        let request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        let first_byte = self.first_byte_timeout;
        let name = self.name.clone();
        Box::pin(async move {
            let sent = match first_byte {
                Some(limit) => match tokio::time::timeout(limit, request.send()).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(ProviderError::Timeout(format!(
                            "provider sent no response within {} ms",
                            limit.as_millis()
                        )))
                    }
                },
                None => request.send().await,
            };
            let resp = sent.map_err(send_error)?;
            let status = resp.status();
            if !status.is_success() {
                let limit = first_byte.unwrap_or(DEFAULT_ERROR_BODY_TIMEOUT);
                let err = error_from_response(resp, limit).await;
                tracing::debug!(
                    provider = %name,
                    status = status.as_u16(),
                    error = %err,
                    "provider refused request"
                );
                return Err(err);
            }
            if is_json(resp.headers()) {
                // An upstream that ignored `stream: true`: same events, all at once.
                let body = read_capped(resp, MAX_JSON_BODY).await.map_err(|e| {
                    ProviderError::Upstream(format!("reading provider response failed: {}", describe(&e)))
                })?;
                if body.len() >= MAX_JSON_BODY {
                    return Err(ProviderError::Upstream("provider response too large".into()));
                }
                let events = parse_completion(&body)?;
                return Ok(futures::stream::iter(events.into_iter().map(Ok)).boxed());
            }
            Ok(SseStream::new(resp.bytes_stream()).boxed())
        })
    }
}

// ---------------------------------------------------------------------------
// Request body
// ---------------------------------------------------------------------------

/// The request body; borrowed from the [`ProviderRequest`] so that messages
/// (possibly large image data URIs) are serialized straight into the buffer.
#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: WireMessages<'a>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<serde_json::Value>,
}

enum WireToolChoice<'a> {
    Mode(&'a str),
    Function(&'a str),
}

impl Serialize for WireToolChoice<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            WireToolChoice::Mode(m) => s.serialize_str(m),
            WireToolChoice::Function(name) => {
                #[derive(Serialize)]
                struct Named<'a> {
                    name: &'a str,
                }
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("type", "function")?;
                map.serialize_entry("function", &Named { name })?;
                map.end()
            }
        }
    }
}

/// `messages`: serialized element by element, without an intermediate tree.
struct WireMessages<'a>(&'a [Message]);

impl Serialize for WireMessages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(WireMessage))
    }
}

/// One proto [`Message`] in OpenAI's wire shape.
struct WireMessage<'a>(&'a Message);

impl Serialize for WireMessage<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = self.0;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("role", &m.role)?;
        map.serialize_entry("content", &WireContent { parts: &m.parts, text_only: m.text_only })?;
        if let Some(name) = &m.name {
            map.serialize_entry("name", name)?;
        }
        if !m.tool_calls.is_empty() {
            map.serialize_entry("tool_calls", &WireToolCalls(&m.tool_calls))?;
        }
        if let Some(id) = &m.tool_call_id {
            map.serialize_entry("tool_call_id", id)?;
        }
        map.end()
    }
}

/// `content`: a string for a plain-text message, an array of parts otherwise,
/// `null` when there is nothing (an assistant message with only tool calls).
struct WireContent<'a> {
    parts: &'a [ContentPart],
    text_only: bool,
}

impl Serialize for WireContent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.parts.is_empty() {
            return s.serialize_none();
        }
        if self.text_only && self.parts.len() == 1 {
            if let Some(content_part::Part::Text(t)) = &self.parts[0].part {
                return s.serialize_str(t);
            }
        }
        let mut seq = s.serialize_seq(None)?;
        for p in self.parts {
            match &p.part {
                Some(content_part::Part::Text(text)) => {
                    #[derive(Serialize)]
                    struct TextPart<'a> {
                        #[serde(rename = "type")]
                        kind: &'static str,
                        text: &'a str,
                    }
                    seq.serialize_element(&TextPart { kind: "text", text })?;
                }
                Some(content_part::Part::ImageUrl(img)) => {
                    #[derive(Serialize)]
                    struct Url<'a> {
                        url: &'a str,
                        #[serde(skip_serializing_if = "Option::is_none")]
                        detail: Option<&'a str>,
                    }
                    #[derive(Serialize)]
                    struct ImagePart<'a> {
                        #[serde(rename = "type")]
                        kind: &'static str,
                        image_url: Url<'a>,
                    }
                    seq.serialize_element(&ImagePart {
                        kind: "image_url",
                        image_url: Url { url: &img.url, detail: img.detail.as_deref() },
                    })?;
                }
                // An empty oneof carries nothing to send.
                None => {}
            }
        }
        seq.end()
    }
}

struct WireToolCalls<'a>(&'a [services::proto::ToolCall]);

impl Serialize for WireToolCalls<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Func<'a> {
            name: &'a str,
            arguments: &'a str,
        }
        #[derive(Serialize)]
        struct Call<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            kind: &'static str,
            function: Func<'a>,
        }
        s.collect_seq(self.0.iter().map(|c| Call {
            id: &c.id,
            // Only function tools exist; the proto's `type` may be left empty.
            kind: "function",
            function: Func { name: &c.name, arguments: &c.arguments },
        }))
    }
}

/// Serializes the upstream request body.
fn build_body(req: &ProviderRequest) -> Result<Vec<u8>, ProviderError> {
    let tools = req.tools.iter().enumerate().map(|(i, t)| wire_tool(i, t)).collect::<Result<Vec<_>, _>>()?;
    let response_format = req
        .response_format_json
        .as_deref()
        .map(|j| {
            serde_json::from_str::<serde_json::Value>(j)
                .map_err(|e| ProviderError::Rejected(format!("invalid JSON in response_format: {e}")))
        })
        .transpose()?;
    let p = &req.params;
    let body = ChatRequest {
        model: &req.model,
        messages: WireMessages(&req.messages),
        stream: true,
        // Always ask: usage is reported even when the client did not ask for it.
        stream_options: StreamOptions { include_usage: true },
        temperature: p.temperature,
        top_p: p.top_p,
        frequency_penalty: p.frequency_penalty,
        presence_penalty: p.presence_penalty,
        // Validated as an integer upstream; carried as a double only for that check.
        seed: p.seed.map(|s| s as i64),
        stop: &p.stop,
        max_tokens: req.max_tokens,
        tools,
        tool_choice: req.tool_choice.as_ref().and_then(wire_tool_choice),
        response_format,
    };
    let mut buf = Vec::with_capacity(estimate_body_len(req));
    serde_json::to_writer(&mut buf, &body)
        .map_err(|e| ProviderError::Rejected(format!("could not encode request: {e}")))?;
    Ok(buf)
}

fn wire_tool(i: usize, t: &Tool) -> Result<WireTool<'_>, ProviderError> {
    let parameters = t
        .parameters_json
        .as_deref()
        .map(|j| {
            serde_json::from_str::<serde_json::Value>(j).map_err(|e| {
                ProviderError::Rejected(format!("invalid JSON in tools[{i}].function.parameters: {e}"))
            })
        })
        .transpose()?;
    Ok(WireTool {
        kind: "function",
        function: WireFunction { name: &t.name, description: t.description.as_deref(), parameters },
    })
}

fn wire_tool_choice(tc: &ToolChoice) -> Option<WireToolChoice<'_>> {
    match tc.choice.as_ref()? {
        tool_choice::Choice::Mode(m) => Some(WireToolChoice::Mode(m)),
        tool_choice::Choice::Function(f) => Some(WireToolChoice::Function(f)),
    }
}

/// A size guess for the body buffer, so big (image) requests are not regrown many times.
fn estimate_body_len(req: &ProviderRequest) -> usize {
    let text: usize = req
        .messages
        .iter()
        .map(|m| {
            let parts: usize = m
                .parts
                .iter()
                .map(|p| match &p.part {
                    Some(content_part::Part::Text(t)) => t.len() + 32,
                    Some(content_part::Part::ImageUrl(u)) => u.url.len() + 64,
                    None => 0,
                })
                .sum();
            let calls: usize = m.tool_calls.iter().map(|c| c.arguments.len() + c.name.len() + 96).sum();
            parts + calls + 64
        })
        .sum();
    let tools: usize =
        req.tools.iter().map(|t| t.parameters_json.as_ref().map_or(0, String::len) + 128).sum();
    text + tools + 512
}

// ---------------------------------------------------------------------------
// Errors before the first event
// ---------------------------------------------------------------------------

/// Maps a failure to get response headers.
fn send_error(e: reqwest::Error) -> ProviderError {
    // The URL could carry a key in its query string; it is not the client's business.
    let e = e.without_url();
    if e.is_timeout() {
        ProviderError::Timeout(format!("connecting to provider timed out: {}", describe(&e)))
    } else if e.is_connect() {
        ProviderError::Upstream(format!("could not connect to provider: {}", describe(&e)))
    } else {
        ProviderError::Upstream(format!("provider request failed: {}", describe(&e)))
    }
}

/// Turns a non-2xx response into the matching error, quoting upstream's message.
async fn error_from_response(resp: reqwest::Response, limit: Duration) -> ProviderError {
    let status = resp.status();
    // A body that is slow or breaks off still leaves us the status to report.
    let body = match tokio::time::timeout(limit, read_capped(resp, MAX_ERROR_BODY)).await {
        Ok(Ok(b)) => b,
        _ => Vec::new(),
    };
    let mut msg = error_message(&body);
    if msg.is_empty() {
        msg = status.to_string();
    }
    status_error(status.as_u16(), msg)
}

/// The error for an HTTP status, given upstream's message.
fn status_error(status: u16, msg: String) -> ProviderError {
    match status {
        429 => ProviderError::RateLimited(msg),
        401 | 403 => ProviderError::Upstream(format!("provider authentication failed ({status}): {msg}")),
        // An unknown model or a wrong base URL is the gateway's config, not the request.
        404 => ProviderError::Upstream(format!("provider returned HTTP 404: {msg}")),
        400..=499 => ProviderError::Rejected(msg),
        _ => ProviderError::Upstream(format!("provider returned HTTP {status}: {msg}")),
    }
}

/// `error` as OpenAI-compatible servers send it: an object with `message`, or
/// (Ollama and others) a plain string.
#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField {
    Object { message: Option<String> },
    Text(String),
    Other(serde::de::IgnoredAny),
}

impl ErrorField {
    fn message(self) -> Option<String> {
        match self {
            ErrorField::Object { message } => message,
            ErrorField::Text(t) => Some(t),
            ErrorField::Other(_) => None,
        }
    }
}

/// Upstream's error message from an error body: `error.message`, `error` as a
/// string, or a top-level `message` (older vLLM); else the text, truncated.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        error: Option<ErrorField>,
        message: Option<serde_json::Value>,
    }
    if let Ok(env) = serde_json::from_slice::<Envelope>(body) {
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

/// Reads a body up to `cap` bytes (the rest is left unread and the connection dropped).
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = cap - buf.len();
        if chunk.len() >= room {
            buf.extend_from_slice(&chunk[..room]);
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// An error and its sources on one line (reqwest's top-level message alone,
/// "error sending request", says nothing about refused vs reset).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
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

// ---------------------------------------------------------------------------
// Streamed answer
// ---------------------------------------------------------------------------

/// One `chat.completion.chunk`; only the fields we use, borrowed where possible.
#[derive(Deserialize)]
struct StreamChunk<'a> {
    #[serde(borrow)]
    choices: Option<Vec<StreamChoice<'a>>>,
    usage: Option<WireUsage>,
    error: Option<ErrorField>,
}

#[derive(Deserialize)]
struct StreamChoice<'a> {
    index: Option<u32>,
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<ToolCallChunk<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallChunk<'a> {
    index: Option<u32>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<FunctionChunk<'a>>,
}

#[derive(Deserialize)]
struct FunctionChunk<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl WireUsage {
    fn event(&self) -> ProviderEvent {
        let clamp = |n: Option<u64>| u32::try_from(n.unwrap_or(0)).unwrap_or(u32::MAX);
        ProviderEvent::Usage {
            prompt_tokens: clamp(self.prompt_tokens),
            completion_tokens: clamp(self.completion_tokens),
        }
    }
}

fn non_empty(s: Option<Cow<'_, str>>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(Cow::into_owned)
}

/// What the stream should do after a `data:` payload.
#[derive(Debug, PartialEq)]
enum Flow {
    Continue,
    Done,
}

/// Per-stream bookkeeping that keeps the event order the trait promises:
/// one `Finish`, then at most one `Usage` at the end, whatever upstream did
/// (some servers repeat the finish reason or send running usage in every chunk).
#[derive(Default)]
struct ChunkState {
    finished: bool,
    saw_tool_calls: bool,
    /// The latest usage seen; sent once, when the stream ends normally.
    usage: Option<ProviderEvent>,
}

impl ChunkState {
    /// The normal end (`[DONE]`, or the body ending after a finish reason).
    fn on_end(&mut self, out: &mut VecDeque<ProviderEvent>) {
        if !self.finished {
            // `[DONE]` without a finish reason (seen from some local servers):
            // still end with exactly one `Finish`, as the trait promises.
            self.finished = true;
            let reason = finish_reason_with_calls("", self.saw_tool_calls);
            out.push_back(ProviderEvent::Finish(reason.into()));
        }
        if let Some(u) = self.usage.take() {
            out.push_back(u);
        }
    }

    /// Handles one SSE `data` payload, appending the events it carries to `out`.
    fn on_data(&mut self, data: &str, out: &mut VecDeque<ProviderEvent>) -> Result<Flow, ProviderError> {
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(Flow::Done);
        }
        if data.is_empty() {
            return Ok(Flow::Continue);
        }
        let chunk: StreamChunk<'_> = serde_json::from_str(data)
            .map_err(|e| ProviderError::Upstream(format!("malformed stream chunk from provider: {e}")))?;
        if let Some(err) = chunk.error {
            let msg = err.message().filter(|m| !m.is_empty());
            return Err(ProviderError::Upstream(msg.unwrap_or_else(|| "provider reported an error".into())));
        }
        for choice in chunk.choices.into_iter().flatten() {
            // Only one choice is ever asked for (`n` is never sent).
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                if let Some(text) = non_empty(delta.content) {
                    out.push_back(ProviderEvent::Text(text));
                }
                for (pos, call) in delta.tool_calls.into_iter().flatten().enumerate() {
                    let (name, arguments) = match call.function {
                        Some(f) => (non_empty(f.name), f.arguments.map(Cow::into_owned).unwrap_or_default()),
                        None => (None, String::new()),
                    };
                    let id = non_empty(call.id);
                    if id.is_none() && name.is_none() && arguments.is_empty() {
                        continue;
                    }
                    // Some servers omit `index`; the position in the array is the best guess.
                    let index = call.index.unwrap_or(pos as u32);
                    self.saw_tool_calls = true;
                    out.push_back(ProviderEvent::ToolCall { index, id, name, arguments });
                }
            }
            if let Some(reason) = non_empty(choice.finish_reason) {
                if !self.finished {
                    self.finished = true;
                    out.push_back(ProviderEvent::Finish(reason));
                }
            }
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.event());
        }
        Ok(Flow::Continue)
    }
}

/// Turns a response body (bytes) into provider events.
///
/// Owns the body: dropping it, or reaching the end, drops the connection.
struct SseStream<S> {
    inner: Option<Pin<Box<eventsource_stream::EventStream<S>>>>,
    pending: VecDeque<ProviderEvent>,
    state: ChunkState,
}

impl<S> SseStream<S> {
    fn new(bytes: S) -> Self {
        Self {
            inner: Some(Box::pin(eventsource_stream::EventStream::new(bytes))),
            pending: VecDeque::new(),
            state: ChunkState::default(),
        }
    }
}

impl<S, B, E> Stream for SseStream<S>
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
    E: std::error::Error + 'static,
{
    type Item = Result<ProviderEvent, ProviderError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(ev) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(ev)));
            }
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            let item = match inner.as_mut().poll_next(cx) {
                Poll::Ready(item) => item,
                Poll::Pending => return Poll::Pending,
            };
            match item {
                Some(Ok(event)) => match this.state.on_data(&event.data, &mut this.pending) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Done) => {
                        // The end of the HTTP body usually sits in the same read as
                        // `[DONE]`: consuming it lets the connection go back to the
                        // pool. Never wait for it, though.
                        for _ in 0..4 {
                            match inner.as_mut().poll_next(cx) {
                                Poll::Ready(Some(Ok(_))) => continue,
                                _ => break,
                            }
                        }
                        this.inner = None;
                        this.state.on_end(&mut this.pending);
                    }
                    Err(e) => {
                        this.inner = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                Some(Err(e)) => {
                    this.inner = None;
                    return Poll::Ready(Some(Err(sse_error(e))));
                }
                None => {
                    this.inner = None;
                    if !this.state.finished {
                        return Poll::Ready(Some(Err(ProviderError::Upstream(
                            "provider stream ended before finishing".into(),
                        ))));
                    }
                    this.state.on_end(&mut this.pending);
                }
            }
        }
    }
}

fn sse_error<E: std::error::Error + 'static>(e: EventStreamError<E>) -> ProviderError {
    match e {
        EventStreamError::Transport(e) => {
            ProviderError::Upstream(format!("provider stream broke off: {}", describe(&e)))
        }
        EventStreamError::Utf8(e) => ProviderError::Upstream(format!("malformed stream from provider: {e}")),
        EventStreamError::Parser(e) => {
            ProviderError::Upstream(format!("malformed stream from provider: {e}"))
        }
    }
}

// ---------------------------------------------------------------------------
// Non-streamed answer (`application/json`)
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct Completion {
    choices: Option<Vec<CompletionChoice>>,
    usage: Option<WireUsage>,
    error: Option<ErrorField>,
}

#[derive(Deserialize)]
struct CompletionChoice {
    index: Option<u32>,
    message: Option<CompletionMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct CompletionMessage {
    content: Option<String>,
    tool_calls: Option<Vec<CompletionToolCall>>,
}

#[derive(Deserialize)]
struct CompletionToolCall {
    id: Option<String>,
    function: Option<CompletionFunction>,
}

#[derive(Deserialize)]
struct CompletionFunction {
    name: Option<String>,
    arguments: Option<String>,
}

/// A whole `chat.completion` as the event sequence a stream would have produced.
fn parse_completion(body: &[u8]) -> Result<Vec<ProviderEvent>, ProviderError> {
    let c: Completion = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Upstream(format!("malformed response from provider: {e}")))?;
    if let Some(err) = c.error {
        let msg = err.message().filter(|m| !m.is_empty());
        return Err(ProviderError::Upstream(msg.unwrap_or_else(|| "provider reported an error".into())));
    }
    let choice = c
        .choices
        .into_iter()
        .flatten()
        .find(|ch| ch.index.unwrap_or(0) == 0)
        .ok_or_else(|| ProviderError::Upstream("provider response has no choices".into()))?;
    let mut events = Vec::new();
    let mut had_calls = false;
    if let Some(msg) = choice.message {
        if let Some(text) = msg.content.filter(|t| !t.is_empty()) {
            events.push(ProviderEvent::Text(text));
        }
        for (i, call) in msg.tool_calls.into_iter().flatten().enumerate() {
            had_calls = true;
            let (name, arguments) = match call.function {
                Some(f) => (f.name.filter(|n| !n.is_empty()), f.arguments.unwrap_or_default()),
                None => (None, String::new()),
            };
            events.push(ProviderEvent::ToolCall {
                index: i as u32,
                id: call.id.filter(|id| !id.is_empty()),
                name,
                arguments,
            });
        }
    }
    let reason = choice
        .finish_reason
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| finish_reason_with_calls("", had_calls).into());
    events.push(ProviderEvent::Finish(reason));
    if let Some(u) = c.usage {
        events.push(u.event());
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use services::proto::{ImageUrl, SamplingParams, ToolCall};

    // ----- helpers -----

    fn text_part(t: &str) -> ContentPart {
        ContentPart { part: Some(content_part::Part::Text(t.into())) }
    }

    fn msg(role: &str, text: &str) -> Message {
        Message { role: role.into(), parts: vec![text_part(text)], text_only: true, ..Default::default() }
    }

    fn to_json(m: &Message) -> Value {
        serde_json::to_value(WireMessage(m)).unwrap()
    }

    fn body_json(req: &ProviderRequest) -> Value {
        serde_json::from_slice(&build_body(req).unwrap()).unwrap()
    }

    /// Runs raw SSE text (split into the given byte chunks) through the stream.
    async fn run_sse(chunks: &[&str]) -> Vec<Result<ProviderEvent, ProviderError>> {
        let owned: Vec<Result<Vec<u8>, std::io::Error>> =
            chunks.iter().map(|c| Ok(c.as_bytes().to_vec())).collect();
        SseStream::new(futures::stream::iter(owned)).collect().await
    }

    fn data(json: &str) -> String {
        format!("data: {json}\n\n")
    }

    fn text(t: &str) -> Result<ProviderEvent, ProviderError> {
        Ok(ProviderEvent::Text(t.into()))
    }

    fn finish(r: &str) -> Result<ProviderEvent, ProviderError> {
        Ok(ProviderEvent::Finish(r.into()))
    }

    fn usage(p: u32, c: u32) -> Result<ProviderEvent, ProviderError> {
        Ok(ProviderEvent::Usage { prompt_tokens: p, completion_tokens: c })
    }

    // ----- chunk parsing -----

    #[tokio::test]
    async fn sse_text_finish_and_usage_chunk() {
        let input = [
            data(
                r#"{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            ),
            ": keep-alive\n\n".to_string(),
            data(r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}],"usage":null}"#),
            data(
                r#"{"choices":[{"index":0,"delta":{"content":"lo\n\"w\""},"logprobs":null,"finish_reason":null}]}"#,
            ),
            data(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#),
            data(r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#),
            "data: [DONE]\n\n".to_string(),
        ];
        let refs: Vec<&str> = input.iter().map(String::as_str).collect();
        assert_eq!(run_sse(&refs).await, vec![text("Hel"), text("lo\n\"w\""), finish("stop"), usage(9, 2)]);
    }

    #[tokio::test]
    async fn sse_tool_call_fragments() {
        let input = [
            data(
                r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
            ),
            data(
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}]}"#,
            ),
            data(
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}}]}"#,
            ),
            data(
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_2","type":"function","function":{"name":"now","arguments":"{}"}}]}}]}"#,
            ),
            data(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#),
            "data: [DONE]\n\n".to_string(),
        ];
        let refs: Vec<&str> = input.iter().map(String::as_str).collect();
        let call = |index: u32, id: Option<&str>, name: Option<&str>, args: &str| {
            Ok(ProviderEvent::ToolCall {
                index,
                id: id.map(Into::into),
                name: name.map(Into::into),
                arguments: args.into(),
            })
        };
        assert_eq!(
            run_sse(&refs).await,
            vec![
                call(0, Some("call_1"), Some("get_weather"), ""),
                call(0, None, None, "{\"city\":"),
                call(0, None, None, "\"Paris\"}"),
                call(1, Some("call_2"), Some("now"), "{}"),
                finish("tool_calls"),
            ]
        );
    }

    #[tokio::test]
    async fn sse_chunks_split_anywhere_and_crlf() {
        // Split mid-JSON and inside a multi-byte character; CRLF line ends.
        let full = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"héllo\"}}]}\r\n\r\n\
                    data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\r\n\r\n\
                    data: [DONE]\r\n\r\n";
        let bytes = full.as_bytes();
        let cut1 = full.find('é').unwrap() + 1; // inside the 2-byte 'é'
        let parts: Vec<Result<Vec<u8>, std::io::Error>> =
            vec![Ok(bytes[..10].to_vec()), Ok(bytes[10..cut1].to_vec()), Ok(bytes[cut1..].to_vec())];
        let got: Vec<_> = SseStream::new(futures::stream::iter(parts)).collect().await;
        assert_eq!(got, vec![text("héllo"), finish("length")]);
    }

    #[tokio::test]
    async fn sse_usage_is_sent_once_after_finish() {
        let input = [
            data(
                r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
            ),
            data(
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            ),
            data(
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":6}}"#,
            ),
            "data: [DONE]\n\n".to_string(),
        ];
        let refs: Vec<&str> = input.iter().map(String::as_str).collect();
        // Running usage in every chunk: one Finish, then the latest usage, once.
        assert_eq!(run_sse(&refs).await, vec![text("a"), finish("stop"), usage(5, 6)]);
    }

    #[tokio::test]
    async fn sse_ignores_other_choices_and_unknown_fields() {
        let input = [
            data(
                r#"{"choices":[{"index":1,"delta":{"content":"other"}},{"index":0,"delta":{"content":"mine","reasoning_content":"x"}}],"system_fingerprint":"fp"}"#,
            ),
            data(r#"{"choices":[{"index":1,"delta":{},"finish_reason":"stop"}]}"#),
            data(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#),
            "event: ping\ndata: [DONE]\n\n".to_string(),
        ];
        let refs: Vec<&str> = input.iter().map(String::as_str).collect();
        assert_eq!(run_sse(&refs).await, vec![text("mine"), finish("stop")]);
    }

    #[tokio::test]
    async fn sse_error_chunk_ends_stream_with_error() {
        let input = [
            data(r#"{"choices":[{"index":0,"delta":{"content":"x"}}]}"#),
            data(r#"{"error":{"message":"overloaded","type":"server_error"}}"#),
            data(r#"{"choices":[{"index":0,"delta":{"content":"never"}}]}"#),
        ];
        let refs: Vec<&str> = input.iter().map(String::as_str).collect();
        assert_eq!(run_sse(&refs).await, vec![text("x"), Err(ProviderError::Upstream("overloaded".into()))]);
        // `error` as a bare string (Ollama style).
        let got = run_sse(&[&data(r#"{"error":"model not loaded"}"#)]).await;
        assert_eq!(got, vec![Err(ProviderError::Upstream("model not loaded".into()))]);
    }

    #[tokio::test]
    async fn sse_malformed_chunk_is_upstream_error() {
        let got = run_sse(&["data: {\"choices\":[{\"delta\":\n\n"]).await;
        assert_eq!(got.len(), 1);
        match &got[0] {
            Err(ProviderError::Upstream(m)) => {
                assert!(m.starts_with("malformed stream chunk from provider"), "{m}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn sse_end_without_done() {
        // Finish seen: a normal end.
        let got = run_sse(&[&data(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#)]).await;
        assert_eq!(got, vec![finish("stop")]);
        // No finish: an error after what was produced.
        let got = run_sse(&[&data(r#"{"choices":[{"index":0,"delta":{"content":"par"}}]}"#)]).await;
        assert_eq!(
            got,
            vec![text("par"), Err(ProviderError::Upstream("provider stream ended before finishing".into()))]
        );
    }

    #[tokio::test]
    async fn sse_done_without_finish_reason_still_finishes() {
        let got = run_sse(&[
            &data(r#"{"choices":[{"index":0,"delta":{"content":"x"}}]}"#),
            &data(r#"{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":1}}"#),
            "data: [DONE]\n\n",
        ])
        .await;
        assert_eq!(got, vec![text("x"), finish("stop"), usage(2, 1)]);
    }

    #[tokio::test]
    async fn sse_transport_error_is_upstream() {
        let parts: Vec<Result<Vec<u8>, std::io::Error>> = vec![
            Ok(data(r#"{"choices":[{"index":0,"delta":{"content":"a"}}]}"#).into_bytes()),
            Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset")),
            Ok(b"data: [DONE]\n\n".to_vec()),
        ];
        let got: Vec<_> = SseStream::new(futures::stream::iter(parts)).collect().await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], text("a"));
        match &got[1] {
            Err(ProviderError::Upstream(m)) => assert!(m.contains("connection reset"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn json_completion_becomes_events() {
        let body = json!({
            "id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
        });
        let events = parse_completion(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            events,
            vec![
                ProviderEvent::Text("hi".into()),
                ProviderEvent::ToolCall {
                    index: 0,
                    id: Some("c1".into()),
                    name: Some("f".into()),
                    arguments: "{}".into()
                },
                ProviderEvent::Finish("tool_calls".into()),
                ProviderEvent::Usage { prompt_tokens: 5, completion_tokens: 7 },
            ]
        );
        assert!(matches!(parse_completion(b"{\"choices\":[]}"), Err(ProviderError::Upstream(_))));
        assert!(matches!(parse_completion(b"not json"), Err(ProviderError::Upstream(_))));
    }

    // ----- errors -----

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

        assert_eq!(status_error(429, "slow".into()), ProviderError::RateLimited("slow".into()));
        assert_eq!(
            status_error(401, "bad key".into()),
            ProviderError::Upstream("provider authentication failed (401): bad key".into())
        );
        assert!(matches!(status_error(403, "x".into()), ProviderError::Upstream(_)));
        assert_eq!(status_error(400, "too long".into()), ProviderError::Rejected("too long".into()));
        assert!(matches!(status_error(404, "x".into()), ProviderError::Upstream(_)));
        assert!(matches!(status_error(500, "x".into()), ProviderError::Upstream(_)));
        assert!(matches!(status_error(302, "x".into()), ProviderError::Upstream(_)));
    }

    // ----- request body -----

    #[test]
    fn message_with_string_content() {
        let mut m = msg("user", "hello");
        m.name = Some("bob".into());
        assert_eq!(to_json(&m), json!({"role": "user", "content": "hello", "name": "bob"}));
    }

    #[test]
    fn message_with_parts() {
        let m = Message {
            role: "user".into(),
            parts: vec![
                text_part("what is this?"),
                ContentPart {
                    part: Some(content_part::Part::ImageUrl(ImageUrl {
                        url: "data:image/png;base64,AAAA".into(),
                        detail: Some("low".into()),
                    })),
                },
                ContentPart {
                    part: Some(content_part::Part::ImageUrl(ImageUrl {
                        url: "https://x/y.png".into(),
                        detail: None,
                    })),
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            to_json(&m),
            json!({"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ]})
        );
        // A single text part that was an array on the wire stays an array.
        let m = Message { role: "user".into(), parts: vec![text_part("a")], ..Default::default() };
        assert_eq!(to_json(&m), json!({"role": "user", "content": [{"type": "text", "text": "a"}]}));
    }

    #[test]
    fn assistant_tool_calls_with_null_content_and_tool_message() {
        let m = Message {
            role: "assistant".into(),
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                r#type: String::new(),
                name: "get_weather".into(),
                arguments: "{\"city\":\"Paris\"}".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            to_json(&m),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]})
        );
        let mut t = msg("tool", "22C");
        t.tool_call_id = Some("call_1".into());
        assert_eq!(to_json(&t), json!({"role": "tool", "content": "22C", "tool_call_id": "call_1"}));
    }

    #[test]
    fn body_has_stream_options_and_only_set_params() {
        let req = ProviderRequest {
            model: "gpt-4o-mini".into(),
            messages: vec![msg("system", "be brief"), msg("user", "hi")],
            ..Default::default()
        };
        assert_eq!(
            body_json(&req),
            json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
    }

    #[test]
    fn body_with_every_param() {
        let req = ProviderRequest {
            model: "m".into(),
            messages: vec![msg("user", "hi")],
            params: SamplingParams {
                temperature: Some(0.5),
                top_p: Some(0.9),
                frequency_penalty: Some(-1.0),
                presence_penalty: Some(1.5),
                seed: Some(42.0),
                stop: vec!["END".into(), "\n\n".into()],
                max_completion_tokens: Some(99),
                max_tokens: Some(98),
                n: Some(1),
            },
            max_tokens: Some(64),
            tools: vec![
                Tool {
                    r#type: "function".into(),
                    name: "get_weather".into(),
                    description: Some("Weather".into()),
                    parameters_json: Some(
                        r#"{"type":"object","properties":{"city":{"type":"string"}}}"#.into(),
                    ),
                },
                Tool {
                    r#type: "function".into(),
                    name: "now".into(),
                    description: None,
                    parameters_json: None,
                },
            ],
            tool_choice: Some(ToolChoice {
                choice: Some(tool_choice::Choice::Function("get_weather".into())),
            }),
            response_format_json: Some(r#"{"type":"json_object"}"#.into()),
        };
        let b = body_json(&req);
        assert_eq!(b["temperature"], json!(0.5));
        assert_eq!(b["top_p"], json!(0.9));
        assert_eq!(b["frequency_penalty"], json!(-1.0));
        assert_eq!(b["presence_penalty"], json!(1.5));
        assert!(b["seed"].is_i64(), "seed must be an integer: {}", b["seed"]);
        assert_eq!(b["seed"], json!(42));
        assert_eq!(b["stop"], json!(["END", "\n\n"]));
        // The effective cap from the request wins; the client fields are not forwarded.
        assert_eq!(b["max_tokens"], json!(64));
        assert!(b.get("max_completion_tokens").is_none());
        assert!(b.get("n").is_none());
        assert_eq!(
            b["tools"],
            json!([
                {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "now"}},
            ])
        );
        assert_eq!(b["tool_choice"], json!({"type": "function", "function": {"name": "get_weather"}}));
        assert_eq!(b["response_format"], json!({"type": "json_object"}));
        assert_eq!(b["stream_options"], json!({"include_usage": true}));

        let mut req2 = req.clone();
        req2.tool_choice = Some(ToolChoice { choice: Some(tool_choice::Choice::Mode("required".into())) });
        assert_eq!(body_json(&req2)["tool_choice"], json!("required"));
        req2.tool_choice = Some(ToolChoice { choice: None });
        assert!(body_json(&req2).get("tool_choice").is_none());
    }

    #[test]
    fn bad_embedded_json_is_rejected() {
        let req = ProviderRequest {
            model: "m".into(),
            messages: vec![msg("user", "hi")],
            tools: vec![Tool {
                r#type: "function".into(),
                name: "f".into(),
                description: None,
                parameters_json: Some("{nope".into()),
            }],
            ..Default::default()
        };
        assert!(matches!(build_body(&req), Err(ProviderError::Rejected(m)) if m.contains("tools[0]")));
        let req = ProviderRequest { response_format_json: Some("[".into()), ..Default::default() };
        assert!(matches!(build_body(&req), Err(ProviderError::Rejected(m)) if m.contains("response_format")));
    }

    // ----- construction -----

    #[test]
    fn new_validates_config() {
        let cfg = |url: &str| ProviderConfig { base_url: url.into(), ..Default::default() };
        let p = OpenAiProvider::new("openai", &cfg("https://api.openai.com/v1/")).unwrap();
        assert_eq!(p.url(), "https://api.openai.com/v1/chat/completions");
        assert_eq!(p.name(), "openai");
        for bad in ["", "not a url", "ftp://x/v1"] {
            assert!(matches!(OpenAiProvider::new("p", &cfg(bad)), Err(AgentError::Startup(_))), "{bad}");
        }
        let mut c = cfg("http://localhost:1/v1");
        c.headers.insert("bad header".into(), "v".into());
        assert!(matches!(OpenAiProvider::new("p", &c), Err(AgentError::Startup(m)) if m.contains("headers")));
        let mut c = cfg("http://localhost:1/v1");
        c.api_key = Some("sk-secret\nx".into());
        match OpenAiProvider::new("p", &c) {
            Err(AgentError::Startup(m)) => assert!(m.contains("apiKey") && !m.contains("sk-secret"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
        // Debug never shows the key.
        let mut c = cfg("http://localhost:1/v1");
        c.api_key = Some("sk-secret".into());
        let p = OpenAiProvider::new("p", &c).unwrap();
        assert!(!format!("{p:?}").contains("sk-secret"));
    }

    // ----- over a real socket -----

    mod socket {
        use super::*;
        use axum::body::Body;
        use axum::extract::{ConnectInfo, Path, State};
        use axum::http::{HeaderMap as AxHeaders, StatusCode};
        use axum::response::{IntoResponse, Response};
        use axum::routing::post;
        use axum::Router;
        use bytes::Bytes;
        use std::sync::Mutex;
        use tokio::sync::oneshot;

        /// Request body, `Authorization` and `X-Extra` headers of a request.
        type Seen = (Value, Option<String>, Option<String>);

        #[derive(Clone, Default)]
        struct Shared {
            /// Fires when the server drops a streaming body (the client went away).
            dropped: Arc<Mutex<Option<oneshot::Sender<()>>>>,
            /// The last request body and auth header seen.
            seen: Arc<Mutex<Option<Seen>>>,
            /// Client address of every request, to see connection reuse.
            peers: Arc<Mutex<Vec<std::net::SocketAddr>>>,
        }

        struct DropSignal(Option<oneshot::Sender<()>>);

        impl Drop for DropSignal {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
            }
        }

        /// An SSE body sent as a chunked stream, one event per chunk, like real upstreams.
        fn sse(body: &'static str) -> Response {
            let events = body
                .split_inclusive("\n\n")
                .map(|e| Ok::<_, std::io::Error>(Bytes::from_static(e.as_bytes())));
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(futures::stream::iter(events)))
                .unwrap_or_default()
        }

        async fn handler(
            State(shared): State<Shared>,
            ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
            Path(case): Path<String>,
            headers: AxHeaders,
            body: Bytes,
        ) -> Response {
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(String::from);
            *shared.seen.lock().unwrap() = Some((json, h("authorization"), h("x-extra")));
            shared.peers.lock().unwrap().push(peer);
            match case.as_str() {
                "429" => (StatusCode::TOO_MANY_REQUESTS, r#"{"error":{"message":"slow down"}}"#).into_response(),
                "500" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
                "400" => (
                    StatusCode::BAD_REQUEST,
                    [("content-type", "application/json")],
                    r#"{"error":{"message":"maximum context length exceeded","type":"invalid_request_error"}}"#,
                )
                    .into_response(),
                "401" => (StatusCode::UNAUTHORIZED, r#"{"error":{"message":"Incorrect API key"}}"#).into_response(),
                "sse" => sse(concat!(
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"}}]}\n\n",
                    ": keep-alive\n\n",
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"},\"finish_reason\":null}]}\n\n",
                    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
                    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n",
                    "data: [DONE]\n\n",
                )),
                "json" => (
                    [("content-type", "application/json")],
                    r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"whole"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
                )
                    .into_response(),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    sse("data: [DONE]\n\n")
                }
                "hang" => {
                    let guard = DropSignal(shared.dropped.lock().unwrap().take());
                    let first = Bytes::from_static(
                        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tick\"}}]}\n\n",
                    );
                    // One event, then a keep-alive comment every 20 ms, forever.
                    let s = futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(
                        futures::stream::unfold(guard, |g| async move {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Some((Ok(Bytes::from_static(b": ping\n\n")), g))
                        }),
                    );
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Body::from_stream(s))
                        .unwrap_or_default()
                }
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }

        async fn server() -> (std::net::SocketAddr, Shared) {
            let shared = Shared::default();
            let app =
                Router::new().route("/{case}/chat/completions", post(handler)).with_state(shared.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
                let _ = axum::serve(listener, app).await;
            });
            (addr, shared)
        }

        fn provider(addr: std::net::SocketAddr, case: &str, first_byte_ms: u64) -> OpenAiProvider {
            let mut cfg = ProviderConfig {
                base_url: format!("http://{addr}/{case}/"),
                api_key: Some("sk-test".into()),
                first_byte_timeout_ms: first_byte_ms,
                connect_timeout_ms: 1000,
                ..Default::default()
            };
            cfg.headers.insert("X-Extra".into(), "yes".into());
            OpenAiProvider::new("mock", &cfg).unwrap()
        }

        fn request() -> ProviderRequest {
            ProviderRequest { model: "m".into(), messages: vec![msg("user", "hi")], ..Default::default() }
        }

        async fn attempt(p: &OpenAiProvider) -> Result<Vec<ProviderEvent>, ProviderError> {
            let s = p.stream(request()).await?;
            s.collect::<Vec<_>>().await.into_iter().collect()
        }

        #[tokio::test]
        async fn status_mapping_over_http() {
            let (addr, _) = server().await;
            assert_eq!(
                attempt(&provider(addr, "429", 2000)).await,
                Err(ProviderError::RateLimited("slow down".into()))
            );
            assert_eq!(
                attempt(&provider(addr, "400", 2000)).await,
                Err(ProviderError::Rejected("maximum context length exceeded".into()))
            );
            assert_eq!(
                attempt(&provider(addr, "401", 2000)).await,
                Err(ProviderError::Upstream(
                    "provider authentication failed (401): Incorrect API key".into()
                ))
            );
            match attempt(&provider(addr, "500", 2000)).await {
                Err(ProviderError::Upstream(m)) => assert!(m.contains("500") && m.contains("boom"), "{m}"),
                other => panic!("unexpected {other:?}"),
            }
        }

        #[tokio::test]
        async fn sse_and_json_over_http() {
            let (addr, shared) = server().await;
            let p = provider(addr, "sse", 2000);
            assert_eq!(
                attempt(&p).await.unwrap(),
                vec![
                    ProviderEvent::Text("Hi".into()),
                    ProviderEvent::Text(" there".into()),
                    ProviderEvent::Finish("stop".into()),
                    ProviderEvent::Usage { prompt_tokens: 3, completion_tokens: 2 },
                ]
            );
            let (body, auth, extra) = shared.seen.lock().unwrap().take().unwrap();
            assert_eq!(body["stream"], json!(true));
            assert_eq!(body["stream_options"]["include_usage"], json!(true));
            assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
            assert_eq!(extra.as_deref(), Some("yes"));
            // A stream read to `[DONE]` leaves its connection in the pool for the next attempt.
            assert_eq!(attempt(&p).await.unwrap().len(), 4);
            {
                let peers = shared.peers.lock().unwrap();
                assert_eq!(peers.len(), 2);
                assert_eq!(peers[0], peers[1], "second attempt opened a new connection");
            }

            assert_eq!(
                attempt(&provider(addr, "json", 2000)).await.unwrap(),
                vec![
                    ProviderEvent::Text("whole".into()),
                    ProviderEvent::Finish("stop".into()),
                    ProviderEvent::Usage { prompt_tokens: 1, completion_tokens: 1 },
                ]
            );
        }

        #[tokio::test]
        async fn first_byte_timeout_and_refused() {
            let (addr, _) = server().await;
            let started = std::time::Instant::now();
            assert!(matches!(attempt(&provider(addr, "slow", 200)).await, Err(ProviderError::Timeout(_))));
            assert!(started.elapsed() < Duration::from_secs(2));

            // A port nobody listens on.
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let dead = l.local_addr().unwrap();
            drop(l);
            match attempt(&provider(dead, "sse", 2000)).await {
                Err(ProviderError::Upstream(m)) => assert!(m.contains("connect"), "{m}"),
                other => panic!("unexpected {other:?}"),
            }
        }

        #[tokio::test]
        async fn dropping_the_stream_closes_the_connection() {
            let (addr, shared) = server().await;
            let (tx, rx) = oneshot::channel();
            *shared.dropped.lock().unwrap() = Some(tx);
            let p = provider(addr, "hang", 2000);
            let mut s = p.stream(request()).await.unwrap();
            assert_eq!(s.next().await, Some(Ok(ProviderEvent::Text("tick".into()))));
            let dropped_at = std::time::Instant::now();
            drop(s);
            // The server notices (its body is dropped) once the socket is gone.
            tokio::time::timeout(Duration::from_secs(2), rx)
                .await
                .expect("upstream connection was not closed after the stream was dropped")
                .unwrap();
            // Far inside the 100 ms the spec allows, plus one 20 ms server tick.
            assert!(dropped_at.elapsed() < Duration::from_millis(500), "{:?}", dropped_at.elapsed());
        }
    }
}
