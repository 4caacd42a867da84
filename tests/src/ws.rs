//! The Gateway WebSocket protocol from the outside: [`WsClient`], a real
//! WebSocket client (tokio-tungstenite) that speaks the gateway's frames.
//!
//! ```no_run
//! # async fn demo() {
//! use e2e::gateway::Stack;
//! use e2e::harness::ConfigBuilder;
//! use e2e::mock::MockUpstream;
//! use e2e::ws::WsClient;
//! use serde_json::json;
//!
//! let mock = MockUpstream::start().await;
//! let s = Stack::start(&ConfigBuilder::with_mock(&mock).auth_token("t"), None).await;
//! let (mut ws, hello) = WsClient::connect(s.gw.addr(), json!({"token": "t"})).await;
//! assert_eq!(hello["payload"]["type"], "hello-ok");
//! let res = ws.call("chat.send", json!({"sessionKey": "main", "message": "hi", "idempotencyKey": "1"})).await;
//! let run_id = res["payload"]["runId"].as_str().unwrap().to_string();
//! let events = ws.chat_run(&run_id).await;
//! assert_eq!(events.last().unwrap()["state"], "final");
//! # }
//! ```

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Bound on one expected frame (things that should take milliseconds).
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// One thing read from the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A text frame that parsed as JSON.
    Json(Value),
    /// A text frame that did not parse.
    Text(String),
    /// A binary frame.
    Binary(usize),
    /// A ping (the client library answers it).
    Ping,
    /// A pong.
    Pong,
    /// A Close frame: code and reason (`None`: a Close frame without a code).
    Close(Option<(u16, String)>),
    /// The connection ended without a Close frame (EOF, reset, protocol error).
    Ended(String),
}

/// How a connection ended, seen by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The server sent a Close frame with this code.
    Closed(u16),
    /// A Close frame without a code.
    ClosedNoCode,
    /// No Close frame: the TCP connection ended (EOF, reset).
    Dropped(String),
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client for the gateway protocol. Frames that arrive while it
/// waits for something else (events while waiting for a reply, replies for other
/// ids) are kept for later calls.
pub struct WsClient {
    ws: Socket,
    events: VecDeque<Value>,
    replies: HashMap<String, Value>,
    next_id: u64,
    /// Pings received so far.
    pub pings: usize,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient").field("events", &self.events.len()).finish_non_exhaustive()
    }
}

fn id_key(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl WsClient {
    /// Opens `ws://addr/` (no protocol exchange yet). Panics on failure.
    pub async fn open(addr: SocketAddr) -> WsClient {
        Self::open_path(addr, "/").await
    }

    /// Opens `ws://addr<path>`. Panics on failure.
    pub async fn open_path(addr: SocketAddr, path: &str) -> WsClient {
        match Self::try_open(addr, path).await {
            Ok(c) => c,
            Err(e) => panic!("WebSocket upgrade to ws://{addr}{path} failed: {e}"),
        }
    }

    /// Opens `ws://addr<path>`.
    pub async fn try_open(
        addr: SocketAddr,
        path: &str,
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        Self::try_open_with(addr, path, &[]).await
    }

    /// Opens `ws://addr<path>` with extra headers on the upgrade request (a
    /// browser's `Origin`, a proxy's identity header). A refused upgrade is
    /// `Err(Http(response))` with the server's status.
    pub async fn try_open_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::HeaderValue;
        let mut req = format!("ws://{addr}{path}").into_client_request()?;
        for (k, v) in headers {
            let v = HeaderValue::from_str(v)
                .map_err(|e| tokio_tungstenite::tungstenite::Error::HttpFormat(e.into()))?;
            req.headers_mut().insert(*k, v);
        }
        let (ws, _resp) = tokio_tungstenite::connect_async(req).await?;
        Ok(WsClient { ws, events: VecDeque::new(), replies: HashMap::new(), next_id: 0, pings: 0 })
    }

    /// Opens, reads the `connect.challenge`, sends `connect` with this `auth`
    /// object and protocol 4, and expects `hello-ok`. Returns the client and the
    /// `res` frame. Panics otherwise.
    pub async fn connect(addr: SocketAddr, auth: Value) -> (WsClient, Value) {
        let mut c = Self::open(addr).await;
        let challenge = c.next_json().await;
        assert_eq!(challenge["event"], "connect.challenge", "first frame: {challenge}");
        let res = c.send_connect(connect_params(auth)).await;
        assert_eq!(res["ok"], true, "connect failed: {res}");
        assert_eq!(res["payload"]["type"], "hello-ok", "{res}");
        (c, res)
    }

    /// Sends `{"type":"req","id":"connect-1","method":"connect","params"}` and
    /// returns the next JSON frame (the reply).
    pub async fn send_connect(&mut self, params: Value) -> Value {
        self.send_json(&json!({"type": "req", "id": "connect-1", "method": "connect", "params": params}))
            .await;
        self.next_json().await
    }

    /// Sends a text frame. Panics when the socket is closed.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        if let Err(e) = self.try_send(Message::text(text.into())).await {
            panic!("send failed: {e}");
        }
    }

    /// Sends a JSON text frame.
    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(v.to_string()).await;
    }

    /// Sends any message, returning the error.
    pub async fn try_send(&mut self, m: Message) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(m).await
    }

    /// Sends a request with a fresh id; returns the id.
    pub async fn send_request(&mut self, method: &str, params: Value) -> String {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        self.send_json(&json!({"type": "req", "id": id, "method": method, "params": params})).await;
        id
    }

    /// Sends a request and waits for its reply (the whole `res` frame).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_request(method, params).await;
        self.reply(&id).await
    }

    /// The reply to request `id`, buffering events and other replies meanwhile.
    pub async fn reply(&mut self, id: &str) -> Value {
        loop {
            if let Some(r) = self.replies.remove(id) {
                return r;
            }
            let v = self.next_json().await;
            self.file(v);
        }
    }

    /// Files a received frame as a reply or an event.
    fn file(&mut self, v: Value) {
        match v["type"].as_str() {
            Some("res") => {
                self.replies.insert(id_key(&v["id"]), v);
            }
            _ => self.events.push_back(v),
        }
    }

    /// The next event frame (buffered first), skipping replies (kept).
    pub async fn next_event(&mut self) -> Value {
        loop {
            if let Some(e) = self.events.pop_front() {
                return e;
            }
            let v = self.next_json().await;
            self.file(v);
        }
    }

    /// The next event for which `pred` holds (buffered ones first); other events
    /// and replies are kept for later calls.
    pub async fn next_event_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(e) = self.events.iter().position(&pred).and_then(|i| self.events.remove(i)) {
            return e;
        }
        loop {
            let v = self.next_json().await;
            if v["type"] != "res" && pred(&v) {
                return v;
            }
            self.file(v);
        }
    }

    /// The payloads of run `run_id`'s `chat` events up to and including the
    /// terminal one (`final`, `error`, `aborted`). Other events are kept.
    pub async fn chat_run(&mut self, run_id: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let payload = self.next_chat(run_id).await;
            let end = payload["state"] != "delta";
            out.push(payload);
            if end {
                return out;
            }
        }
    }

    /// The next `chat` event payload of `run_id` (any state). Other events are kept.
    pub async fn next_chat(&mut self, run_id: &str) -> Value {
        let e = self.next_event_where(|e| e["event"] == "chat" && e["payload"]["runId"] == run_id).await;
        e["payload"].clone()
    }

    /// The next frame within `timeout` (`None` on timeout).
    pub async fn next_frame_within(&mut self, timeout: Duration) -> Option<Frame> {
        let item = tokio::time::timeout(timeout, self.ws.next()).await.ok()?;
        Some(match item {
            None => Frame::Ended("end of stream".into()),
            Some(Err(e)) => Frame::Ended(e.to_string()),
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<Value>(t.as_str()) {
                Ok(v) => Frame::Json(v),
                Err(_) => Frame::Text(t.as_str().to_string()),
            },
            Some(Ok(Message::Binary(b))) => Frame::Binary(b.len()),
            Some(Ok(Message::Ping(_))) => {
                self.pings += 1;
                Frame::Ping
            }
            Some(Ok(Message::Pong(_))) => Frame::Pong,
            Some(Ok(Message::Close(c))) => Frame::Close(
                c.map(|CloseFrame { code, reason }| (u16::from(code), reason.as_str().to_string())),
            ),
            Some(Ok(Message::Frame(_))) => Frame::Ended("raw frame".into()),
        })
    }

    /// The next frame ([`FRAME_TIMEOUT`]); panics on timeout.
    pub async fn next_frame(&mut self) -> Frame {
        match self.next_frame_within(FRAME_TIMEOUT).await {
            Some(f) => f,
            None => panic!("no frame within {FRAME_TIMEOUT:?}"),
        }
    }

    /// The next JSON text frame, skipping pings and pongs; panics on anything else.
    pub async fn next_json(&mut self) -> Value {
        loop {
            match self.next_frame().await {
                Frame::Json(v) => return v,
                Frame::Ping | Frame::Pong => {}
                other => panic!("expected a JSON frame, got {other:?}"),
            }
        }
    }

    /// Reads (and discards) until the connection ends, within `timeout`; `None`
    /// when it is still open then. Also returns the JSON frames read on the way.
    pub async fn read_to_end(&mut self, timeout: Duration) -> Option<(Ending, Vec<Value>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.next_frame_within(left).await? {
                Frame::Close(Some((code, _))) => {
                    self.finish_close().await;
                    return Some((Ending::Closed(code), seen));
                }
                Frame::Close(None) => {
                    self.finish_close().await;
                    return Some((Ending::ClosedNoCode, seen));
                }
                Frame::Ended(why) => return Some((Ending::Dropped(why), seen)),
                Frame::Json(v) => seen.push(v),
                _ => {}
            }
        }
    }

    /// After the server's Close: keeps reading briefly so the client library sends
    /// its Close reply and sees the TCP connection end.
    async fn finish_close(&mut self) {
        let rest = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), rest).await;
    }

    /// [`WsClient::read_to_end`] that must end within `timeout`; returns how.
    pub async fn expect_end(&mut self, timeout: Duration) -> Ending {
        match self.read_to_end(timeout).await {
            Some((ending, _)) => ending,
            None => panic!("the server did not close the connection within {timeout:?}"),
        }
    }

    /// Sends a Close frame (code 1000) and waits for the close to complete.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = self.read_to_end(FRAME_TIMEOUT).await;
    }

    /// Drops the TCP connection without a Close frame.
    pub fn drop_connection(self) {
        drop(self.ws);
    }
}

/// `connect` params with protocol 4 and a test client description.
pub fn connect_params(auth: Value) -> Value {
    json!({
        "minProtocol": 4,
        "maxProtocol": 4,
        "client": {"id": "e2e-test", "version": "1.0.0", "platform": "test", "mode": "test"},
        "auth": auth,
    })
}

/// Concatenated `deltaText` of a run's events.
pub fn delta_text(events: &[Value]) -> String {
    events.iter().filter(|e| e["state"] == "delta").filter_map(|e| e["deltaText"].as_str()).collect()
}

/// The text of a `message` (`content[0].text`).
pub fn message_text(v: &Value) -> String {
    v.pointer("/message/content/0/text").and_then(Value::as_str).unwrap_or_default().to_string()
}
