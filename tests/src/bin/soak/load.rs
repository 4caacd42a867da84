//! The soak's mixed load: the kinds of request, one worker's loop through them,
//! and the checks that decide whether a request ended as expected.
//!
//! Every worker is sequential (one request in flight), so the number of workers
//! is the concurrency. A worker owns its stable sessions, so turns of one session
//! never queue behind each other except behind a turn whose client disconnected
//! (that turn still runs to its end in agent-svc, as it must).

use anyhow::{anyhow, bail, ensure, Context, Result};
use e2e::sse::{SseItem, SseParser};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The mock upstream's whole answer (`mock-upstream`'s `ANSWER` joined).
pub const ANSWER: &str = "Hello from the mock.";

/// Turns of one stable session before its worker moves on to a fresh one: long
/// enough for several compactions, short enough that old sessions go stale and
/// are swept by retention (so the store stays bounded too).
const TURNS_PER_SESSION: u64 = 40;

/// A WebSocket connection is closed (politely) and reopened after this many
/// runs or this long, whichever comes first: connection churn is part of the
/// load, and the gateway closes a client that has not read its pings for two
/// tick intervals.
const WS_MAX_RUNS: u32 = 20;
const WS_MAX_AGE: Duration = Duration::from_secs(20);

/// How long a polite WebSocket close may take before the socket is just dropped.
const WS_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Text of a stable-session turn (about 300 bytes, ~100 estimated tokens), so a
/// session passes the small context budget after a few turns and compacts.
const FILLER: &str = "Please remember the following notes for later: the soak test sends this \
    paragraph on every stable-session turn so that the transcript grows quickly and the agent's \
    small context budget forces compaction every few turns; nothing in it needs an answer, the mock \
    replies the same way to everything.";

/// What one request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Non-streaming, stateless.
    Json,
    /// Streaming (SSE), stateless.
    Sse,
    /// Non-streaming on a stable session named by the `user` field.
    JsonUser,
    /// Streaming on a stable session named by `x-openclaw-session-key`.
    SseSession,
    /// WebSocket `chat.send` on the same session as [`Kind::SseSession`].
    Ws,
    /// Streaming, stateless; the client disconnects after the first content delta.
    SseDrop,
    /// WebSocket `chat.send` on the stable session; the client drops the TCP
    /// connection after the first `delta` event (the run still completes).
    WsDrop,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 7] =
        [Kind::Json, Kind::Sse, Kind::JsonUser, Kind::SseSession, Kind::Ws, Kind::SseDrop, Kind::WsDrop];

    /// The name in the report.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Json => "json",
            Kind::Sse => "sse",
            Kind::JsonUser => "json-user",
            Kind::SseSession => "sse-session",
            Kind::Ws => "ws-chat",
            Kind::SseDrop => "sse-drop",
            Kind::WsDrop => "ws-drop",
        }
    }

    fn index(self) -> usize {
        Kind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// The order each worker cycles through (worker `i` starts at position `i`):
/// 2/10 stateless JSON, 2/10 stateless SSE, 1/10 each stable JSON and SSE,
/// 2/10 WebSocket runs, 1/10 each disconnecting SSE and WebSocket client.
const CYCLE: [Kind; 10] = [
    Kind::Json,
    Kind::Sse,
    Kind::JsonUser,
    Kind::SseSession,
    Kind::Ws,
    Kind::Json,
    Kind::SseDrop,
    Kind::Sse,
    Kind::Ws,
    Kind::WsDrop,
];

/// Requests ended as expected and not, per kind; the first failures' messages.
#[derive(Default)]
pub struct Counters {
    done: [AtomicU64; 7],
    failed: [AtomicU64; 7],
    errors: Mutex<Vec<String>>,
}

/// At most this many failure messages are kept for the report.
const KEPT_ERRORS: usize = 10;

/// A snapshot of [`Counters`], indexed like [`Kind::ALL`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// Requests that ended as expected.
    pub done: [u64; 7],
    /// Requests that did not.
    pub failed: [u64; 7],
}

impl Tally {
    /// All requests that ended as expected.
    pub fn done_total(&self) -> u64 {
        self.done.iter().sum()
    }

    /// All failed requests.
    pub fn failed_total(&self) -> u64 {
        self.failed.iter().sum()
    }
}

impl Counters {
    fn record(&self, kind: Kind, worker: usize, r: Result<()>) {
        match r {
            Ok(()) => {
                self.done[kind.index()].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed[kind.index()].fetch_add(1, Ordering::Relaxed);
                let mut errors = self.errors.lock();
                if errors.len() < KEPT_ERRORS {
                    errors.push(format!("{} (worker {worker}): {e:#}", kind.label()));
                }
            }
        }
    }

    /// The counts now.
    pub fn tally(&self) -> Tally {
        let read = |a: &[AtomicU64; 7]| std::array::from_fn(|i| a[i].load(Ordering::Relaxed));
        Tally { done: read(&self.done), failed: read(&self.failed) }
    }

    /// The first failures' messages.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().clone()
    }
}

/// What every worker shares.
pub struct Env {
    /// The gateway's address.
    pub gateway: SocketAddr,
    /// Its bearer token.
    pub token: String,
    /// A pooled HTTP/1.1 client (keep-alive connections reused across workers).
    pub http: reqwest::Client,
    /// The bound on one request, from its start to its last byte: past it the
    /// request counts as hung.
    pub timeout: Duration,
    /// No request starts after this.
    pub deadline: Instant,
    /// Set when the run is over early (a service exited): workers stop at once.
    pub stop: AtomicBool,
}

/// One worker: requests back to back, cycling through [`CYCLE`], until the deadline.
pub async fn worker(i: usize, env: &Env, counters: &Counters) {
    let mut ws: Option<Ws> = None;
    let mut step = i;
    let mut stable_turns = 0u64;
    while Instant::now() < env.deadline && !env.stop.load(Ordering::Relaxed) {
        let kind = CYCLE[step % CYCLE.len()];
        step += 1;
        let session = format!("soak-w{i}-g{}", stable_turns / TURNS_PER_SESSION);
        if matches!(kind, Kind::JsonUser | Kind::SseSession | Kind::Ws | Kind::WsDrop) {
            stable_turns += 1;
        }
        let turn = format!("turn {stable_turns} of {session}. {FILLER}");
        let fut = one(kind, env, &mut ws, &session, &turn);
        let r = match tokio::time::timeout(env.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!("did not end within {:?}", env.timeout)),
        };
        if r.is_err() {
            // The connection's state is unknown after a failure: start afresh.
            ws = None;
        }
        counters.record(kind, i, r);
    }
    if let Some(ws) = ws {
        ws.close().await;
    }
}

/// One request of `kind`.
async fn one(kind: Kind, env: &Env, ws: &mut Option<Ws>, session: &str, turn: &str) -> Result<()> {
    match kind {
        Kind::Json => http_turn(env, false, None, None, "hi", false).await,
        Kind::Sse => http_turn(env, true, None, None, "hi", false).await,
        Kind::JsonUser => http_turn(env, false, Some(session), None, turn, false).await,
        Kind::SseSession => http_turn(env, true, None, Some(session), turn, false).await,
        Kind::SseDrop => http_turn(env, true, None, None, "hi", true).await,
        Kind::Ws | Kind::WsDrop => {
            let stale =
                ws.as_ref().is_some_and(|w| w.runs >= WS_MAX_RUNS || w.opened.elapsed() >= WS_MAX_AGE);
            if stale {
                if let Some(old) = ws.take() {
                    old.close().await;
                }
            }
            let conn = match ws {
                Some(c) => c,
                None => ws.insert(Ws::open(env).await.context("WebSocket connect")?),
            };
            let drop_early = kind == Kind::WsDrop;
            conn.chat(session, turn, drop_early).await?;
            if drop_early {
                // Gone without a Close frame, in the middle of the run.
                *ws = None;
            }
            Ok(())
        }
    }
}

/// A chat completion through the gateway, its answer checked: `200`, the
/// session key header of a stable session, the mock's answer (JSON), or a
/// well-formed stream with content that ends with `data: [DONE]` (SSE). With
/// `drop_early` the response is dropped after the first content delta.
async fn http_turn(
    env: &Env,
    stream: bool,
    user: Option<&str>,
    session_key: Option<&str>,
    text: &str,
    drop_early: bool,
) -> Result<()> {
    let mut body = json!({"model": "openclaw", "messages": [{"role": "user", "content": text}]});
    if stream {
        body["stream"] = true.into();
    }
    if let Some(u) = user {
        body["user"] = u.into();
    }
    let mut req = env
        .http
        .post(format!("http://{}/v1/chat/completions", env.gateway))
        .bearer_auth(&env.token)
        .json(&body);
    if let Some(k) = session_key {
        req = req.header("x-openclaw-session-key", k);
    }
    let mut resp = req.send().await.context("sending the request")?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        bail!("HTTP {status}: {}", text.chars().take(300).collect::<String>());
    }
    let want_key = match (user, session_key) {
        (Some(u), _) => Some(format!("agent:main:openai-user:{u}")),
        (None, Some(k)) => Some(format!("agent:main:{k}")),
        (None, None) => None,
    };
    if let Some(want) = want_key {
        let got = resp.headers().get("x-openclaw-session-key").and_then(|v| v.to_str().ok());
        ensure!(got == Some(want.as_str()), "x-openclaw-session-key is {got:?}, want {want:?}");
    }
    if !stream {
        let bytes = resp.bytes().await.context("reading the body")?;
        let v: Value = serde_json::from_slice(&bytes).context("the answer is not JSON")?;
        let content = v.pointer("/choices/0/message/content").and_then(Value::as_str);
        ensure!(content == Some(ANSWER), "answer content {content:?}, want {ANSWER:?}");
        return Ok(());
    }
    let mut check = StreamCheck::default();
    while let Some(chunk) = resp.chunk().await.context("reading the stream")? {
        check.feed(&chunk)?;
        if drop_early && !check.content.is_empty() {
            // Dropping the response closes the connection mid-stream.
            return Ok(());
        }
    }
    check.finish()
}

/// An SSE answer checked as it arrives: chunks must be JSON, no error event,
/// nothing after `[DONE]`; at the end, the content must be the mock's answer.
#[derive(Default)]
struct StreamCheck {
    parser: SseParser,
    content: String,
    done: bool,
}

impl StreamCheck {
    fn feed(&mut self, data: &[u8]) -> Result<()> {
        let Self { parser, content, done } = self;
        parser.feed(data, |item| match item {
            SseItem::Event { data, .. } => on_event(data, content, done),
            SseItem::Comment(_) => Ok(()),
        })
    }

    fn finish(&self) -> Result<()> {
        ensure!(!self.parser.is_mid_event(), "the stream ended inside an event");
        ensure!(self.done, "the stream ended without data: [DONE]");
        ensure!(self.content == ANSWER, "streamed content {:?}, want {ANSWER:?}", self.content);
        Ok(())
    }
}

fn on_event(payload: &[u8], content: &mut String, done: &mut bool) -> Result<()> {
    ensure!(!*done, "an event after data: [DONE]");
    if payload == b"[DONE]" {
        *done = true;
        return Ok(());
    }
    let v: Value = serde_json::from_slice(payload).context("an SSE event that is not JSON")?;
    if v.get("error").is_some() {
        bail!("error event: {v}");
    }
    if let Some(text) = v.pointer("/choices/0/delta/content").and_then(Value::as_str) {
        content.push_str(text);
    }
    Ok(())
}

/// A WebSocket connection through the `connect` handshake, used for one run at a time.
struct Ws {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    opened: Instant,
    runs: u32,
    next_id: u64,
    /// The last event `seq` seen: it must increase strictly over the connection.
    last_seq: Option<u64>,
}

impl Ws {
    /// Opens `ws://gateway/`, expects `connect.challenge`, connects with the
    /// token and expects `hello-ok`.
    async fn open(env: &Env) -> Result<Ws> {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", env.gateway)).await?;
        let mut c = Ws { ws, opened: Instant::now(), runs: 0, next_id: 0, last_seq: None };
        let challenge = c.next_json().await?;
        ensure!(challenge["event"] == "connect.challenge", "first frame: {challenge}");
        let params = e2e::ws::connect_params(json!({"token": env.token}));
        c.send(&json!({"type": "req", "id": "connect", "method": "connect", "params": params})).await?;
        let hello = c.next_json().await?;
        ensure!(hello["ok"] == true && hello["payload"]["type"] == "hello-ok", "connect: {hello}");
        Ok(c)
    }

    async fn send(&mut self, v: &Value) -> Result<()> {
        self.ws.send(Message::text(v.to_string())).await.context("WebSocket send")
    }

    /// The next JSON text frame (pings and pongs skipped; the library answers pings).
    async fn next_json(&mut self) -> Result<Value> {
        loop {
            match self.ws.next().await {
                None => bail!("the connection ended"),
                Some(Err(e)) => bail!("WebSocket read: {e}"),
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str()).context("a text frame that is not JSON")
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(c))) => bail!("closed by the server: {c:?}"),
                Some(Ok(other)) => bail!("unexpected frame: {other:?}"),
            }
        }
    }

    /// `chat.send` of `text` on `session`, then its `chat` events up to `final`,
    /// which must carry the mock's answer. With `drop_early`, returns at the
    /// first `delta` (or `final`, when the run was quicker).
    async fn chat(&mut self, session: &str, text: &str, drop_early: bool) -> Result<()> {
        self.runs += 1;
        self.next_id += 1;
        let id = format!("s{}", self.next_id);
        let params = json!({"sessionKey": session, "message": text, "idempotencyKey": uuid::Uuid::new_v4().to_string()});
        self.send(&json!({"type": "req", "id": id, "method": "chat.send", "params": params})).await?;
        // Replies may overtake events or trail them: events are matched to the
        // run once its reply has named it.
        let mut run_id: Option<String> = None;
        let mut early: Vec<Value> = Vec::new();
        loop {
            let frame = self.next_json().await?;
            if frame["type"] == "res" {
                ensure!(frame["id"] == id.as_str(), "a reply to another request: {frame}");
                ensure!(frame["ok"] == true && frame["payload"]["status"] == "started", "chat.send: {frame}");
                let rid = frame["payload"]["runId"].as_str().context("chat.send reply without runId")?;
                run_id = Some(rid.to_string());
                for payload in std::mem::take(&mut early) {
                    if self.on_chat(rid, &payload, drop_early)? {
                        return Ok(());
                    }
                }
                continue;
            }
            if frame["event"] != "chat" {
                // `tick` and other events.
                continue;
            }
            let payload = frame["payload"].clone();
            let seq = payload["seq"].as_u64().context("a chat event without seq")?;
            if let Some(last) = self.last_seq {
                ensure!(seq > last, "chat event seq {seq} after {last}");
            }
            self.last_seq = Some(seq);
            match &run_id {
                Some(rid) => {
                    if self.on_chat(rid, &payload, drop_early)? {
                        return Ok(());
                    }
                }
                None => early.push(payload),
            }
        }
    }

    /// One `chat` payload of run `rid`; true when the run is over for this client.
    fn on_chat(&self, rid: &str, payload: &Value, drop_early: bool) -> Result<bool> {
        ensure!(payload["runId"] == rid, "a chat event of another run: {payload}");
        match payload["state"].as_str() {
            Some("delta") => Ok(drop_early),
            Some("final") => {
                let text = payload.pointer("/message/content/0/text").and_then(Value::as_str);
                ensure!(text == Some(ANSWER), "final message {text:?}, want {ANSWER:?}");
                Ok(true)
            }
            _ => bail!("run ended as {payload}"),
        }
    }

    /// A polite close (Close frame, then read to the end), bounded by [`WS_CLOSE_WAIT`].
    async fn close(mut self) {
        let polite = async {
            let _ = self.ws.close(None).await;
            while let Some(Ok(_)) = self.ws.next().await {}
        };
        let _ = tokio::time::timeout(WS_CLOSE_WAIT, polite).await;
    }
}
