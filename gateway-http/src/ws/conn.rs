//! One WebSocket connection: `connect.challenge` → `connect` → requests and
//! events until either side closes.
//!
//! The connection task reads; a writer task owns the sink ([`super::outbox`]).
//! Requests other than `chat.send` run in their own tasks (so replies may come
//! out of order), at most [`MAX_INFLIGHT_REQUESTS`] at a time. A ping and a
//! `tick` event go out every `tickIntervalMs`; a client from which nothing
//! arrived for twice that is closed. The shutdown signal closes with 1012.

use super::methods::{self, Conn};
use super::outbox::{write_loop, Closing, Outbox};
use super::protocol::{self, close, code, ErrorShape, PRECONNECT_MAX_BYTES, PROTOCOL_VERSION};
use super::WsSettings;
use crate::auth::{Caller, Denied};
use crate::state::AppState;
use axum::extract::ws::{Message, WebSocket};
use futures::stream::SplitStream;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use services::config::AuthMode;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

/// Requests of one connection answered concurrently; more get `RATE_LIMITED`.
pub const MAX_INFLIGHT_REQUESTS: usize = 64;
/// How long closing may take: flushing what is queued plus the Close frame, then
/// waiting for the client's Close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// After refusing an oversized frame (which cannot be read past), how long the
/// socket stays open so the client can read the Close frame before the reset.
const TOO_BIG_LINGER: Duration = Duration::from_millis(500);

type Stream = SplitStream<WebSocket>;

/// Serves one upgraded connection from `caller` until it closes. `proxied`
/// (mode `trusted-proxy` only) says whether the upgrade carried an identity
/// from a trusted proxy.
pub(crate) async fn serve(socket: WebSocket, state: AppState, caller: Caller, proxied: Option<bool>) {
    let ip = caller.ip;
    let settings = *state.ws();
    let conn_id: Arc<str> = services::ids::with_uuid(&[]).into();
    let (sink, mut stream) = socket.split();
    let (outbox, rx) = Outbox::new(settings.max_buffered_bytes);
    let writer = tokio::spawn(write_loop(sink, rx, outbox.clone(), CLOSE_TIMEOUT));
    tracing::debug!(conn = %conn_id, %ip, "WebSocket connected");

    if state.force_close().is_cancelled() {
        outbox.close(Closing::with(close::RESTART, "service restart"));
    } else if handshake(&state, &settings, &mut stream, &outbox, caller, proxied, &conn_id).await {
        let conn = Conn {
            state,
            outbox: outbox.clone(),
            active_runs: Arc::new(AtomicUsize::new(0)),
            turns: Arc::default(),
            conn_id,
        };
        serve_requests(&conn, &settings, &mut stream).await;
    }
    finish(writer, stream, &outbox).await;
}

/// Ends the connection: lets the writer send what is queued and the Close frame,
/// then waits (bounded) for the client's Close so the TCP connection ends cleanly.
async fn finish(mut writer: tokio::task::JoinHandle<()>, mut stream: Stream, outbox: &Outbox) {
    outbox.close(Closing::GONE);
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut writer).await.is_err() {
        writer.abort();
    }
    let Some(how) = outbox.closing() else { return };
    tracing::debug!(code = how.code, reason = how.reason, "WebSocket closed");
    if how.send_frame {
        let rest = async { while let Some(Ok(_)) = stream.next().await {} };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, rest).await;
        if how.code == close::TOO_BIG {
            tokio::time::sleep(TOO_BIG_LINGER).await;
        }
    }
}

/// A read failed: a frame over the size limit gets 1009, anything else means
/// the client is gone.
fn on_read_error(outbox: &Outbox, e: &axum::Error) {
    if is_too_big(e) {
        outbox.close(Closing::with(close::TOO_BIG, "message too big"));
    } else {
        tracing::debug!(error = %e, "WebSocket read failed");
        outbox.close(Closing::GONE);
    }
}

/// Whether `e` is the socket layer refusing a frame over `max_message_size`.
fn is_too_big(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(tungstenite::Error::Capacity(_)) = s.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Answers with an error and closes with 1008 (handshake failures).
fn refuse(outbox: &Outbox, id: &Value, error: &ErrorShape, reason: &'static str) {
    outbox.send_text(protocol::res_err(id, error));
    outbox.close(Closing::with(close::POLICY, reason));
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConnectParams {
    min_protocol: u64,
    max_protocol: u64,
    #[serde(default)]
    client: Option<Value>,
    #[serde(default)]
    auth: Option<ConnectAuth>,
}

/// `connect.params.auth`. No `Debug`: it holds the secret.
#[derive(Deserialize, Default)]
struct ConnectAuth {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// `connect`'s params, checked (shape, protocol range, `client`); the error
/// comes with the reason logged for the refusal.
pub(super) fn connect_params(params: Value) -> Result<ConnectParams, (ErrorShape, &'static str)> {
    let params = match params {
        Value::Object(_) => serde_json::from_value::<ConnectParams>(params),
        _ => Err(serde::de::Error::custom("params must be an object")),
    }
    .map_err(|e| (ErrorShape::invalid(format!("Invalid connect params: {e}")), "invalid request"))?;
    if !(params.min_protocol..=params.max_protocol).contains(&PROTOCOL_VERSION) {
        let e = ErrorShape::invalid(format!(
            "Protocol mismatch: this gateway speaks protocol {PROTOCOL_VERSION}; the client offered {}..={}.",
            params.min_protocol, params.max_protocol
        ));
        return Err((e, "protocol mismatch"));
    }
    if params.client.as_ref().is_some_and(|c| !c.is_object()) {
        return Err((ErrorShape::invalid("`client` must be an object."), "invalid request"));
    }
    Ok(params)
}

/// Sends the challenge and waits for a valid `connect`. True when connected;
/// else the outbox is closing.
async fn handshake(
    state: &AppState,
    settings: &WsSettings,
    stream: &mut Stream,
    outbox: &Outbox,
    caller: Caller,
    proxied: Option<bool>,
    conn_id: &str,
) -> bool {
    let challenge = json!({"nonce": services::ids::with_uuid(&[]), "ts": protocol::now_ms()});
    outbox.send_text(protocol::event("connect.challenge", &challenge, None));

    let deadline = Instant::now() + settings.handshake_timeout;
    let text = loop {
        let msg = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                outbox.close(Closing::with(close::POLICY, "handshake timeout"));
                return false;
            }
            Ok(None) => {
                outbox.close(Closing::GONE);
                return false;
            }
            Ok(Some(Err(e))) => {
                on_read_error(outbox, &e);
                return false;
            }
            Ok(Some(Ok(msg))) => msg,
        };
        match msg {
            Message::Text(text) => break text,
            Message::Binary(_) => {
                let e =
                    ErrorShape::invalid("The first frame must be a `connect` request (a JSON text frame).");
                refuse(outbox, &Value::Null, &e, "invalid request");
                return false;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            Message::Close(_) => {
                outbox.close(Closing::GONE);
                return false;
            }
        }
    };
    if text.len() > PRECONNECT_MAX_BYTES {
        outbox.close(Closing::with(close::TOO_BIG, "message too big"));
        return false;
    }
    let req = match protocol::parse_request(text.as_str()) {
        Ok(req) => req,
        Err(bad) => {
            refuse(outbox, &bad.id, &ErrorShape::invalid(bad.message), "invalid request");
            return false;
        }
    };
    drop(text);
    if req.method != "connect" {
        let e = ErrorShape::invalid("The first request must be `connect`.");
        refuse(outbox, &req.id, &e, "invalid request");
        return false;
    }
    let params = match connect_params(req.params) {
        Ok(p) => p,
        Err((e, reason)) => {
            refuse(outbox, &req.id, &e, reason);
            return false;
        }
    };
    let auth = params.auth.unwrap_or_default();
    let checked = match state.auth().mode() {
        AuthMode::Token => state.auth().check_secret(caller, auth.token.as_deref()),
        AuthMode::Password => state.auth().check_secret(caller, auth.password.as_deref()),
        AuthMode::None => Ok(()),
        AuthMode::TrustedProxy if proxied == Some(true) => Ok(()),
        AuthMode::TrustedProxy => Err(Denied::Unauthorized.into()),
    };
    if let Err(refusal) = checked {
        // A wrong secret from an exempt client is answered late (guessing made slow).
        let e = refusal.answer().await;
        let shape = ErrorShape::from(&e);
        let reason = if shape.code == code::RATE_LIMITED { "rate limited" } else { "unauthorized" };
        refuse(outbox, &req.id, &shape, reason);
        return false;
    }
    let client_id = params.client.as_ref().and_then(|c| c.get("id")).and_then(Value::as_str).unwrap_or("");
    tracing::debug!(conn = %conn_id, client = %client_id, "WebSocket client connected");
    let hello = json!({
        "type": "hello-ok",
        "protocol": PROTOCOL_VERSION,
        "server": {"version": env!("CARGO_PKG_VERSION"), "connId": conn_id},
        "features": {"methods": protocol::METHODS, "events": protocol::EVENTS},
        "snapshot": {},
        "auth": {"role": "operator", "scopes": ["operator.read", "operator.write"]},
        "policy": {
            "maxPayload": settings.max_payload,
            "maxBufferedBytes": settings.max_buffered_bytes,
            "tickIntervalMs": u64::try_from(settings.tick_interval.as_millis()).unwrap_or(u64::MAX),
        },
    });
    outbox.send_text(protocol::res_ok(&req.id, &hello))
}

/// The connected phase: requests, keepalive, shutdown.
async fn serve_requests(conn: &Conn, settings: &WsSettings, stream: &mut Stream) {
    let outbox = &conn.outbox;
    let tick = settings.tick_interval;
    let silence_limit = tick.saturating_mul(2);
    let mut ticker = tokio::time::interval_at(Instant::now() + tick, tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    let force_close = conn.state.force_close().clone();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = outbox.closed() => break,
            () = force_close.cancelled() => {
                outbox.close(Closing::with(close::RESTART, "service restart"));
                break;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = ticker.tick() => {
                if last_seen.elapsed() >= silence_limit {
                    outbox.close(Closing::with(close::GOING_AWAY, "keepalive timeout"));
                    break;
                }
                outbox.send_ping();
                outbox.send_event_droppable(|seq| {
                    protocol::event("tick", &json!({"ts": protocol::now_ms()}), Some(seq))
                });
            }
            msg = stream.next() => {
                let msg = match msg {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        on_read_error(outbox, &e);
                        break;
                    }
                    None => {
                        outbox.close(Closing::GONE);
                        break;
                    }
                };
                last_seen = Instant::now();
                match msg {
                    Message::Text(text) => on_request(conn, &mut tasks, text.as_str()),
                    Message::Binary(_) => {
                        let e = ErrorShape::invalid("Binary frames are not supported; send JSON text frames.");
                        outbox.send_text(protocol::res_err(&Value::Null, &e));
                    }
                    Message::Ping(_) | Message::Pong(_) => {}
                    Message::Close(_) => {
                        outbox.close(Closing::GONE);
                        break;
                    }
                }
            }
        }
    }
    // Pending unary calls are of no use any more; chat runs are not in this set.
    tasks.abort_all();
}

/// One text frame of a connected client.
fn on_request(conn: &Conn, tasks: &mut JoinSet<()>, text: &str) {
    let req = match protocol::parse_request(text) {
        Ok(req) => req,
        Err(bad) => {
            conn.outbox.send_text(protocol::res_err(&bad.id, &ErrorShape::invalid(bad.message)));
            return;
        }
    };
    if req.method == "chat.send" {
        methods::chat_send(conn, req);
        return;
    }
    if tasks.len() >= MAX_INFLIGHT_REQUESTS {
        let e = ErrorShape {
            code: code::RATE_LIMITED,
            message: format!("At most {MAX_INFLIGHT_REQUESTS} requests may be in flight per connection."),
            retryable: Some(true),
            retry_after_ms: None,
        };
        conn.outbox.send_text(protocol::res_err(&req.id, &e));
        return;
    }
    tasks.spawn(methods::answer(conn.clone(), req));
}
