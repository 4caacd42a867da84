//! gateway-http's WebSocket protocol end to end (SPEC §7): a real WebSocket
//! client (tokio-tungstenite) against a real gateway in front of a real
//! agent-svc whose provider is the mock upstream.
//!
//! Assertions are on the frames the client reads, on what the mock upstream
//! saw (requests, disconnects), and on the sessions read back over gRPC.

use e2e::fake::{finished, started, text, tool, FakeAgentSvc, Script, Step};
use e2e::gateway::http_client;
use e2e::harness::text_of;
use e2e::prelude::*;
use e2e::ws::{connect_params, delta_text, message_text, Ending, Frame, WsClient};
use futures::future::join_all;
use services::proto::HistoryEntry;
use std::net::SocketAddr;
use tokio_tungstenite::tungstenite::Message;

/// A mock upstream, agent-svc and the gateway in front of it.
struct Pair {
    mock: MockUpstream,
    svc: AgentSvc,
    gw: Gateway,
}

impl Pair {
    fn addr(&self) -> SocketAddr {
        self.gw.addr()
    }

    fn http_url(&self, path: &str) -> String {
        format!("{}{path}", self.gw.url())
    }

    /// A connected client (token auth).
    async fn client(&self) -> WsClient {
        WsClient::connect(self.addr(), json!({"token": TOKEN})).await.0
    }

    /// The stored transcript of a full session key (empty when unknown).
    async fn history(&self, key: &str) -> Vec<HistoryEntry> {
        self.svc.history(key).await.unwrap_or_default()
    }

    /// A client whose run on session `key` (the mock answers `pieces`, `delay`
    /// apart) has streamed its first delta: the client, the run id and that delta.
    async fn running_chat(&self, key: &str, pieces: &[String], delay: Duration) -> (WsClient, String, Value) {
        self.mock.push(Behavior::chunks(pieces.to_vec()).with_delay(delay));
        let mut ws = self.client().await;
        let run = start_chat(&mut ws, send_params(key, "go", &format!("k-{key}"))).await;
        let first = ws.next_chat(&run).await;
        assert_eq!(first["state"], "delta", "{first}");
        (ws, run, first)
    }

    /// The transcript once it has `n` entries.
    async fn history_with(&self, key: &str, n: usize) -> Vec<HistoryEntry> {
        self.svc.history_with(key, n, T).await
    }
}

/// Token auth with the mock as the default model; `cfg` adds settings.
async fn pair(cfg: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Pair {
    let mock = MockUpstream::start().await;
    let Stack { svc, gw } = stack(cfg(ConfigBuilder::with_mock(&mock).auth_token(TOKEN))).await;
    Pair { mock, svc, gw }
}

fn send_params(session: &str, message: &str, key: &str) -> Value {
    json!({"sessionKey": session, "message": message, "idempotencyKey": key})
}

/// Sends `chat.send` and returns the run id from the `started` reply.
/// A client that stopped reading was disconnected: what the socket buffers held
/// comes out, then the end, never the run's `final` event; the run itself was
/// not cancelled upstream.
async fn assert_closed_before_final(mut ws: WsClient, p: &Pair) {
    let (_, seen) =
        ws.read_to_end(Duration::from_secs(30)).await.expect("the server never closed the connection");
    assert!(!seen.is_empty(), "at least the reply was delivered");
    assert!(
        seen.iter().all(|f| f["payload"]["state"] != "final"),
        "a client that never read got the whole run"
    );
    assert_eq!(p.mock.disconnects(), 0, "the run was not cancelled");
}

async fn start_chat(ws: &mut WsClient, params: Value) -> String {
    let res = ws.call("chat.send", params).await;
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(res["payload"]["status"], "started", "{res}");
    assert!(res["payload"].get("deduplicated").is_none(), "{res}");
    res["payload"]["runId"].as_str().expect("runId").to_string()
}

fn assert_error(res: &Value, code: &str) {
    assert_eq!(res["type"], "res", "{res}");
    assert_eq!(res["ok"], false, "{res}");
    assert_eq!(res["error"]["code"], code, "{res}");
    assert!(res["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{res}");
}

fn entry_text(e: &HistoryEntry) -> (String, String, bool) {
    let m = e.message.as_ref().expect("message");
    (m.role.clone(), text_of(m), e.interrupted)
}

/// The `seq` values of chat payloads are strictly increasing.
fn assert_increasing(seqs: &[u64]) {
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq not strictly increasing: {seqs:?}");
}

/// A gateway in front of the scripted fake agent-svc, and a connected client.
async fn fake_pair() -> (FakeAgentSvc, Gateway, WsClient) {
    harness::init_tracing();
    let fake = FakeAgentSvc::start().await;
    let config = ConfigBuilder::new().auth_token(TOKEN).build();
    let gw = Gateway::start(&config, Some(&fake.url())).await;
    let (ws, _) = WsClient::connect(gw.addr(), json!({"token": TOKEN})).await;
    (fake, gw, ws)
}

/// A tool call as `message.toolCalls` spells it.
fn call_json(id: &str, name: &str, arguments: &str) -> Value {
    json!({"id": id, "name": name, "arguments": arguments})
}

/// The calls a client rebuilds from the `deltaToolCalls` of `deltas`, checking
/// on the way that each call's `id` and `name` come once, with its first
/// fragment, and that each `delta`'s `message.toolCalls` is the calls so far.
/// Also returns how many `delta`s carried tool-call fragments.
fn fold_tool_call_deltas(deltas: &[Value]) -> (Vec<Value>, usize) {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut carrying = 0;
    for d in deltas {
        assert_eq!(d["state"], "delta", "{d}");
        assert!(d["deltaText"].is_string(), "every delta has `deltaText`: {d}");
        let Some(parts) = d["deltaToolCalls"].as_array() else { continue };
        carrying += 1;
        for part in parts {
            let index = usize::try_from(part["index"].as_u64().expect("index")).expect("index");
            let arguments = part["arguments"].as_str().expect("arguments");
            if index == calls.len() {
                let id = part["id"].as_str().expect("`id` with the first fragment");
                let name = part["name"].as_str().expect("`name` with the first fragment");
                calls.push((id.into(), name.into(), arguments.into()));
            } else {
                assert!(index < calls.len(), "index {index} skips a call: {d}");
                assert!(part.get("id").is_none() && part.get("name").is_none(), "id and name once: {d}");
                calls[index].2.push_str(arguments);
            }
        }
        let so_far: Vec<Value> = calls.iter().map(|(i, n, a)| call_json(i, n, a)).collect();
        assert_eq!(d["message"]["toolCalls"], json!(so_far), "the cumulative calls: {d}");
    }
    (calls.iter().map(|(i, n, a)| call_json(i, n, a)).collect(), carrying)
}

// ---------------------------------------------------------------------------
// Handshake

#[tokio::test]
async fn challenge_then_connect_gives_hello_ok_on_any_path() {
    let p = pair(|c| {
        c.set("gateway.ws", json!({"maxPayload": 65536, "maxBufferedBytes": 131072, "tickIntervalMs": 5000}))
    })
    .await;
    let mut ws = WsClient::open_path(p.addr(), "/some/deep/path?x=1").await;
    let challenge = ws.next_json().await;
    assert_eq!(challenge["type"], "event");
    assert_eq!(challenge["event"], "connect.challenge");
    assert_eq!(challenge["payload"]["nonce"].as_str().map(str::len), Some(36), "{challenge}");
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let ts = challenge["payload"]["ts"].as_i64().expect("ts");
    assert!((now_ms - ts).abs() < 60_000, "{ts} vs {now_ms}");

    let res = ws.send_connect(connect_params(json!({"token": TOKEN}))).await;
    assert_eq!(res["type"], "res");
    assert_eq!(res["id"], "connect-1");
    assert_eq!(res["ok"], true, "{res}");
    let hello = &res["payload"];
    assert_eq!(hello["type"], "hello-ok");
    assert_eq!(hello["protocol"], 4);
    assert!(hello["server"]["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert_eq!(hello["server"]["connId"].as_str().map(str::len), Some(36));
    assert_eq!(
        hello["features"]["methods"],
        json!([
            "health",
            "models.list",
            "agents.list",
            "sessions.list",
            "sessions.reset",
            "sessions.delete",
            "sessions.compact",
            "chat.history",
            "chat.send",
            "chat.abort"
        ])
    );
    let events = hello["features"]["events"].as_array().expect("events");
    assert!(events.contains(&json!("chat")) && events.contains(&json!("connect.challenge")), "{hello}");
    assert_eq!(hello["snapshot"], json!({}));
    assert_eq!(hello["auth"]["role"], "operator");
    assert_eq!(hello["auth"]["scopes"], json!(["operator.read", "operator.write"]));
    assert_eq!(
        hello["policy"],
        json!({"maxPayload": 65536, "maxBufferedBytes": 131072, "tickIntervalMs": 5000})
    );

    // The chat completions endpoints are off in this config; the WebSocket works anyway,
    // and plain HTTP on the same port is unaffected.
    let res = ws.call("health", json!({})).await;
    assert_eq!(res["payload"]["ok"], true, "{res}");
    let resp = http_client().get(p.http_url("/healthz")).send().await.expect("healthz");
    assert_eq!(resp.status(), 200);
    let resp = http_client().get(p.http_url("/v1/models")).send().await.expect("models");
    assert_eq!(resp.status(), 404);
    // A request with only a stray `Upgrade` header is plain HTTP.
    let resp = http_client()
        .get(p.http_url("/healthz"))
        .header("upgrade", "websocket")
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), 200);
    ws.close().await;
}

#[tokio::test]
async fn bad_auth_is_unauthorized_then_closed() {
    let p = pair(|c| c).await;
    for auth in [json!({"token": "wrong"}), json!({}), json!({"password": TOKEN}), Value::Null] {
        let mut ws = WsClient::open(p.addr()).await;
        ws.next_json().await; // challenge
        let mut params = connect_params(auth.clone());
        if auth.is_null() {
            params.as_object_mut().unwrap().remove("auth");
        }
        let res = ws.send_connect(params).await;
        assert_error(&res, "UNAUTHORIZED");
        assert_eq!(res["id"], "connect-1");
        assert_eq!(res["error"]["message"], "Unauthorized");
        assert_eq!(ws.expect_end(T).await, Ending::Closed(1008), "auth {auth}");
    }
}

#[tokio::test]
async fn bad_first_frames_are_invalid_request_then_closed() {
    let p = pair(|c| c).await;
    let cases: Vec<(Message, Value, &str)> = vec![
        (Message::text("not json"), Value::Null, "JSON"),
        (Message::text(r#"{"type":"req","id":"h1","method":"health"}"#), json!("h1"), "connect"),
        (Message::binary(vec![1u8, 2, 3]), Value::Null, "text"),
        (
            Message::text(
                json!({"type":"req","id":"c","method":"connect","params":{"maxProtocol":4}}).to_string(),
            ),
            json!("c"),
            "minProtocol",
        ),
        (
            Message::text(
                json!({"type":"req","id":"c","method":"connect",
                       "params":{"minProtocol":1,"maxProtocol":3,"auth":{"token":TOKEN}}})
                .to_string(),
            ),
            json!("c"),
            "Protocol mismatch",
        ),
        (
            Message::text(
                json!({"type":"req","id":"c","method":"connect",
                       "params":{"minProtocol":4,"maxProtocol":4,"client":"x","auth":{"token":TOKEN}}})
                .to_string(),
            ),
            json!("c"),
            "client",
        ),
    ];
    for (frame, id, needle) in cases {
        let mut ws = WsClient::open(p.addr()).await;
        ws.next_json().await; // challenge
        ws.try_send(frame.clone()).await.expect("send");
        let res = ws.next_json().await;
        assert_error(&res, "INVALID_REQUEST");
        assert_eq!(res["id"], id, "{frame:?}: {res}");
        assert!(res["error"]["message"].as_str().unwrap().contains(needle), "{frame:?}: {res}");
        assert_eq!(ws.expect_end(T).await, Ending::Closed(1008), "{frame:?}");
    }

    // Over 64 KiB before connect (though under maxPayload): 1009, no reply.
    let mut ws = WsClient::open(p.addr()).await;
    ws.next_json().await;
    ws.send_text("x".repeat(70 * 1024)).await;
    assert_eq!(ws.expect_end(T).await, Ending::Closed(1009));

    // Protocol ranges that include 4 are fine.
    let mut ws = WsClient::open(p.addr()).await;
    ws.next_json().await;
    let mut params = connect_params(json!({"token": TOKEN}));
    params["minProtocol"] = json!(3);
    params["maxProtocol"] = json!(9);
    let res = ws.send_connect(params).await;
    assert_eq!(res["payload"]["protocol"], 4, "{res}");
}

#[tokio::test]
async fn password_mode_checks_the_password_field() {
    let p = pair(|c| c.set("gateway.auth", json!({"mode": "password", "password": "s3cret-pw"}))).await;
    let (mut ws, _) = WsClient::connect(p.addr(), json!({"password": "s3cret-pw"})).await;
    assert_eq!(ws.call("health", json!({})).await["ok"], true);

    let mut ws = WsClient::open(p.addr()).await;
    ws.next_json().await;
    let res = ws.send_connect(connect_params(json!({"token": "s3cret-pw"}))).await;
    assert_error(&res, "UNAUTHORIZED");
    assert_eq!(ws.expect_end(T).await, Ending::Closed(1008));

    let mut ws = WsClient::open(p.addr()).await;
    ws.next_json().await;
    let res = ws.send_connect(connect_params(json!({"password": "nope"}))).await;
    assert_error(&res, "UNAUTHORIZED");
}

#[tokio::test]
async fn failed_attempts_lock_out_over_ws_and_http_alike() {
    let p = pair(|c| {
        c.enable_chat_completions().set(
            "gateway.auth.rateLimit",
            json!({"maxAttempts": 2, "windowMs": 60000, "lockoutMs": 60000, "exemptLoopback": false}),
        )
    })
    .await;
    for _ in 0..2 {
        let mut ws = WsClient::open(p.addr()).await;
        ws.next_json().await;
        assert_error(&ws.send_connect(connect_params(json!({"token": "bad"}))).await, "UNAUTHORIZED");
    }
    // Locked out: the right token is refused too, with a retry hint.
    let mut ws = WsClient::open(p.addr()).await;
    ws.next_json().await;
    let res = ws.send_connect(connect_params(json!({"token": TOKEN}))).await;
    assert_error(&res, "RATE_LIMITED");
    assert_eq!(res["error"]["retryable"], true, "{res}");
    let after = res["error"]["retryAfterMs"].as_u64().expect("retryAfterMs");
    assert!(after > 0 && after <= 60_000, "{res}");
    assert_eq!(ws.expect_end(T).await, Ending::Closed(1008));
    // The same limiter guards HTTP.
    let resp = http_client().get(p.http_url("/v1/models")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
}

#[tokio::test]
async fn a_client_that_never_connects_is_closed_after_the_handshake_timeout() {
    let p = pair(|c| c.set("gateway.ws.handshakeTimeoutMs", json!(300))).await;
    let started = Instant::now();
    let mut ws = WsClient::open(p.addr()).await;
    assert_eq!(ws.next_json().await["event"], "connect.challenge");
    assert_eq!(ws.expect_end(T).await, Ending::Closed(1008));
    assert!(started.elapsed() >= Duration::from_millis(300));
}

// ---------------------------------------------------------------------------
// Methods

#[tokio::test]
async fn methods_answer_and_bad_requests_keep_the_connection() {
    let mut p = pair(|c| c.agent(json!({"id": "main", "default": true})).agent(json!({"id": "beta"}))).await;
    let mut ws = p.client().await;

    let res = ws.call("health", Value::Null).await;
    assert_eq!(res["ok"], true);
    assert_eq!(res["payload"]["ok"], true);
    assert_eq!(res["payload"]["agentService"], "serving");
    assert!(res["payload"]["ts"].as_u64().is_some());

    let res = ws.call("models.list", json!({})).await;
    let ids: Vec<&str> =
        res["payload"]["models"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["openclaw", "openclaw/default", "openclaw/main", "openclaw/beta"]);
    assert_eq!(
        res["payload"]["models"][0],
        json!({"id": "openclaw", "object": "model", "owned_by": "openclaw"})
    );

    let res = ws.call("agents.list", json!({})).await;
    assert_eq!(res["payload"]["defaultId"], "main");
    assert_eq!(res["payload"]["agents"][0], json!({"id": "main", "model": "mock/gpt-mock", "default": true}));
    assert_eq!(res["payload"]["agents"][1]["id"], "beta");
    assert_eq!(res["payload"]["agents"][1]["default"], false);

    let res = ws.call("sessions.list", json!({})).await;
    assert_eq!(res["payload"], json!({"sessions": []}));

    // Unknown method, bad params: INVALID_REQUEST with the request's id.
    let res = ws.call("no.such.method", json!({})).await;
    assert_error(&res, "INVALID_REQUEST");
    assert!(res["error"]["message"].as_str().unwrap().contains("no.such.method"));
    let bad: [(&str, Value, &str); 9] = [
        ("chat.send", json!({"sessionKey": "s", "idempotencyKey": "k"}), "message"),
        ("chat.send", json!({"sessionKey": "s", "message": 5, "idempotencyKey": "k"}), "invalid type"),
        ("chat.send", json!({"sessionKey": "s", "message": "  ", "idempotencyKey": "k"}), "message"),
        ("chat.send", json!({"sessionKey": "cron:x", "message": "hi", "idempotencyKey": "k"}), "sessionKey"),
        ("chat.send", json!({"sessionKey": "s", "message": "hi", "idempotencyKey": ""}), "idempotencyKey"),
        ("chat.send", json!([1, 2]), "object"),
        ("chat.history", json!({"sessionKey": "s", "limit": 0}), "limit"),
        ("chat.history", json!({}), "sessionKey"),
        ("sessions.list", json!({"agentId": "a:b"}), "agentId"),
    ];
    for (method, params, needle) in bad {
        let res = ws.call(method, params.clone()).await;
        assert_error(&res, "INVALID_REQUEST");
        assert!(res["error"]["message"].as_str().unwrap().contains(needle), "{method} {params}: {res}");
    }
    assert_eq!(p.mock.request_count(), 0, "no bad send reached the upstream");

    // Garbage frames: INVALID_REQUEST with id null, and the connection stays usable.
    for garbage in ["{{{", "[]", r#"{"type":"req","method":"health"}"#, r#"{"type":"event","id":"e"}"#] {
        ws.send_text(garbage).await;
        let res = ws.next_json().await;
        assert_error(&res, "INVALID_REQUEST");
        if garbage.contains(r#""id":"e""#) {
            assert_eq!(res["id"], "e");
        } else {
            assert_eq!(res["id"], Value::Null, "{garbage}");
        }
    }
    ws.try_send(Message::binary(vec![0u8; 16])).await.unwrap();
    assert_error(&ws.next_json().await, "INVALID_REQUEST");
    ws.send_json(&json!({"type": "req", "id": 42, "method": "health"})).await;
    let res = ws.next_json().await;
    assert_eq!(res["id"], 42);
    assert_eq!(res["ok"], true);
    // A second connect on a connected socket is refused.
    assert_error(&ws.call("connect", connect_params(json!({"token": TOKEN}))).await, "INVALID_REQUEST");

    // agent-svc down: health says so, calls are UNAVAILABLE and retryable, a send
    // is accepted and its run ends with an error event.
    p.svc.stop().await;
    let res = ws.call("health", json!({})).await;
    assert_eq!(res["payload"]["ok"], false, "{res}");
    assert_eq!(res["payload"]["agentService"], "unavailable");
    let res = ws.call("agents.list", json!({})).await;
    assert_error(&res, "UNAVAILABLE");
    assert_eq!(res["error"]["retryable"], true);
    let run = start_chat(&mut ws, send_params("down", "hi", "k-down")).await;
    let events = ws.chat_run(&run).await;
    let last = events.last().unwrap();
    assert_eq!(last["state"], "error", "{events:?}");
    assert_eq!(last["errorCode"], "UNAVAILABLE");
    assert!(last["errorMessage"].as_str().is_some_and(|m| !m.is_empty()));
}

// ---------------------------------------------------------------------------
// chat.send / chat.history

#[tokio::test]
async fn chat_send_streams_deltas_that_add_up_to_the_final_message() {
    let p = pair(|c| c).await;
    p.mock.push(Behavior::chunks(["Hel", "lo ", "wor", "ld", "!"]).with_delay(Duration::from_millis(150)));
    let mut ws = p.client().await;
    let run = start_chat(&mut ws, send_params("stream-test", "say hello", "k1")).await;
    let events = ws.chat_run(&run).await;

    let (last, deltas) = events.split_last().unwrap();
    assert_eq!(last["state"], "final", "{events:?}");
    assert!(deltas.len() >= 2, "expected several deltas: {events:?}");
    let mut so_far = String::new();
    for d in deltas {
        assert_eq!(d["state"], "delta");
        so_far.push_str(d["deltaText"].as_str().expect("deltaText"));
        assert_eq!(message_text(d), so_far, "delta message is the cumulative text");
        assert_eq!(d["message"]["role"], "assistant");
        assert_eq!(d["message"]["content"][0]["type"], "text");
    }
    assert_eq!(delta_text(&events), "Hello world!");
    assert_eq!(message_text(last), "Hello world!");
    assert_eq!(last["stopReason"], "stop");
    assert_eq!(last["usage"], json!({"promptTokens": 11, "completionTokens": 7, "totalTokens": 18}));
    assert_eq!(last["model"], "mock/gpt-mock");
    for e in &events {
        assert_eq!(e["runId"], run.as_str());
        assert_eq!(e["sessionKey"], "stream-test");
    }
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().expect("seq")).collect();
    assert_increasing(&seqs);

    // What went upstream: the user's text, streamed, usage asked for.
    let req = p.mock.last_request().expect("upstream request");
    assert_eq!(req.last_user_text().as_deref(), Some("say hello"));
    assert!(req.stream() && req.include_usage());
    // The turn is in the session (`final` comes after it is stored).
    let h = p.history("agent:main:stream-test").await;
    let got: Vec<_> = h.iter().map(entry_text).collect();
    assert_eq!(
        got,
        [("user".into(), "say hello".into(), false), ("assistant".into(), "Hello world!".into(), false)]
    );
    assert!(h.iter().all(|e| e.run_id == run));
}

#[tokio::test]
async fn chat_history_shows_http_and_ws_turns_of_one_session() {
    let p = pair(|c| c.enable_chat_completions()).await;
    // A turn over HTTP on session key `shared` (→ agent:main:shared); the mock echoes.
    let resp = http_client()
        .post(p.http_url("/v1/chat/completions"))
        .bearer_auth(TOKEN)
        .header("x-openclaw-session-key", "shared")
        .header("content-type", "application/json")
        .body(
            json!({"model": "openclaw", "messages": [{"role": "user", "content": "from http"}]}).to_string(),
        )
        .send()
        .await
        .expect("http chat");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-openclaw-session-key"], "agent:main:shared");

    let mut ws = p.client().await;
    let run = start_chat(&mut ws, send_params("shared", "from ws", "k-shared")).await;
    let events = ws.chat_run(&run).await;
    assert_eq!(message_text(events.last().unwrap()), "from ws");
    // The WS turn continued the HTTP transcript upstream.
    let texts = p.mock.last_request().unwrap().message_texts();
    assert_eq!(
        texts,
        [
            ("user".into(), "from http".into()),
            ("assistant".into(), "from http".into()),
            ("user".into(), "from ws".into())
        ]
    );

    for key in ["shared", "agent:main:shared"] {
        let res = ws.call("chat.history", json!({"sessionKey": key})).await;
        assert_eq!(res["ok"], true, "{res}");
        let h = &res["payload"];
        assert_eq!(h["sessionKey"], "agent:main:shared");
        let msgs = h["messages"].as_array().unwrap();
        let got: Vec<(&str, &str)> = msgs
            .iter()
            .map(|m| (m["role"].as_str().unwrap(), m["content"][0]["text"].as_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("user", "from http"),
                ("assistant", "from http"),
                ("user", "from ws"),
                ("assistant", "from ws")
            ]
        );
        assert!(msgs.iter().all(|m| m["interrupted"] == false && m["timestamp"].as_i64().unwrap() > 0));
        assert_eq!(msgs[3]["runId"], run.as_str());
        assert!(msgs[0]["runId"].as_str().is_some_and(|r| !r.is_empty() && r != run));
        assert!(h.get("truncated").is_none());
    }
    let res = ws.call("chat.history", json!({"sessionKey": "shared", "limit": 1})).await;
    assert_eq!(res["payload"]["messages"].as_array().unwrap().len(), 1);
    assert_eq!(res["payload"]["messages"][0]["content"][0]["text"], "from ws");
    // An unknown session has an empty history.
    let res = ws.call("chat.history", json!({"sessionKey": "never-used"})).await;
    assert_eq!(res["payload"], json!({"sessionKey": "agent:main:never-used", "messages": []}));

    let res = ws.call("sessions.list", json!({"agentId": "main"})).await;
    let sessions = res["payload"]["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{res}");
    assert_eq!(sessions[0]["key"], "agent:main:shared");
    assert_eq!(sessions[0]["agentId"], "main");
    assert_eq!(sessions[0]["messageCount"], 4);
    assert!(sessions[0]["updatedAt"].as_i64() >= sessions[0]["createdAt"].as_i64());
}

#[tokio::test]
async fn chat_history_is_cut_to_fit_max_payload() {
    let p = pair(|c| c.set("gateway.ws.maxPayload", json!(16 * 1024))).await;
    let mut ws = p.client().await;
    // Three turns of ~5 KiB each way: the whole transcript does not fit in 16 KiB.
    for i in 0..3 {
        let text = format!("{i}{}", "y".repeat(5000));
        let run = start_chat(&mut ws, send_params("big", &text, &format!("k{i}"))).await;
        assert_eq!(ws.chat_run(&run).await.last().unwrap()["state"], "final");
    }
    let res = ws.call("chat.history", json!({"sessionKey": "big"})).await;
    assert_eq!(res["payload"]["truncated"], true, "{}", &res.to_string()[..200]);
    let msgs = res["payload"]["messages"].as_array().unwrap();
    assert!(!msgs.is_empty() && msgs.len() < 6, "{} messages", msgs.len());
    // The newest messages are the ones kept.
    assert!(msgs.last().unwrap()["content"][0]["text"].as_str().unwrap().starts_with('2'));
    assert!(res.to_string().len() <= 16 * 1024);
}

#[tokio::test]
async fn tool_calls_stream_as_delta_events_during_the_run() {
    let p = pair(|c| c).await;
    let weather = r#"{"city":"Paris","unit":"celsius"}"#;
    let time = r#"{"tz":"Europe/Paris"}"#;
    // Six fragments 150 ms apart, more than the 100 ms between deltas.
    p.mock.push(
        Behavior::tool_calls(vec![
            MockToolCall::new("call_w", "get_weather", weather),
            MockToolCall::new("call_t", "get_time", time),
        ])
        .with_delay(Duration::from_millis(150)),
    );
    let mut ws = p.client().await;
    let run = start_chat(&mut ws, send_params("tools", "weather and time?", "k-tools")).await;
    let events = ws.chat_run(&run).await;

    let (last, deltas) = events.split_last().unwrap();
    assert_eq!(last["state"], "final", "{events:?}");
    let (calls, carrying) = fold_tool_call_deltas(deltas);
    // Only the last delta can be the flush before `final`: the others came during the run.
    assert!(carrying >= 2, "tool calls were not streamed: {events:?}");
    assert!(deltas.iter().all(|d| d["deltaText"] == ""), "no text in this answer: {deltas:?}");
    let want = json!([call_json("call_w", "get_weather", weather), call_json("call_t", "get_time", time)]);
    assert_eq!(json!(calls), want);
    // `final` is as before: the complete calls.
    assert_eq!(last["message"]["toolCalls"], want);
    assert_eq!(last["stopReason"], "tool_calls");
    assert!(last.get("deltaToolCalls").is_none());
    // One `seq` per event, without gaps.
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().expect("seq")).collect();
    let first = seqs[0];
    assert_eq!(seqs, (first..first + seqs.len() as u64).collect::<Vec<_>>());
    // The turn is in the session with its calls.
    let h = p.history_with("agent:main:tools", 2).await;
    let stored = &h[1].message.as_ref().expect("message").tool_calls;
    let stored: Vec<Value> = stored.iter().map(|c| call_json(&c.id, &c.name, &c.arguments)).collect();
    assert_eq!(json!(stored), want);
}

#[tokio::test]
async fn a_tool_call_fragment_reaches_the_client_before_the_rest_is_produced() {
    let (fake, _gw, mut ws) = fake_pair().await;
    // agent-svc holds the rest of the answer until the gate opens.
    let gate = Gate::new();
    fake.push(Script::steps(vec![
        started("agent:main:held"),
        text("Looking it up."),
        tool(0, "call_a", "lookup", r#"{"q":"#),
        Step::Wait(gate.clone()),
        tool(0, "", "", r#""rust"}"#),
        tool(1, "call_b", "fetch", "{}"),
        finished("tool_calls"),
    ]));
    let run = start_chat(&mut ws, send_params("held", "look it up", "k-held")).await;
    let mut events = vec![ws.next_chat(&run).await];
    // The first delta may carry the text alone; the call comes before the gate opens.
    if events[0].get("deltaToolCalls").is_none() {
        events.push(ws.next_chat(&run).await);
    }
    assert!(!gate.is_open());
    let held = events.last().unwrap().clone();
    assert_eq!(held["state"], "delta", "{held}");
    assert_eq!(
        held["deltaToolCalls"],
        json!([{"index": 0, "id": "call_a", "name": "lookup", "arguments": r#"{"q":"#}])
    );
    assert_eq!(message_text(&held), "Looking it up.");

    gate.open();
    events.extend(ws.chat_run(&run).await);
    let (last, deltas) = events.split_last().unwrap();
    assert_eq!(delta_text(deltas), "Looking it up.");
    let (calls, _) = fold_tool_call_deltas(deltas);
    let want = json!([call_json("call_a", "lookup", r#"{"q":"rust"}"#), call_json("call_b", "fetch", "{}")]);
    assert_eq!(json!(calls), want);
    assert_eq!(last["state"], "final");
    assert_eq!(last["message"]["toolCalls"], want);
    assert_eq!(message_text(last), "Looking it up.");
}

// ---------------------------------------------------------------------------
// Concurrency and order

#[tokio::test]
async fn replies_come_back_as_they_are_ready_not_in_request_order() {
    harness::init_tracing();
    // agent-svc holds `ListAgents` back until the gate opens; `ListSessions` answers at once.
    let fake = FakeAgentSvc::start().await;
    let gate = Gate::new();
    fake.hold_list_agents(&gate);
    let config = ConfigBuilder::new().auth_token(TOKEN).build();
    let gw = Gateway::start(&config, Some(&fake.url())).await;
    let (mut ws, _) = WsClient::connect(gw.addr(), json!({"token": TOKEN})).await;
    let slow = ws.send_request("agents.list", json!({})).await;
    let fast = ws.send_request("sessions.list", json!({})).await;
    let first = ws.next_json().await;
    assert_eq!(first["id"], fast.as_str(), "the fast reply first: {first}");
    assert_eq!(first["payload"], json!({"sessions": []}));
    assert!(!gate.is_open(), "the slow request is still held");
    gate.open();
    let second = ws.next_json().await;
    assert_eq!(second["id"], slow.as_str());
    assert_eq!(second["payload"]["defaultId"], "main");
}

#[tokio::test]
async fn two_runs_stream_at_once_with_one_increasing_seq() {
    let p = pair(|c| c).await;
    p.mock.set_default(Behavior::echo_slow(Duration::from_millis(120)));
    let mut ws = p.client().await;
    let a = start_chat(&mut ws, send_params("s-a", "a1 a2 a3 a4 a5", "ka")).await;
    let b = start_chat(&mut ws, send_params("s-b", "b1 b2 b3 b4 b5", "kb")).await;
    let mut all = Vec::new();
    let mut ended = 0;
    while ended < 2 {
        let e = ws.next_event().await;
        assert_eq!(e["event"], "chat", "{e}");
        assert_eq!(e["seq"], e["payload"]["seq"], "frame and payload seq agree");
        if e["payload"]["state"] != "delta" {
            ended += 1;
        }
        all.push(e["payload"].clone());
    }
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_increasing(&seqs);
    let of = |run: &str| all.iter().filter(|e| e["runId"] == run).cloned().collect::<Vec<_>>();
    let (ea, eb) = (of(&a), of(&b));
    assert_eq!(message_text(ea.last().unwrap()), "a1 a2 a3 a4 a5");
    assert_eq!(message_text(eb.last().unwrap()), "b1 b2 b3 b4 b5");
    assert_eq!(delta_text(&ea), "a1 a2 a3 a4 a5");
    assert_eq!(delta_text(&eb), "b1 b2 b3 b4 b5");
    // The runs overlapped: some event of `b` came before the last event of `a`.
    let last_a = all.iter().rposition(|e| e["runId"] == a.as_str()).unwrap();
    let first_b = all.iter().position(|e| e["runId"] == b.as_str()).unwrap();
    assert!(first_b < last_a, "runs did not overlap: {all:?}");
}

#[tokio::test]
async fn back_to_back_sends_of_one_session_run_in_arrival_order() {
    let p = pair(|c| c).await;
    p.mock.set_default(Behavior::echo_slow(Duration::from_millis(15)));
    let mut ws = p.client().await;
    let texts: Vec<String> = (0..10).map(|i| format!("m{i} a b")).collect();
    // All ten frames go out before any reply is read.
    let mut ids = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        ids.push(ws.send_request("chat.send", send_params("ordered", text, &format!("k-order-{i}"))).await);
    }
    let mut runs = Vec::new();
    for id in &ids {
        let res = ws.reply(id).await;
        assert_eq!(res["ok"], true, "{res}");
        assert_eq!(res["payload"]["status"], "started", "{res}");
        runs.push(res["payload"]["runId"].as_str().expect("runId").to_string());
    }
    let finals = tokio::time::timeout(T * 3, async {
        let mut out = Vec::new();
        for run in &runs {
            out.push(ws.chat_run(run).await.pop().unwrap());
        }
        out
    })
    .await
    .expect("all ten runs end");
    for (last, text) in finals.iter().zip(&texts) {
        assert_eq!(last["state"], "final", "{last}");
        assert_eq!(&message_text(last), text);
    }
    let h = p.history_with("agent:main:ordered", 20).await;
    let got: Vec<_> = h.iter().map(entry_text).collect();
    let want: Vec<_> = texts
        .iter()
        .flat_map(|t| [("user".to_string(), t.clone(), false), ("assistant".to_string(), t.clone(), false)])
        .collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------
// Abort, disconnect, idempotency

#[tokio::test]
async fn chat_abort_mid_run_reaches_the_upstream() {
    let p = pair(|c| c).await;
    let words = numbered_words("w", 30);
    let (mut ws, run, first) = p.running_chat("abort-me", &words, Duration::from_millis(100)).await;

    let res = ws.call("chat.abort", json!({"sessionKey": "abort-me", "runId": run})).await;
    assert_eq!(res["payload"], json!({"ok": true, "aborted": true, "runIds": [run]}), "{res}");
    assert!(p.mock.wait_for_disconnect(T).await, "the upstream request was not cancelled");
    let mut events = vec![first];
    events.extend(ws.chat_run(&run).await);
    let last = events.last().unwrap();
    assert_eq!(last["state"], "aborted", "{events:?}");
    let partial = message_text(last);
    assert_eq!(delta_text(&events), partial);
    assert!(!partial.is_empty() && partial.len() < words.concat().len(), "{partial:?}");
    // The session keeps the partial answer, marked interrupted.
    let h = p.history_with("agent:main:abort-me", 2).await;
    assert_eq!(entry_text(&h[1]), ("assistant".into(), partial, true));

    // Abort by session key only, and with nothing running.
    p.mock.push(Behavior::chunks(words).with_delay(Duration::from_millis(100)));
    let run2 = start_chat(&mut ws, send_params("abort-me", "again", "k-abort-2")).await;
    ws.next_chat(&run2).await;
    let res = ws.call("chat.abort", json!({"sessionKey": "abort-me"})).await;
    assert_eq!(res["payload"], json!({"ok": true, "aborted": true, "runIds": [run2]}), "{res}");
    assert_eq!(ws.chat_run(&run2).await.last().unwrap()["state"], "aborted");
    let res = ws.call("chat.abort", json!({"sessionKey": "abort-me"})).await;
    assert_eq!(res["payload"], json!({"ok": true, "aborted": false, "runIds": []}));
}

#[tokio::test]
async fn chat_abort_before_agent_svc_started_the_run() {
    let p = pair(|c| c).await;
    // The first turn holds the session, so the second waits in agent-svc's queue
    // (and, should it reach the upstream, would answer slowly).
    let gate = Gate::new();
    p.mock.push(Behavior::text("first").gated(&gate));
    p.mock.push(Behavior::text("second").delayed(Duration::from_secs(5)));
    let mut ws = p.client().await;
    let first = start_chat(&mut ws, send_params("queued", "one", "q1")).await;
    assert!(p.mock.wait_for_requests(1, T).await);
    let second = start_chat(&mut ws, send_params("queued", "two", "q2")).await;
    let res = ws.call("chat.abort", json!({"sessionKey": "queued", "runId": second})).await;
    assert_eq!(res["payload"], json!({"ok": true, "aborted": true, "runIds": [second]}), "{res}");
    // agent-svc drops a turn aborted while queued (its `aborted` may come before
    // the first run's `final`); the first turn is unaffected.
    assert_eq!(ws.chat_run(&second).await.last().unwrap()["state"], "aborted");
    gate.open();
    assert_eq!(ws.chat_run(&first).await.last().unwrap()["state"], "final");
    let h = p.history_with("agent:main:queued", 2).await;
    let got: Vec<_> = h.iter().map(entry_text).collect();
    assert_eq!(got, [("user".into(), "one".into(), false), ("assistant".into(), "first".into(), false)]);
    assert_eq!(p.mock.request_count(), 1, "the aborted turn never reached the upstream");
}

#[tokio::test]
async fn chat_abort_by_session_key_reaches_a_run_waiting_in_the_gateway() {
    let (fake, _gw, mut ws) = fake_pair().await;
    // agent-svc holds the first run's `started` back, so the second run of the
    // session waits in the gateway for it (turns keep their order).
    let gate = Gate::new();
    fake.push(Script::steps(vec![
        Step::Wait(gate.clone()),
        started("agent:main:waiting"),
        text("one"),
        finished("stop"),
    ]));
    let first = start_chat(&mut ws, send_params("waiting", "one", "w1")).await;
    assert!(fake.wait_for_requests(1, T).await);
    let second = start_chat(&mut ws, send_params("waiting", "two", "w2")).await;

    let res = ws.call("chat.abort", json!({"sessionKey": "waiting"})).await;
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(res["payload"]["aborted"], true, "{res}");
    let mut ids: Vec<&str> =
        res["payload"]["runIds"].as_array().expect("runIds").iter().filter_map(Value::as_str).collect();
    ids.sort_unstable();
    let mut want = [first.as_str(), second.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want, "both runs agent-svc does not know yet: {res}");
    // The waiting run ends now, while its predecessor is still held, and never
    // reaches agent-svc.
    let events = ws.chat_run(&second).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["state"], "aborted");
    assert!(events[0].get("message").is_none(), "{events:?}");
    assert!(!gate.is_open());
    assert_eq!(fake.requests().len(), 1);
    // It keeps its place, though: a later run of the session still waits for
    // the first to start.
    let third = start_chat(&mut ws, send_params("waiting", "three", "w3")).await;
    assert!(!fake.wait_for_requests(2, Duration::from_millis(300)).await, "the third run overtook the first");

    gate.open();
    // The first run's abort goes to agent-svc as soon as it has started (the
    // fake aborts nothing, so that run then completes).
    ws.chat_run(&first).await;
    let aborts = fake.aborts();
    assert!(aborts.iter().any(|a| a.session_key == "agent:main:waiting"), "{aborts:?}");
    assert!(aborts.iter().any(|a| a.run_id == first), "{aborts:?}");
    assert_eq!(ws.chat_run(&third).await.last().unwrap()["state"], "final");
    let calls: Vec<String> = fake.requests().iter().map(|(r, _)| r.run_id.clone()).collect();
    assert_eq!(calls, [first, third]);
}

#[tokio::test]
async fn closing_the_socket_does_not_abort_the_run() {
    let p = pair(|c| c).await;
    for (i, graceful) in [(0, true), (1, false)] {
        let pieces: Vec<String> = (0..6).map(|j| format!("p{i}{j} ")).collect();
        let key = format!("survive-{i}");
        let (ws, _, _) = p.running_chat(&key, &pieces, Duration::from_millis(120)).await;
        if graceful {
            ws.close().await;
        } else {
            ws.drop_connection();
        }
        // The turn completes and lands in the session; the upstream never saw a disconnect.
        let full = pieces.concat();
        let h = p.history_with(&format!("agent:main:{key}"), 2).await;
        assert_eq!(entry_text(&h[1]), ("assistant".into(), full.clone(), false));
        assert_eq!(p.mock.disconnects(), 0);
        // A new connection sees it too.
        let mut ws = p.client().await;
        let res = ws.call("chat.history", json!({"sessionKey": key})).await;
        assert_eq!(res["payload"]["messages"][1]["content"][0]["text"], full.as_str());
        assert_eq!(res["payload"]["messages"][1]["interrupted"], false);
    }
}

#[tokio::test]
async fn a_resent_chat_send_returns_the_same_run() {
    let p = pair(|c| c).await;
    let gate = Gate::new();
    p.mock.push(Behavior::text("only once").gated(&gate));
    let mut a = p.client().await;
    let mut b = p.client().await;
    let run = start_chat(&mut a, send_params("idem", "hello", "same-key")).await;

    // Resent on the same connection and on another one while running.
    for ws in [&mut a, &mut b] {
        let res = ws.call("chat.send", send_params("idem", "hello", "same-key")).await;
        assert_eq!(res["payload"], json!({"runId": run, "status": "started", "deduplicated": true}), "{res}");
    }
    assert!(p.mock.wait_for_requests(1, T).await);
    gate.open();
    // Both connections get the run's events; `a` gets them once.
    let ea = a.chat_run(&run).await;
    assert_eq!(message_text(ea.last().unwrap()), "only once");
    assert_eq!(ea.iter().filter(|e| e["state"] == "final").count(), 1);
    let eb = b.chat_run(&run).await;
    assert_eq!(eb.last().unwrap()["state"], "final");
    // No duplicate events follow.
    let extra = a.call("health", json!({})).await;
    assert_eq!(extra["ok"], true);
    assert!(a
        .next_frame_within(Duration::from_millis(200))
        .await
        .is_none_or(|f| !matches!(f, Frame::Json(_))));

    // After the end, a resend reports the final state and starts nothing.
    let res = b.call("chat.send", send_params("idem", "hello", "same-key")).await;
    assert_eq!(res["payload"], json!({"runId": run, "status": "final", "deduplicated": true}));
    assert_eq!(p.mock.request_count(), 1);
    let h = p.history("agent:main:idem").await;
    assert_eq!(h.len(), 2, "one turn only");
    // Another key is another run.
    let other = start_chat(&mut a, send_params("idem", "hello", "other-key")).await;
    assert_ne!(other, run);
    assert_eq!(a.chat_run(&other).await.last().unwrap()["state"], "final");
    assert_eq!(p.mock.request_count(), 2);
}

// ---------------------------------------------------------------------------
// Limits, keepalive, shutdown

#[tokio::test]
async fn frames_over_max_payload_close_with_1009() {
    let p = pair(|c| c.set("gateway.ws.maxPayload", json!(32 * 1024))).await;
    // Just under the limit: an ordinary bad request, the connection stays.
    let mut ws = p.client().await;
    ws.send_text("z".repeat(30 * 1024)).await;
    assert_error(&ws.next_json().await, "INVALID_REQUEST");
    assert_eq!(ws.call("health", json!({})).await["ok"], true);
    // Over it: closed with 1009.
    ws.send_text(format!(
        r#"{{"type":"req","id":"big","method":"health","params":{{"x":"{}"}}}}"#,
        "z".repeat(40 * 1024)
    ))
    .await;
    assert_eq!(ws.expect_end(T).await, Ending::Closed(1009));

    // Far over it (never buffered): the connection ends promptly, 1009 or a reset
    // while the client is still writing.
    let mut ws = p.client().await;
    let send = tokio::time::timeout(T, ws.try_send(Message::text("q".repeat(8 * 1024 * 1024)))).await;
    let ending = ws.read_to_end(T).await.map(|(e, _)| e);
    assert!(
        matches!(ending, Some(Ending::Closed(1009)) | Some(Ending::Dropped(_))),
        "send {send:?}, ending {ending:?}"
    );
    // The gateway is fine.
    let mut ws = p.client().await;
    assert_eq!(ws.call("health", json!({})).await["ok"], true);
}

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected() {
    let p = pair(|c| c.set("gateway.ws.maxBufferedBytes", json!(8192))).await;
    // ~4 MB of answer in 2 KiB pieces: the `delta`s (each with the cumulative text)
    // amount to far more than the socket buffers hold.
    let piece = "x".repeat(2048);
    p.mock.push(Behavior::chunks(vec![piece; 2000]).with_delay(Duration::from_millis(1)));
    let mut ws = p.client().await;
    ws.send_json(&json!({"type": "req", "id": "s", "method": "chat.send",
                         "params": send_params("flood", "go", "k-flood")}))
        .await;
    // Not reading while the run goes on; it completes in the session regardless.
    let h = p.history_with("agent:main:flood", 2).await;
    assert_eq!(text_of(h[1].message.as_ref().unwrap()).len(), 2000 * 2048);
    // Now read: the server has closed this connection; what was in the socket
    // buffers comes out, then the end, and never the `final` event.
    assert_closed_before_final(ws, &p).await;
}

#[tokio::test]
async fn a_client_that_never_reads_streamed_tool_calls_is_disconnected() {
    let p = pair(|c| c.set("gateway.ws.maxBufferedBytes", json!(8192))).await;
    // One call whose ~4 MB of arguments come in 2000 fragments: the `delta`s
    // (each with the cumulative call) amount to far more than the socket buffers hold.
    let args = format!(r#"{{"data":"{}"}}"#, "x".repeat(2000 * 2048));
    p.mock.push(
        Behavior::tool_call("call_big", "store", &args)
            .with_fragments(2000)
            .with_delay(Duration::from_millis(1)),
    );
    let mut ws = p.client().await;
    ws.send_json(&json!({"type": "req", "id": "s", "method": "chat.send",
                         "params": send_params("tool-flood", "go", "k-tool-flood")}))
        .await;
    // Not reading while the run goes on; it completes in the session regardless.
    let h = p.history_with("agent:main:tool-flood", 2).await;
    let calls = &h[1].message.as_ref().expect("message").tool_calls;
    assert_eq!(calls.iter().map(|c| c.arguments.len()).collect::<Vec<_>>(), [args.len()]);
    // The server has closed this connection: what the socket buffers held comes
    // out, then the end, and never the `final` event.
    assert_closed_before_final(ws, &p).await;
}

#[tokio::test]
async fn keepalive_pings_and_closes_a_silent_client() {
    let p = pair(|c| c.set("gateway.ws.tickIntervalMs", json!(200))).await;
    let mut ws = p.client().await;
    // Reading (so pings are answered) for a while keeps the connection.
    let until = Instant::now() + Duration::from_millis(900);
    let mut ticks = Vec::new();
    while let Some(f) = ws.next_frame_within(until.saturating_duration_since(Instant::now())).await {
        match f {
            Frame::Json(v) if v["event"] == "tick" => ticks.push(v["seq"].as_u64().unwrap()),
            Frame::Ping | Frame::Json(_) | Frame::Pong => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(ws.pings >= 2, "pings: {}", ws.pings);
    assert!(ticks.len() >= 2, "ticks: {ticks:?}");
    assert_increasing(&ticks);
    assert_eq!(ws.call("health", json!({})).await["ok"], true);
    // Not reading (so not answering pings): closed after twice the interval.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(ws.expect_end(T).await, Ending::Closed(1001));
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1012_and_lets_their_runs_finish() {
    let p = pair(|c| c).await;
    let pieces = numbered_words("t", 8);
    let (mut ws, _, _) = p.running_chat("at-shutdown", &pieces, Duration::from_millis(100)).await;
    let Pair { mut gw, mock, svc } = p;
    let stop = tokio::spawn(async move { gw.stop_with_grace(Duration::from_secs(5)).await });
    assert_eq!(ws.expect_end(T).await, Ending::Closed(1012));
    tokio::time::timeout(T, stop).await.expect("shutdown in time").expect("shutdown");
    // When shutdown returned, the run had finished and was stored whole.
    let h = svc.history("agent:main:at-shutdown").await.expect("history");
    assert_eq!(h.len(), 2);
    assert_eq!(entry_text(&h[1]), ("assistant".into(), pieces.concat(), false));
    assert_eq!(mock.disconnects(), 0);
}

// ---------------------------------------------------------------------------
// HTTP and WebSocket on one port

#[tokio::test]
async fn http_and_websocket_traffic_share_the_port() {
    let p = pair(|c| {
        c.enable_chat_completions()
            .agent(json!({"id": "main", "default": true}))
            .agent(json!({"id": "slow", "model": "mock/slow-model"}))
    })
    .await;
    let words = numbered_words("s", 30);
    p.mock
        .set_for_model("slow-model", Behavior::chunks(words.clone()).with_delay(Duration::from_millis(100)));
    let mut ws = p.client().await;
    let mut params = send_params("streamer", "stream please", "k-share");
    params["agentId"] = json!("slow");
    let run = start_chat(&mut ws, params).await;
    assert_eq!(ws.next_chat(&run).await["state"], "delta");

    // The WebSocket keeps streaming in its own task while HTTP requests are served.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            let e = ws.next_chat(&run).await;
            let end = e["state"] != "delta";
            got.push((Instant::now(), e));
            if end {
                return got;
            }
        }
    });
    let client = http_client();
    let calls = (0..24).map(|i| {
        let client = client.clone();
        let url = p.http_url("/v1/chat/completions");
        async move {
            let r = client
                .post(url)
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(json!({"model": "openclaw", "messages": [{"role": "user", "content": format!("req {i}")}]}).to_string())
                .send()
                .await
                .expect("http");
            let status = r.status();
            let body: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json body");
            (i, status, body)
        }
    });
    let results = join_all(calls).await;
    let http_done = Instant::now();
    for (i, status, body) in results {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], format!("req {i}"));
    }
    let events = reader.await.expect("reader");
    let (final_at, last) = events.last().unwrap();
    assert_eq!(last["state"], "final");
    assert_eq!(message_text(last), words.concat());
    // The stream was live on both sides of the HTTP burst, and did not end before it.
    assert!(*final_at > http_done, "the WebSocket run ended before the HTTP burst finished");
    assert!(events.iter().any(|(at, e)| *at > http_done && e["state"] == "delta"));
}
