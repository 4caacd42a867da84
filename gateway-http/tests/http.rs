//! The HTTP surface end to end over real sockets, against a scripted fake
//! agent-svc: order of checks, response shapes, SSE, error mapping, cancellation.

mod common;

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

const KA: Duration = Duration::from_secs(15);

fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

fn chat_url(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}/v1/chat/completions")
}

fn body(stream: bool) -> Value {
    json!({"model": "openclaw/beta", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn order_of_checks() {
    let fake = Fake::default();
    let url = start_fake(fake.clone()).await;
    let (addr, _) = gateway_for(&url, settings(1024, KA)).await;
    let c = client();
    let chat = chat_url(addr);

    // Method before auth.
    let r = c.get(&chat).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(r.text().await.unwrap(), "Method Not Allowed");
    let r = c.post(format!("http://{addr}/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 405);

    // Auth before body size and JSON.
    let r = c.post(&chat).body("x".repeat(5000)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"error": {"message": "Unauthorized", "type": "unauthorized"}}));
    let r = c.post(&chat).header("authorization", "Bearer nope").body("{").send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Body size (declared) before JSON.
    let r = c.post(&chat).bearer_auth(TOKEN).body("x".repeat(5000)).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["connection"], "close");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "Payload too large");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // Body size without Content-Length (chunked): the read is capped.
    let chunks = futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 200])));
    let r = c.post(&chat).bearer_auth(TOKEN).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(r.status(), 413);

    // JSON, then semantics.
    let r = c.post(&chat).bearer_auth(TOKEN).body("{\"messages\": [").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("line 1"), "{v}");
    let r = c.post(&chat).bearer_auth(TOKEN).body("[1]").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(&chat)
        .bearer_auth(TOKEN)
        .json(&json!({"model": "gpt-4", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["param"], "model");
    let r = c
        .post(&chat)
        .bearer_auth(TOKEN)
        .json(&json!({"temperature": "hot", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "temperature");

    // Unknown route.
    let r = c.get(format!("http://{addr}/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.unwrap(), "Not Found");
    // Nothing above reached agent-svc.
    assert!(fake.0.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn lockout_after_wrong_secrets() {
    let url = start_fake(Fake::default()).await;
    let (addr, _) = gateway_for(&url, settings(1024, KA)).await;
    let c = client();
    let models = format!("http://{addr}/v1/models");
    for _ in 0..3 {
        assert_eq!(c.get(&models).bearer_auth("wrong").send().await.unwrap().status(), 401);
    }
    let r = c.get(&models).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let secs: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((59..=60).contains(&secs), "{secs}");
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn disabled_endpoints_are_404() {
    let fake = Fake::default();
    let url = start_fake(fake).await;
    let (addr, _) =
        gateway_for(&url, gateway_http::state::ChatSettings { enabled: false, ..settings(1024, KA) }).await;
    let c = client();
    for (method, path) in [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/openclaw"),
    ] {
        for auth in [false, true] {
            let mut rb = c.request(method.parse().unwrap(), format!("http://{addr}{path}"));
            if auth {
                rb = rb.bearer_auth(TOKEN);
            }
            let r = rb.send().await.unwrap();
            assert_eq!(r.status(), 404, "{method} {path}");
            assert_eq!(r.text().await.unwrap(), "Not Found");
        }
    }
    assert_eq!(c.get(format!("http://{addr}/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn non_streaming_answer() {
    let fake = Fake::default();
    fake.push(Script {
        upfront: None,
        steps: vec![started("agent:beta:openai:abc"), text("Hel"), text("lo"), finished("stop")],
    });
    let url = start_fake(fake.clone()).await;
    let (addr, _) = gateway_for(&url, settings(1 << 20, KA)).await;
    let r = client()
        .post(chat_url(addr))
        .bearer_auth(TOKEN)
        .header("x-request-id", "req-42")
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .header("x-openclaw-model", "echo/echo")
        .json(&body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-openclaw-session-key"], "agent:beta:openai:abc");
    assert_eq!(r.headers()["x-request-id"], "req-42");
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl_"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "openclaw/beta");
    assert_eq!(v["choices"][0]["message"], json!({"role": "assistant", "content": "Hello"}));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"], json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}));

    let (req, md) = fake.last_request();
    assert_eq!(req.agent_id, "beta");
    assert_eq!(req.channel, "openai");
    assert_eq!(req.model.as_deref(), Some("echo/echo"));
    assert_eq!(md.get("x-request-id").unwrap(), "req-42");
    assert_eq!(md.get("traceparent").unwrap(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
}

#[tokio::test]
async fn streaming_text_and_tool_calls() {
    let fake = Fake::default();
    fake.push(Script {
        upfront: None,
        steps: vec![
            started("agent:main:openai-user:alice"),
            text("Let me look."),
            tool(0, "", "get_weather", "{\"city\":"),
            tool(0, "", "", "\"Paris\"}"),
            finished("tool_calls"),
        ],
    });
    let url = start_fake(fake.clone()).await;
    let (addr, _) = gateway_for(&url, settings(1 << 20, KA)).await;
    let mut b = body(true);
    b["stream_options"] = json!({"include_usage": true});
    b["user"] = json!("alice");
    let r = client().post(chat_url(addr)).bearer_auth(TOKEN).json(&b).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert_eq!(r.headers()["x-accel-buffering"], "no");
    assert_eq!(r.headers()["x-openclaw-session-key"], "agent:main:openai-user:alice");
    let frames = sse_frames(&r.text().await.unwrap());
    assert_eq!(frames.last().unwrap(), "data: [DONE]");
    let chunks = sse_json(&frames);
    assert_eq!(chunks.len(), 6, "{chunks:#?}");
    let id = chunks[0]["id"].as_str().unwrap();
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
    let fake = Fake::default();
    // Rejected before the stream opens.
    fake.push(Script {
        upfront: Some(agent_status(
            tonic::Code::InvalidArgument,
            "`temperature` must be between 0 and 2.",
            "invalid_request_error",
            None,
            Some("temperature"),
        )),
        steps: vec![],
    });
    // Failed after `started` but before any token (e.g. session queue full, provider 429).
    fake.push(Script {
        upfront: None,
        steps: vec![
            started("k"),
            Step::Error(agent_status(
                tonic::Code::ResourceExhausted,
                "Too many requests queued.",
                "rate_limit_error",
                Some("session_busy"),
                None,
            )),
        ],
    });
    fake.push(Script {
        upfront: None,
        steps: vec![
            started("k"),
            Step::Error(agent_status(
                tonic::Code::DeadlineExceeded,
                "Run timed out.",
                "api_error",
                Some("timeout"),
                None,
            )),
        ],
    });
    // Stream ends without `finished`.
    fake.push(Script { upfront: None, steps: vec![started("k")] });
    let url = start_fake(fake).await;
    let (addr, _) = gateway_for(&url, settings(1 << 20, KA)).await;
    let c = client();
    let expect = [
        (400, "invalid_request_error", Some("temperature")),
        (429, "rate_limit_error", None),
        (504, "api_error", None),
        (502, "api_error", None),
    ];
    for (i, (status, ty, param)) in expect.into_iter().enumerate() {
        // Alternate streaming and not: both get the real status.
        let r = c.post(chat_url(addr)).bearer_auth(TOKEN).json(&body(i % 2 == 0)).send().await.unwrap();
        assert_eq!(r.status(), status, "case {i}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], ty, "case {i}");
        assert_eq!(v["error"]["param"].as_str(), param, "case {i}");
    }
}

#[tokio::test]
async fn error_after_the_stream_began() {
    let fake = Fake::default();
    fake.push(Script {
        upfront: None,
        steps: vec![
            started("k"),
            text("partial"),
            Step::Error(agent_status(
                tonic::Code::Unavailable,
                "provider reset",
                "api_error",
                Some("upstream_error"),
                None,
            )),
        ],
    });
    let url = start_fake(fake).await;
    let (addr, _) = gateway_for(&url, settings(1 << 20, KA)).await;
    let r = client().post(chat_url(addr)).bearer_auth(TOKEN).json(&body(true)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let frames = sse_frames(&r.text().await.unwrap());
    assert_eq!(frames.len(), 4, "{frames:?}");
    let last = sse_json(&frames).pop().unwrap();
    assert_eq!(
        last,
        json!({"error": {"message": "provider reset", "type": "api_error", "code": "upstream_error"}})
    );
    assert_eq!(frames[3], "data: [DONE]");
}

#[tokio::test]
async fn keep_alive_while_silent() {
    let fake = Fake::default();
    let ka = Duration::from_millis(300);
    fake.push(Script {
        upfront: None,
        steps: vec![started("k"), Step::Sleep(ka * 2), text("a"), Step::Sleep(ka * 2), finished("stop")],
    });
    let url = start_fake(fake).await;
    let (addr, _) = gateway_for(&url, settings(1 << 20, ka)).await;
    let r = client().post(chat_url(addr)).bearer_auth(TOKEN).json(&body(true)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-openclaw-session-key"], "k");
    let frames = sse_frames(&r.text().await.unwrap());
    // Committed after one interval of silence: role chunk, then a comment.
    assert!(frames[0].starts_with("data: {"), "{frames:?}");
    assert_eq!(frames[1], ": keep-alive");
    let content = frames.iter().position(|f| f.contains("\"content\":\"a\"")).unwrap();
    let finish = frames.iter().position(|f| f.contains("\"finish_reason\":\"stop\"")).unwrap();
    assert!(frames[content + 1..finish].iter().any(|f| f == ": keep-alive"), "{frames:?}");
    assert_eq!(frames.last().unwrap(), "data: [DONE]");
}

#[tokio::test]
async fn client_disconnect_cancels_the_run() {
    let fake = Fake::default();
    // Streaming: disconnect after the first token.
    fake.push(Script { upfront: None, steps: vec![started("k"), text("first"), Step::Hang] });
    // Non-streaming: disconnect while waiting.
    fake.push(Script { upfront: None, steps: vec![started("k"), Step::Hang] });
    // Streaming: disconnect before the first token.
    fake.push(Script { upfront: None, steps: vec![started("k"), Step::Hang] });
    let url = start_fake(fake.clone()).await;
    let (addr, state) = gateway_for(&url, settings(1 << 20, KA)).await;

    let r = client().post(chat_url(addr)).bearer_auth(TOKEN).json(&body(true)).send().await.unwrap();
    let mut stream = r.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("first"));
    drop(stream);
    wait_for(|| fake.cancelled() == 1).await;

    let c = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    assert!(c.post(chat_url(addr)).bearer_auth(TOKEN).json(&body(false)).send().await.is_err());
    wait_for(|| fake.cancelled() == 2).await;
    assert!(c.post(chat_url(addr)).bearer_auth(TOKEN).json(&body(true)).send().await.is_err());
    wait_for(|| fake.cancelled() == 3).await;
    // In-flight gauge back to zero; disconnected requests counted as 499.
    wait_for(|| state.metrics().render().contains("openclaw_gateway_runs_in_flight 0")).await;
    assert!(state.metrics().render().contains("status=\"499\""));
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 1 s");
}

#[tokio::test]
async fn models_health_and_metrics() {
    let url = start_fake(Fake::default()).await;
    let (addr, _) = gateway_for(&url, settings(1024, KA)).await;
    let c = client();
    let v: Value = c
        .get(format!("http://{addr}/v1/models"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["openclaw", "openclaw/default", "openclaw/main", "openclaw/beta"]);
    for id in ["openclaw%2Fbeta", "openclaw/beta"] {
        let r = c.get(format!("http://{addr}/v1/models/{id}")).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200, "{id}");
        assert_eq!(r.json::<Value>().await.unwrap()["id"], "openclaw/beta");
    }
    let r =
        c.get(format!("http://{addr}/v1/models/openclaw%2Fnope")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["type"], "invalid_request_error");
    assert_eq!(c.get(format!("http://{addr}/v1/models")).send().await.unwrap().status(), 401);

    for path in ["/healthz", "/readyz"] {
        let r = c.get(format!("http://{addr}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-store");
    }
    let m = c.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("openclaw_gateway_requests_total{route=\"/v1/models\",status=\"200\"}"), "{m}");
}

#[tokio::test]
async fn agent_svc_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (addr, _) = gateway_for(&format!("http://127.0.0.1:{port}"), settings(1024, KA)).await;
    let c = client();
    for stream in [false, true] {
        let r = c.post(chat_url(addr)).bearer_auth(TOKEN).json(&body(stream)).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "api_error");
        assert_eq!(v["error"]["code"], "agent_unavailable");
    }
    assert_eq!(
        c.get(format!("http://{addr}/v1/models")).bearer_auth(TOKEN).send().await.unwrap().status(),
        503
    );
    assert_eq!(c.get(format!("http://{addr}/readyz")).send().await.unwrap().status(), 503);
    assert_eq!(c.get(format!("http://{addr}/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn h2c_prior_knowledge_works() {
    let url = start_fake(Fake::default()).await;
    let (addr, _) = gateway_for(&url, settings(1 << 20, KA)).await;
    let c = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let r = c.post(chat_url(addr)).bearer_auth(TOKEN).json(&body(false)).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["choices"][0]["message"]["content"], "ok");
    // Oversized over HTTP/2: 413 without the (HTTP/1-only) Connection header.
    let r = c.post(chat_url(addr)).bearer_auth(TOKEN).body(vec![b' '; 2 << 20]).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.headers().get("connection").is_none());
}

#[tokio::test]
async fn bodies_over_axum_default_limit_are_accepted() {
    let fake = Fake::default();
    let url = start_fake(fake.clone()).await;
    let (addr, _) = gateway_for(&url, settings(20 << 20, KA)).await;
    let big = "x".repeat(3 << 20);
    let b = json!({"messages": [{"role": "user", "content": big}]});
    let r = client().post(chat_url(addr)).bearer_auth(TOKEN).json(&b).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (req, _) = fake.last_request();
    assert_eq!(req.messages[0].parts.len(), 1);
}

#[tokio::test]
async fn shutdown_ends_open_streams_after_grace() {
    let fake = Fake::default();
    fake.push(Script { upfront: None, steps: vec![started("k"), text("a"), Step::Hang] });
    let url = start_fake(fake.clone()).await;
    let config = services::config::parse(
        r#"{gateway: {auth: {mode: "none"}, http: {endpoints: {chatCompletions: {enabled: true}}}}}"#,
        services::config::ConfigSource::Defaults,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = gateway_http::GatewayOptions {
        agent_svc_url: Some(url),
        listener: Some(listener),
        ..Default::default()
    };
    let gw = gateway_http::start(config, opts).await.unwrap();
    assert!(gw.embedded_agent_svc().is_none());
    let r = client().post(chat_url(gw.local_addr())).json(&body(true)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let reading = tokio::spawn(r.text());
    tokio::time::sleep(Duration::from_millis(50)).await;
    gw.shutdown_with_grace(Duration::from_millis(200)).await.unwrap();
    let text = reading.await.unwrap().unwrap();
    assert!(text.contains("\"code\":\"agent_unavailable\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    wait_for(|| fake.cancelled() == 1).await;
}
