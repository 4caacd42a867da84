//! gateway-http alone, over real sockets, in front of a scripted fake agent-svc
//! ([`e2e::fake`]): the order of checks, response shapes, SSE, how gRPC
//! statuses map to HTTP, what crosses the gRPC hop, keep-alives, cancellation
//! and shutdown, each with agent-svc doing exactly what the test scripted.

use e2e::fake::{agent_status, finished, started, text, tool, FakeAgentSvc, Script, Step};
use e2e::gateway::{json_body, open, send, Gateway};
use e2e::harness::{self, eventually, ConfigBuilder};
use e2e::prelude::give_up_when;
use e2e::sse::{read_stream, SseFrame, SseReader};
use serde_json::{json, Value};
use std::time::Duration;

const TOKEN: &str = "t0ken";
/// Bound for things that should take milliseconds.
const T: Duration = Duration::from_secs(10);

/// Chat completions on with a `max_body`-byte cap, token auth, and a lockout
/// after 3 wrong secrets that loopback is not exempt from.
fn config(max_body: u64) -> ConfigBuilder {
    ConfigBuilder::new()
        .enable_chat_completions()
        .auth_token(TOKEN)
        .set("gateway.http.endpoints.chatCompletions.maxBodyBytes", json!(max_body))
        .set(
            "gateway.auth.rateLimit",
            json!({"maxAttempts": 3, "windowMs": 60000, "lockoutMs": 60000, "exemptLoopback": false}),
        )
}

/// A gateway started with `cfg` in front of `fake`, sending the token.
async fn gateway(fake: &FakeAgentSvc, cfg: ConfigBuilder) -> Gateway {
    harness::init_tracing();
    Gateway::start(&cfg.build(), Some(&fake.url())).await.with_bearer(TOKEN)
}

fn body(stream: bool) -> Value {
    json!({"model": "openclaw/beta", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// The frame of an SSE event with this data.
fn data(d: &str) -> SseFrame {
    SseFrame::Data(d.to_string())
}

#[tokio::test]
async fn order_of_checks() {
    let fake = FakeAgentSvc::start().await;
    let gw = gateway(&fake, config(1024)).await;
    let chat = "/v1/chat/completions";

    // Method before auth.
    let r = send(gw.get(chat)).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(r.text, "Method Not Allowed");
    let r = send(gw.post("/v1/models")).await;
    assert_eq!(r.status, 405);

    // Auth before body size and JSON.
    let r = send(gw.post(chat).body("x".repeat(5000))).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), json!({"error": {"message": "Unauthorized", "type": "unauthorized"}}));
    let r = send(gw.post(chat).header("authorization", "Bearer nope").body("{")).await;
    assert_eq!(r.status, 401);

    // A JSON content type after auth, before the body is read (a browser's
    // "simple" cross-site request cannot send one).
    for ct in
        [None, Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data")]
    {
        let mut rb = gw.post(chat).bearer_auth(TOKEN).body("x".repeat(5000));
        if let Some(ct) = ct {
            rb = rb.header("content-type", ct);
        }
        let r = send(rb).await;
        assert_eq!(r.status, 415, "{ct:?}");
        assert_eq!(r.json()["error"]["code"], "unsupported_media_type");
    }
    let json_post =
        || gw.post(chat).bearer_auth(TOKEN).header("content-type", "application/json; charset=utf-8");

    // Body size (declared) before JSON.
    let r = send(json_post().body("x".repeat(5000))).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    let v = r.json();
    assert_eq!(v["error"]["message"], "Payload too large");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // Body size without Content-Length (chunked): the read is capped.
    let chunks = futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 200])));
    let r = send(json_post().body(reqwest::Body::wrap_stream(chunks))).await;
    assert_eq!(r.status, 413);

    // JSON, then semantics.
    let r = send(json_post().body("{\"messages\": [")).await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("line 1"), "{v}");
    let r =
        send(gw.post(chat).bearer_auth(TOKEN).header("content-type", "application/vnd.api+json").body("[1]"))
            .await;
    assert_eq!(r.status, 400);
    let r = send(gw.chat(&json!({"model": "gpt-4", "messages": []}))).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "model");
    let r =
        send(gw.chat(&json!({"temperature": "hot", "messages": [{"role": "user", "content": "x"}]}))).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "temperature");

    // Unknown route.
    let r = send(gw.get("/nope")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text, "Not Found");
    // Nothing above reached agent-svc.
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn lockout_after_wrong_secrets() {
    let fake = FakeAgentSvc::start().await;
    let gw = gateway(&fake, config(1024)).await;
    for _ in 0..3 {
        assert_eq!(send(gw.get("/v1/models").bearer_auth("wrong")).await.status, 401);
    }
    let r = send(gw.authed_get("/v1/models")).await;
    assert_eq!(r.status, 429);
    let secs: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After seconds");
    assert!((59..=60).contains(&secs), "{secs}");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn disabled_endpoints_are_404() {
    let fake = FakeAgentSvc::start().await;
    let cfg = config(1024).set("gateway.http.endpoints.chatCompletions.enabled", json!(false));
    let gw = gateway(&fake, cfg).await;
    for (method, path) in [
        (reqwest::Method::POST, "/v1/chat/completions"),
        (reqwest::Method::GET, "/v1/chat/completions"),
        (reqwest::Method::GET, "/v1/models"),
        (reqwest::Method::GET, "/v1/models/openclaw"),
    ] {
        for auth in [false, true] {
            let mut rb = gw.request(method.clone(), path);
            if auth {
                rb = rb.bearer_auth(TOKEN);
            }
            let r = send(rb).await;
            assert_eq!(r.status, 404, "{method} {path}");
            assert_eq!(r.text, "Not Found");
        }
    }
    assert_eq!(send(gw.get("/healthz")).await.status, 200);
}

#[tokio::test]
async fn non_streaming_answer() {
    let fake = FakeAgentSvc::start().await;
    fake.push(Script::steps(vec![
        started("agent:beta:openai:abc"),
        text("Hel"),
        text("lo"),
        finished("stop"),
    ]));
    let gw = gateway(&fake, config(1 << 20)).await;
    let r = send(
        gw.chat(&body(false))
            .header("x-request-id", "req-42")
            .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .header("x-openclaw-model", "echo/echo"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-openclaw-session-key"), Some("agent:beta:openai:abc"));
    assert_eq!(r.header("x-request-id"), Some("req-42"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert!(v["id"].as_str().unwrap_or_default().starts_with("chatcmpl_"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "openclaw/beta");
    assert_eq!(v["choices"][0]["message"], json!({"role": "assistant", "content": "Hello"}));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"], json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}));

    let (req, md) = fake.last_request();
    assert_eq!(req.agent_id, "beta");
    assert_eq!(req.channel, "openai");
    assert_eq!(req.model.as_deref(), Some("echo/echo"));
    assert_eq!(md.get("x-request-id").and_then(|v| v.to_str().ok()), Some("req-42"));
    assert_eq!(
        md.get("traceparent").and_then(|v| v.to_str().ok()),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
}

#[tokio::test]
async fn streaming_text_and_tool_calls() {
    let fake = FakeAgentSvc::start().await;
    fake.push(Script::steps(vec![
        started("agent:main:openai-user:alice"),
        text("Let me look."),
        tool(0, "", "get_weather", "{\"city\":"),
        tool(0, "", "", "\"Paris\"}"),
        finished("tool_calls"),
    ]));
    let gw = gateway(&fake, config(1 << 20)).await;
    let mut b = body(true);
    b["stream_options"] = json!({"include_usage": true});
    b["user"] = json!("alice");
    let r = read_stream(gw.chat(&b)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("x-accel-buffering"), Some("no"));
    assert_eq!(r.header("x-openclaw-session-key"), Some("agent:main:openai-user:alice"));
    assert!(r.raw.ends_with("\n\n"), "the body ends with a blank line: {:?}", r.raw);
    assert_eq!(r.frames.last(), Some(&data("[DONE]")));
    let chunks = r.chunks();
    assert_eq!(chunks.len(), 6, "{chunks:#?}");
    let id = chunks[0]["id"].as_str().expect("id");
    for c in &chunks {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "openclaw/beta");
    }
    assert_eq!(
        chunks[0]["choices"][0],
        json!({"index": 0, "delta": {"role": "assistant"}, "finish_reason": null})
    );
    assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content": "Let me look."}));
    assert_eq!(
        chunks[2]["choices"][0]["delta"]["tool_calls"][0],
        json!({"index": 0, "id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":"}})
    );
    assert_eq!(
        chunks[3]["choices"][0]["delta"]["tool_calls"][0],
        json!({"index": 0, "function": {"arguments": "\"Paris\"}"}})
    );
    assert_eq!(chunks[4]["choices"][0], json!({"index": 0, "delta": {}, "finish_reason": "tool_calls"}));
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(chunks[5]["usage"]["total_tokens"], 10);
    for c in &chunks[..5] {
        assert!(c.get("usage").is_none());
    }
    let (req, _) = fake.last_request();
    assert!(req.include_usage);
    assert_eq!(req.session, Some(services::proto::agent_run_request::Session::User("alice".into())));
}

#[tokio::test]
async fn errors_before_the_first_token_keep_their_status() {
    let fake = FakeAgentSvc::start().await;
    // Rejected before the stream opens.
    fake.push(Script::refuse(agent_status(
        tonic::Code::InvalidArgument,
        "`temperature` must be between 0 and 2.",
        "invalid_request_error",
        None,
        Some("temperature"),
    )));
    // Failed after `started` but before any token (e.g. session queue full, provider 429).
    fake.push(Script::steps(vec![
        started("k"),
        Step::Error(agent_status(
            tonic::Code::ResourceExhausted,
            "Too many requests queued.",
            "rate_limit_error",
            Some("session_busy"),
            None,
        )),
    ]));
    fake.push(Script::steps(vec![
        started("k"),
        Step::Error(agent_status(
            tonic::Code::DeadlineExceeded,
            "Run timed out.",
            "api_error",
            Some("timeout"),
            None,
        )),
    ]));
    // Stream ends without `finished`.
    fake.push(Script::steps(vec![started("k")]));
    let gw = gateway(&fake, config(1 << 20)).await;
    let expect = [
        (400, "invalid_request_error", Some("temperature")),
        (429, "rate_limit_error", None),
        (504, "api_error", None),
        (502, "api_error", None),
    ];
    for (i, (status, ty, param)) in expect.into_iter().enumerate() {
        // Alternate streaming and not: both get the real status.
        let r = send(gw.chat(&body(i % 2 == 0))).await;
        assert_eq!(r.status, status, "case {i}");
        let v = r.json();
        assert_eq!(v["error"]["type"], ty, "case {i}");
        assert_eq!(v["error"]["param"].as_str(), param, "case {i}");
    }
}

#[tokio::test]
async fn error_after_the_stream_began() {
    let fake = FakeAgentSvc::start().await;
    fake.push(Script::steps(vec![
        started("k"),
        text("partial"),
        Step::Error(agent_status(
            tonic::Code::Unavailable,
            "provider reset",
            "api_error",
            Some("upstream_error"),
            None,
        )),
    ]));
    let gw = gateway(&fake, config(1 << 20)).await;
    let r = read_stream(gw.chat(&body(true))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.frames.len(), 4, "{:?}", r.frames);
    let last = r.chunks().pop().expect("chunks");
    assert_eq!(
        last,
        json!({"error": {"message": "provider reset", "type": "api_error", "code": "upstream_error"}})
    );
    assert_eq!(r.frames[3], data("[DONE]"));
}

#[tokio::test]
async fn keep_alive_while_silent() {
    let fake = FakeAgentSvc::start().await;
    let ka = Duration::from_millis(300);
    // The silences are what is tested: the keep-alive interval passes twice in each.
    fake.push(Script::steps(vec![
        started("k"),
        Step::Sleep(ka * 2),
        text("a"),
        Step::Sleep(ka * 2),
        finished("stop"),
    ]));
    harness::init_tracing();
    let gw =
        Gateway::start_with_keep_alive(&config(1 << 20).build(), &fake.url(), ka).await.with_bearer(TOKEN);
    let r = read_stream(gw.chat(&body(true))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-openclaw-session-key"), Some("k"));
    let frames = &r.frames;
    let comment = SseFrame::Comment("keep-alive".into());
    // Committed after one interval of silence: role chunk, then a comment.
    assert!(matches!(&frames[0], SseFrame::Data(d) if d.starts_with('{')), "{frames:?}");
    assert_eq!(frames[1], comment);
    let has = |f: &SseFrame, needle: &str| matches!(f, SseFrame::Data(d) if d.contains(needle));
    let content = frames.iter().position(|f| has(f, "\"content\":\"a\"")).expect("content chunk");
    let finish = frames.iter().position(|f| has(f, "\"finish_reason\":\"stop\"")).expect("finish chunk");
    assert!(frames[content + 1..finish].contains(&comment), "{frames:?}");
    assert_eq!(frames.last(), Some(&data("[DONE]")));
}

#[tokio::test]
async fn client_disconnect_cancels_the_run() {
    let fake = FakeAgentSvc::start().await;
    // Streaming: disconnect after the first token.
    fake.push(Script::steps(vec![started("k"), text("first"), Step::Hang]));
    // Non-streaming: disconnect while waiting.
    fake.push(Script::steps(vec![started("k"), Step::Hang]));
    // Streaming: disconnect before the first token.
    fake.push(Script::steps(vec![started("k"), Step::Hang]));
    let gw = gateway(&fake, config(1 << 20)).await;

    let mut reader = SseReader::new(open(gw.chat(&body(true))).await);
    while reader.next(T).await.expect("a chunk").content() != Some("first") {}
    drop(reader);
    assert!(fake.wait_for_cancelled(1, T).await, "the gRPC stream was dropped");

    // Clients that give up once their run reached agent-svc, before any answer.
    for (n, stream) in [(2, false), (3, true)] {
        let asked = async { assert!(fake.wait_for_requests(n, T).await, "the run reached agent-svc") };
        give_up_when(gw.chat(&body(stream)), asked).await;
        assert!(fake.wait_for_cancelled(n, T).await, "the gRPC stream was dropped (stream: {stream})");
    }
    // In-flight gauge back to zero (a gauge has no change signal: polled);
    // disconnected requests counted as 499.
    let metrics = || gw.state().metrics().render();
    let idle = eventually(T, Duration::from_millis(10), || async {
        metrics().contains("openclaw_gateway_runs_in_flight 0").then_some(())
    })
    .await;
    assert!(idle.is_some(), "runs in flight: {}", metrics());
    assert!(metrics().contains("status=\"499\""));
}

#[tokio::test]
async fn models_health_and_metrics() {
    let fake = FakeAgentSvc::start().await;
    let gw = gateway(&fake, config(1024)).await;
    let v = send(gw.authed_get("/v1/models")).await.json();
    let ids: Vec<&str> =
        v["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["openclaw", "openclaw/default", "openclaw/main", "openclaw/beta"]);
    for id in ["openclaw%2Fbeta", "openclaw/beta"] {
        let r = send(gw.authed_get(&format!("/v1/models/{id}"))).await;
        assert_eq!(r.status, 200, "{id}");
        assert_eq!(r.json()["id"], "openclaw/beta");
    }
    let r = send(gw.authed_get("/v1/models/openclaw%2Fnope")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(send(gw.get("/v1/models")).await.status, 401);

    for path in ["/healthz", "/readyz"] {
        let r = send(gw.get(path)).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    let m = send(gw.get("/metrics")).await.text;
    assert!(m.contains("openclaw_gateway_requests_total{route=\"/v1/models\",status=\"200\"}"), "{m}");
}

#[tokio::test]
async fn bodies_over_axum_default_limit_are_accepted() {
    let fake = FakeAgentSvc::start().await;
    let gw = gateway(&fake, config(20 << 20)).await;
    let big = "x".repeat(3 << 20);
    let r = send(gw.chat(&json!({"messages": [{"role": "user", "content": big}]}))).await;
    assert_eq!(r.status, 200);
    let (req, _) = fake.last_request();
    assert_eq!(req.messages[0].parts.len(), 1);
}

#[tokio::test]
async fn shutdown_ends_open_streams_after_grace() {
    let fake = FakeAgentSvc::start().await;
    fake.push(Script::steps(vec![started("k"), text("a"), Step::Hang]));
    let cfg = ConfigBuilder::new().enable_chat_completions().set("gateway.auth", json!({"mode": "none"}));
    let mut gw = gateway(&fake, cfg).await;
    assert!(!gw.is_embedded());
    let resp = open(json_body(gw.post("/v1/chat/completions"), &body(true))).await;
    assert_eq!(resp.status(), 200);
    // The stream is open and mid-answer when the shutdown begins.
    let mut reader = SseReader::new(resp);
    while reader.next(T).await.expect("a chunk").content() != Some("a") {}
    let ((), _) = tokio::join!(gw.stop_with_grace(Duration::from_millis(200)), reader.rest(T));
    let text = reader.raw_text();
    assert!(text.contains("\"code\":\"agent_unavailable\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(fake.wait_for_cancelled(1, T).await, "the gRPC stream was dropped");
}

/// The root of the error bursts under load (issue: "locally-reset streams
/// reached limit"): a run that finished is read to its end, not reset, though
/// the answer goes out at `finished`. Every needless reset is a step towards the
/// GOAWAY that fails every run on the connection.
#[tokio::test]
async fn a_finished_run_is_read_to_its_end_not_reset() {
    let fake = FakeAgentSvc::start().await;
    // agent-svc closes the stream a moment after `finished` (its trailers come late).
    let late_end = Duration::from_millis(300);
    let gw = gateway(&fake, config(1 << 20)).await;
    for stream in [false, true] {
        let steps =
            vec![started("agent:beta:openai:x"), text("done"), finished("stop"), Step::Sleep(late_end)];
        fake.push(Script::steps(steps));
        let r = send(gw.chat(&body(stream))).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.text.contains("done"), "{}", r.text);
    }
    // Both answers are out; the streams end on their own a little later. A reset
    // would show as a cancelled run.
    assert!(
        !fake.wait_for_cancelled(1, late_end * 3).await,
        "the gateway reset a run that had finished ({} cancelled)",
        fake.cancelled()
    );
}
