//! `mock-upstream`: a lean mock OpenAI-compatible upstream for the benchmark.
//!
//! Built directly on hyper 1 (HTTP/1.1, keep-alive) so that its own cost stays
//! small next to the services being measured. It serves
//! `POST /v1/chat/completions` (and `POST /chat/completions`):
//!
//! - `"stream": true`: a short SSE answer: a role chunk, three content chunks, a
//!   finish chunk, a usage chunk with `choices: []` when
//!   `stream_options.include_usage` is true, then `data: [DONE]`;
//! - otherwise: a JSON `chat.completion` with `usage`.
//!
//! The answer is fixed ([`ANSWER`]); the request's `model` is echoed. Anything
//! else is `404`; a body that is not JSON is `400`.
//!
//! A streamed request whose text carries `[hold:MS]` is held (the benchmark's
//! open streams): the role chunk and a first `"."` content delta at once, then
//! another `"."` every MS milliseconds until `POST /_release` (which releases
//! every stream held at that moment and answers `{"released": N}`), then the
//! usual answer, finish, usage and `[DONE]` in one write.
//!
//! With `--stats` (the cluster test) it also counts requests per client address
//! (which agent-svc replica called) and, for requests whose text carries
//! session markers `[sess:NAME#ATTEMPT]`, how many markers each request held
//! (the new turn and every earlier user turn of the session sent along):
//! `GET /_stats` answers `{"peers": {ip: n}, "sessions": {name: [{"peer",
//! "attempt", "turns"}]}}`, requests in arrival order.
//!
//! ```text
//! mock-upstream [--listen 127.0.0.1:0] [--chunk-delay-ms 0] [--stats]
//! ```
//!
//! Prints `mock-upstream listening on http://ADDR` on stdout once it accepts
//! connections.

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use clap::Parser;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The answer's content chunks, streamed in this order (joined for JSON answers).
pub const ANSWER: [&str; 3] = ["Hello", " from the", " mock."];
/// Usage reported for every answer: (prompt, completion).
const USAGE: (u32, u32) = (9, 5);
/// Largest request body accepted (the benchmark sends tiny bodies).
const MAX_BODY: usize = 4 << 20;

/// A lean mock OpenAI-compatible upstream (benchmark use).
#[derive(Parser, Debug)]
#[command(name = "mock-upstream", version)]
struct Cli {
    /// Listen address (only loopback is sensible).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    listen: SocketAddr,
    /// Pause between SSE events, in milliseconds (0: the whole answer in one write).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    chunk_delay_ms: u64,
    /// Tokio worker threads (default: one per core).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Count requests per client and session marker, served at `GET /_stats`.
    #[arg(long)]
    stats: bool,
}

/// What `--stats` records.
#[derive(Default)]
struct Stats {
    peers: std::collections::BTreeMap<std::net::IpAddr, u64>,
    /// Per session: (peer, attempt, markers in the request).
    sessions: std::collections::BTreeMap<String, Vec<(std::net::IpAddr, String, usize)>>,
}

/// The marker that names a session in the cluster test's messages.
const MARKER: &[u8] = b"[sess:";

impl Stats {
    fn record(&mut self, peer: std::net::IpAddr, body: &[u8]) {
        *self.peers.entry(peer).or_default() += 1;
        let mut turns = 0;
        let mut last = None;
        let mut rest = body;
        while let Some(at) = rest.windows(MARKER.len()).position(|w| w == MARKER) {
            let after = &rest[at + MARKER.len()..];
            let end = after.iter().position(|b| *b == b']').unwrap_or(after.len());
            last = Some(String::from_utf8_lossy(&after[..end]).into_owned());
            turns += 1;
            rest = &after[end..];
        }
        if let Some(last) = last {
            let (name, attempt) = last.split_once('#').unwrap_or((&last, ""));
            self.sessions.entry(name.to_owned()).or_default().push((peer, attempt.to_owned(), turns));
        }
    }

    fn to_json(&self) -> String {
        let peers: serde_json::Map<String, serde_json::Value> =
            self.peers.iter().map(|(ip, n)| (ip.to_string(), (*n).into())).collect();
        let sessions: serde_json::Map<String, serde_json::Value> = self
            .sessions
            .iter()
            .map(|(name, reqs)| {
                let list = reqs
                    .iter()
                    .map(|(ip, attempt, turns)| {
                        serde_json::json!({"peer": ip.to_string(), "attempt": attempt, "turns": turns})
                    })
                    .collect();
                (name.clone(), serde_json::Value::Array(list))
            })
            .collect();
        serde_json::json!({"peers": peers, "sessions": sessions}).to_string()
    }
}

type SharedStats = Option<std::sync::Arc<parking_lot::Mutex<Stats>>>;

/// The part of a chat completion request the mock looks at; serde skips the rest
/// (messages included) without building values for it.
#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

/// `stream_options`.
#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

type Body = BoxBody<Bytes, Infallible>;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().context("cannot start the tokio runtime")?;
    rt.block_on(serve(cli))
}

/// Accepts connections forever; each is served as HTTP/1.1 with keep-alive.
async fn serve(cli: Cli) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = listener.local_addr().context("local address")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "mock-upstream listening on http://{addr}")?;
        out.flush()?;
    }
    let delay = Duration::from_millis(cli.chunk_delay_ms);
    let ids = std::sync::Arc::new(AtomicU64::new(1));
    let stats: SharedStats = cli.stats.then(Default::default);
    let held = Held::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("mock-upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ids = ids.clone();
        let stats = stats.clone();
        let held = held.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let ctx = Ctx { delay, id: ids.fetch_add(1, Ordering::Relaxed), peer: peer.ip() };
                handle(req, ctx, stats.clone(), held.clone())
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            // A client that resets its connection is not the mock's problem.
            let _ = conn.await;
        });
    }
}

/// What one request is served with besides its own bytes.
struct Ctx {
    /// `--chunk-delay-ms`.
    delay: Duration,
    /// The answer's id.
    id: u64,
    peer: std::net::IpAddr,
}

/// The held streams (`[hold:MS]`): a release generation they wait to see
/// change, and how many wait now.
#[derive(Clone, Default)]
struct Held {
    release: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    waiting: std::sync::Arc<AtomicU64>,
}

/// The marker of a held stream, followed by its tick in ms and `]`.
const HOLD: &[u8] = b"[hold:";

/// The tick of a held stream, when the request asks for one.
fn hold_tick(body: &[u8]) -> Option<Duration> {
    let at = body.windows(HOLD.len()).position(|w| w == HOLD)?;
    let after = &body[at + HOLD.len()..];
    let end = after.iter().position(|b| *b == b']')?;
    let ms: u64 = std::str::from_utf8(&after[..end]).ok()?.parse().ok()?;
    // At most a day: an `Instant` plus a huge tick would overflow.
    Some(Duration::from_millis(ms.clamp(1, 86_400_000)))
}

/// Routes one request.
async fn handle(
    req: Request<Incoming>,
    ctx: Ctx,
    stats: SharedStats,
    held: Held,
) -> Result<Response<Body>, Infallible> {
    let Ctx { delay, id, peer } = ctx;
    let path = req.uri().path();
    if path == "/_release" && req.method() == Method::POST {
        let released = held.waiting.load(Ordering::Relaxed);
        held.release.send_modify(|g| *g += 1);
        return Ok(json_response(format!("{{\"released\":{released}}}")));
    }
    if path == "/_stats" {
        return Ok(match &stats {
            Some(s) => json_response(s.lock().to_json()),
            None => plain(StatusCode::NOT_FOUND, "Not Found"),
        });
    }
    if path != "/v1/chat/completions" && path != "/chat/completions" {
        return Ok(plain(StatusCode::NOT_FOUND, "Not Found"));
    }
    if req.method() != Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}"))),
    };
    if let Some(s) = &stats {
        s.lock().record(peer, &body);
    }
    let parsed: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}"))),
    };
    let model = parsed.model.as_deref().unwrap_or("mock");
    // serde_json cannot fail on a &str; fall back to a fixed name anyway.
    let model = serde_json::to_string(model).unwrap_or_else(|_| "\"mock\"".into());
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if parsed.stream.unwrap_or(false) {
        let usage = parsed.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
        let head = chunk_head(&model, created, id);
        if let Some(tick) = hold_tick(&body) {
            return Ok(held_sse(&head, sse_events(&head, usage), tick, &held));
        }
        Ok(sse(sse_events(&head, usage), delay))
    } else {
        Ok(json(&model, created, id))
    }
}

/// A non-streaming `chat.completion`.
fn json(model: &str, created: u64, id: u64) -> Response<Body> {
    let (p, c) = USAGE;
    let text = ANSWER.concat();
    let body = format!(
        concat!(
            r#"{{"id":"chatcmpl-mock{}","object":"chat.completion","created":{},"model":{},"#,
            r#""choices":[{{"index":0,"message":{{"role":"assistant","content":"{}"}},"finish_reason":"stop"}}],"#,
            r#""usage":{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{}}}}}"#
        ),
        id,
        created,
        model,
        text,
        p,
        c,
        p + c
    );
    json_response(body)
}

/// The start of every chunk object of one streamed answer, up to `choices`.
fn chunk_head(model: &str, created: u64, id: u64) -> String {
    format!(
        r#"{{"id":"chatcmpl-mock{id}","object":"chat.completion.chunk","created":{created},"model":{model},"#
    )
}

/// The SSE events of one streamed answer, each `data: …\n\n`.
fn sse_events(head: &str, usage: bool) -> Vec<String> {
    let mut events = Vec::with_capacity(ANSWER.len() + 4);
    events.push(format!(
        "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\"}},\"finish_reason\":null}}]}}\n\n"
    ));
    for part in ANSWER {
        events.push(content_event(head, part));
    }
    events.push(format!(
        "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n"
    ));
    if usage {
        let (p, c) = USAGE;
        events.push(format!(
            "data: {head}\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c},\"total_tokens\":{}}}}}\n\n",
            p + c
        ));
    }
    events.push("data: [DONE]\n\n".to_string());
    events
}

/// One content delta event; `head` opens the chunk object up to `choices`.
fn content_event(head: &str, part: &str) -> String {
    format!(
        "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{part}\"}},\"finish_reason\":null}}]}}\n\n"
    )
}

/// Where a held stream is.
enum HeldPhase {
    /// Nothing sent yet.
    Start,
    /// Ticking until the release.
    Held,
    /// Released: the rest of the answer went out.
    Released,
}

/// Counts a held stream in [`Held::waiting`] until it is released or dropped.
struct Waiting(std::sync::Arc<AtomicU64>);

impl Waiting {
    fn new(count: &std::sync::Arc<AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A held stream (see the module doc): `events` is the usual answer, whose
/// first event (the role) goes out at once with the first tick; `head` opens
/// its chunk objects (see [`chunk_head`]).
fn held_sse(head: &str, events: Vec<String>, tick: Duration, held: &Held) -> Response<Body> {
    let tick_event = Bytes::from(content_event(head, "."));
    let mut release = held.release.subscribe();
    release.mark_unchanged();
    let waiting = Some(Waiting::new(&held.waiting));
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut opening = BytesMut::new();
    opening.extend_from_slice(events.first().map(String::as_bytes).unwrap_or_default());
    opening.extend_from_slice(&tick_event);
    let opening = opening.freeze();
    let rest = Bytes::from(events.iter().skip(1).map(String::as_str).collect::<String>());
    let state = (HeldPhase::Start, interval, release, waiting);
    let stream = futures::stream::unfold(state, move |(phase, mut interval, mut release, mut waiting)| {
        let (opening, tick_event, rest) = (opening.clone(), tick_event.clone(), rest.clone());
        async move {
            let (frame, phase) = match phase {
                HeldPhase::Start => (opening, HeldPhase::Held),
                HeldPhase::Held => tokio::select! {
                    _ = interval.tick() => (tick_event, HeldPhase::Held),
                    // An error means the sender is gone (never: `serve` keeps it): release too.
                    _ = release.changed() => {
                        waiting.take();
                        (rest, HeldPhase::Released)
                    }
                },
                HeldPhase::Released => return None,
            };
            Some((Ok::<_, Infallible>(Frame::data(frame)), (phase, interval, release, waiting)))
        }
    });
    sse_response(StreamBody::new(stream).boxed())
}

/// A streamed answer: one buffer when `delay` is zero, else one frame per event
/// with `delay` between them.
fn sse(events: Vec<String>, delay: Duration) -> Response<Body> {
    let body: Body = if delay.is_zero() {
        let mut buf = BytesMut::with_capacity(events.iter().map(String::len).sum());
        for e in &events {
            buf.extend_from_slice(e.as_bytes());
        }
        Full::new(buf.freeze()).boxed()
    } else {
        let stream = futures::stream::unfold((events.into_iter(), true), move |(mut it, first)| async move {
            let next = it.next()?;
            if !first {
                tokio::time::sleep(delay).await;
            }
            Some((Ok::<_, Infallible>(Frame::data(Bytes::from(next))), (it, false)))
        });
        StreamBody::new(stream).boxed()
    };
    sse_response(body)
}

/// A `200` event stream.
fn sse_response(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// A `200` JSON response.
fn json_response(body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A plain-text response.
fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// An OpenAI-style JSON error.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({"error": {"message": message, "type": "invalid_request_error"}});
    let mut resp = json_response(body.to_string());
    *resp.status_mut() = status;
    resp
}
