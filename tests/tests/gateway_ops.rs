//! gateway-http end to end: the SPEC §4 error table for provider failures and
//! timeouts, the session queue bound, `/v1/models` (§5), health, readiness and
//! metrics (§6), agent-svc going away, and embedded mode.

use e2e::harness::dead_port;
use e2e::prelude::*;
use std::collections::BTreeSet;

fn retry_after(r: &Reply) -> u64 {
    let v = r.header("retry-after").unwrap_or_else(|| panic!("no Retry-After: {:?}", r.headers));
    v.parse().unwrap_or_else(|_| panic!("Retry-After {v:?} is not seconds"))
}

// ---------------------------------------------------------------------------
// Provider failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_failures_are_502_upstream_error() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock)).await;
    let cases = [
        ("500", Behavior::error(500, "kaput")),
        ("503", Behavior::error(503, "overloaded")),
        ("auth failure", Behavior::error(401, "Incorrect API key provided")),
        ("malformed SSE", Behavior::Malformed),
        ("reset mid-answer (non-streaming client)", Behavior::ResetAfter { chunks: vec!["partial ".into()] }),
    ];
    for (what, b) in cases {
        mock.push(b);
        let r = chat(&s, &ask("q")).await;
        let e = r.expect_error(502, "api_error");
        assert_eq!(e["code"], "upstream_error", "{what}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_provider_connection_is_502() {
    let cfg = ConfigBuilder::new()
        .enable_chat_completions()
        .auth_token(TOKEN)
        .provider("dead", &format!("http://127.0.0.1:{}/v1", dead_port()))
        .model("dead/m");
    let s = stack(cfg).await;
    let r = chat(&s, &ask("q")).await;
    assert_eq!(r.expect_error(502, "api_error")["code"], "upstream_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_429_on_every_model_is_429_rate_limit_error() {
    let mock = MockUpstream::start().await;
    mock.set_for_model("a", Behavior::error(429, "slow down a"));
    mock.set_for_model("b", Behavior::error(429, "slow down b"));
    let s = stack(config(&mock).model_with_fallbacks("mock/a", &["mock/b"])).await;
    let r = chat(&s, &ask("q")).await;
    r.expect_error(429, "rate_limit_error");
    let models: Vec<String> = mock.requests().iter().filter_map(|r| r.model().map(String::from)).collect();
    assert_eq!(models, ["a", "b"], "the fallback was tried before giving up");

    // One model left that answers: 200.
    mock.clear_for_model("b");
    assert_eq!(chat(&s, &ask("q")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_400_is_400_with_the_providers_message() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock)).await;
    let msg =
        "This model's maximum context length is 8192 tokens. However, your messages resulted in 9001 tokens.";
    mock.push(Behavior::error(400, msg));
    let r = chat(&s, &ask("a very long conversation")).await;
    let e = r.expect_error(400, "invalid_request_error");
    assert!(e["message"].as_str().unwrap_or_default().contains(msg), "the provider's message: {e}");
    assert_eq!(mock.request_count(), 1, "not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_timeout_is_504_and_aborts_the_upstream() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock).timeout_seconds(0.5)).await;
    mock.push(Behavior::Hang);
    let t0 = Instant::now();
    let r = chat(&s, &json!({"user": "slowpoke", "messages": [{"role": "user", "content": "q"}]})).await;
    let elapsed = t0.elapsed();
    let e = r.expect_error(504, "api_error");
    assert_eq!(e["code"], "timeout");
    assert!(elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert!(mock.wait_for_disconnect(CANCEL_BOUND).await, "the hanging upstream request was aborted");

    // The session is usable afterwards.
    let r = chat(&s, &json!({"user": "slowpoke", "messages": [{"role": "user", "content": "again"}]})).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_first_byte_timeout_is_504() {
    let mock = MockUpstream::start().await;
    let cfg = config(&mock).set("models.providers.mock.firstByteTimeoutMs", json!(200));
    let s = stack(cfg).await;
    mock.push(Behavior::text("too late").delayed(Duration::from_secs(3)));
    let t0 = Instant::now();
    let r = chat(&s, &ask("q")).await;
    assert_eq!(r.expect_error(504, "api_error")["code"], "timeout");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(mock.wait_for_disconnect(CANCEL_BOUND).await);
}

// ---------------------------------------------------------------------------
// The session queue

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seventeenth_waiting_turn_of_a_session_is_429() {
    let mock = MockUpstream::start().await;
    let s = std::sync::Arc::new(stack(config(&mock)).await);
    let gate = Gate::new();
    mock.push(Behavior::text("first done").gated(&gate));
    let turn =
        |i: usize| json!({"user": "busy", "messages": [{"role": "user", "content": format!("turn {i}")}]});

    let first = {
        let (s, body) = (s.clone(), turn(0));
        tokio::spawn(async move { chat(&s, &body).await })
    };
    assert!(mock.wait_for_requests(1, T).await, "turn 0 is running (held by the gate)");

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 1..=17 {
        let (s, body, tx) = (s.clone(), turn(i), tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(chat(&s, &body).await);
        });
    }
    drop(tx);
    // 16 may wait; exactly one of the 17 is refused, at once (turn 0 is still held).
    let refused = tokio::time::timeout(T, rx.recv()).await.expect("one turn refused").expect("reply");
    let e = refused.expect_error(429, "rate_limit_error");
    assert!(!gate.is_open());
    eprintln!("queue full: {e}");

    gate.open();
    let first = tokio::time::timeout(T, first).await.expect("turn 0").expect("task");
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json()["choices"][0]["message"]["content"], "first done");
    let mut ok = 0;
    while let Some(r) =
        tokio::time::timeout(Duration::from_secs(15), rx.recv()).await.expect("waiting turns end")
    {
        assert_eq!(r.status, 200, "a waiting turn failed: {}", r.text);
        ok += 1;
    }
    assert_eq!(ok, 16, "all 16 waiting turns ran");
    assert_eq!(mock.request_count(), 17);
}

// ---------------------------------------------------------------------------
// /v1/models

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_and_lookup() {
    let mock = MockUpstream::start().await;
    let cfg = config(&mock)
        .agent(json!({"id": "main", "default": true}))
        .agent(json!({"id": "beta", "model": "mock/beta-model"}));
    let s = stack(cfg).await;
    let r = send(s.gw.authed_get("/v1/models")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("content-type").unwrap_or_default().starts_with("application/json"));
    let v = r.json();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().expect("data");
    let ids: BTreeSet<&str> = data.iter().filter_map(|m| m["id"].as_str()).collect();
    let want: BTreeSet<&str> = ["openclaw", "openclaw/default", "openclaw/main", "openclaw/beta"].into();
    assert_eq!(ids, want);
    assert_eq!(data.len(), 4, "no duplicates: {v}");
    for m in data {
        assert_eq!(m["object"], "model", "{m}");
        assert_eq!(m["owned_by"], "openclaw", "{m}");
        assert!(m["created"].is_u64(), "{m}");
    }
    assert_eq!(data[0], json!({"id": "openclaw", "object": "model", "created": 0, "owned_by": "openclaw"}));

    for (path, id) in [
        ("/v1/models/openclaw%2Fmain", "openclaw/main"),
        ("/v1/models/openclaw%2fbeta", "openclaw/beta"),
        ("/v1/models/openclaw%2Fdefault", "openclaw/default"),
        ("/v1/models/openclaw", "openclaw"),
    ] {
        let r = send(s.gw.authed_get(path)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        let m = r.json();
        assert_eq!(m["id"], id, "{path}");
        assert_eq!(m["object"], "model", "{path}");
    }
    for path in ["/v1/models/openclaw%2Fghost", "/v1/models/gpt-4o", "/v1/models/openclaw%3Amain"] {
        send(s.gw.authed_get(path)).await.expect_error(404, "invalid_request_error");
    }
}

// ---------------------------------------------------------------------------
// Health, readiness, agent-svc going away

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_when_agent_svc_stops_and_chat_is_503_agent_unavailable() {
    let mock = MockUpstream::start().await;
    let mut s = stack(config(&mock)).await;
    for path in ["/healthz", "/readyz"] {
        let r = send(s.gw.get(path)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
    }
    assert_eq!(chat(&s, &ask("q")).await.status, 200);

    let old_addr = s.svc.addr();
    s.svc.stop().await;
    let gw = &s.gw;
    let r = eventually(T, Duration::from_millis(50), || async {
        let r = send(gw.get("/readyz")).await;
        (r.status != 200).then_some(r)
    })
    .await
    .expect("/readyz turns unready once agent-svc is gone");
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = send(s.gw.get("/healthz")).await;
    assert_eq!(r.status, 200, "alive even without agent-svc");

    let r = chat(&s, &ask("q")).await;
    let e = r.expect_error(503, "api_error");
    assert_eq!(e["code"], "agent_unavailable");
    assert!(retry_after(&r) >= 1);
    let r = chat(&s, &json!({"stream": true, "messages": [{"role": "user", "content": "q"}]})).await;
    assert_eq!(r.expect_error(503, "api_error")["code"], "agent_unavailable");

    // Back on the same address: ready again.
    s.svc.restart().await;
    if s.svc.addr() == old_addr {
        let gw = &s.gw;
        let ok = eventually(T, Duration::from_millis(50), || async {
            (send(gw.get("/readyz")).await.status == 200).then_some(())
        })
        .await;
        assert!(ok.is_some(), "/readyz recovers when agent-svc is back");
        assert_eq!(chat(&s, &ask("q")).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_svc_unreachable_is_503_with_retry_after() {
    harness::init_tracing();
    let mock = MockUpstream::start().await;
    let url = format!("http://127.0.0.1:{}", dead_port());
    let gw = Gateway::start(&config(&mock).build(), Some(&url)).await.with_bearer(TOKEN);
    assert!(!gw.is_embedded());
    for stream in [false, true] {
        let r =
            send(gw.chat(&json!({"stream": stream, "messages": [{"role": "user", "content": "q"}]}))).await;
        let e = r.expect_error(503, "api_error");
        assert_eq!(e["code"], "agent_unavailable", "stream: {stream}");
        assert_eq!(retry_after(&r), 1, "stream: {stream}");
    }
    let r = send(gw.get("/readyz")).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(send(gw.get("/healthz")).await.status, 200);
    let r = send(gw.authed_get("/v1/models")).await;
    assert_eq!(r.expect_error(503, "api_error")["code"], "agent_unavailable");
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_status() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock)).await;
    assert_eq!(chat(&s, &ask("q")).await.status, 200);
    assert_eq!(chat(&s, &ask("q")).await.status, 200);
    let r = send(s.gw.post("/v1/chat/completions").body("{}")).await;
    assert_eq!(r.status, 401);

    let r = send(s.gw.get("/metrics")).await;
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "Prometheus text: {ct}");
    let sample = |status: &str| -> f64 {
        r.text
            .lines()
            .filter(|l| l.starts_with("openclaw_gateway_requests_total{"))
            .filter(|l| {
                l.contains("route=\"/v1/chat/completions\"") && l.contains(&format!("status=\"{status}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(sample("200"), 2.0, "{}", r.text);
    assert_eq!(sample("401"), 1.0, "{}", r.text);
    assert!(r.text.contains("# TYPE openclaw_gateway_requests_total counter"), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_answers_with_the_builtin_echo_model() {
    harness::init_tracing();
    let cfg = ConfigBuilder::new().enable_chat_completions().auth_token(TOKEN).build();
    let mut gw = Gateway::start(&cfg, None).await.with_bearer(TOKEN);
    assert!(gw.is_embedded(), "no agent-svc URL: the gateway starts its own");
    assert_eq!(send(gw.get("/readyz")).await.status, 200);

    let r = send(
        gw.chat(&json!({"user": "emb", "messages": [{"role": "user", "content": "hello embedded world"}]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.session_key(), "agent:main:openai-user:emb");
    let v = r.json();
    assert_eq!(v["model"], "openclaw");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let content = v["choices"][0]["message"]["content"].as_str().expect("content");
    assert!(content.contains("hello embedded world"), "echo: {content:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let sse =
        read_stream(gw.chat(&json!({"stream": true, "messages": [{"role": "user", "content": "echo me"}]})))
            .await;
    assert_eq!(sse.status, 200);
    assert!(sse.content().contains("echo me"), "{}", sse.raw);
    assert!(sse.events.last().is_some_and(|e| e.is_done()));
    assert!(sse.raw.ends_with("data: [DONE]\n\n"), "{}", sse.raw);

    // Validation by the embedded agent-svc comes back as a 400 naming the field.
    let r = send(gw.chat(&json!({"temperature": 3, "messages": [{"role": "user", "content": "x"}]}))).await;
    assert_eq!(r.expect_error(400, "invalid_request_error")["param"], "temperature");
    let r = send(gw.chat(&ask("x")).header("x-openclaw-agent-id", "ghost")).await;
    assert_eq!(r.expect_error(400, "invalid_request_error")["message"], "Unknown agent 'ghost'.");

    let r = send(gw.authed_get("/v1/models")).await;
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str().map(String::from))
        .collect();
    assert_eq!(ids, ["openclaw", "openclaw/default", "openclaw/main"]);

    // The two finished runs (JSON and SSE) recorded the gateway's own overhead;
    // /readyz above recorded agent-svc as up; the embedded agent-svc's own series are included.
    let m = send(gw.get("/metrics")).await.text;
    assert!(m.contains("openclaw_gateway_overhead_seconds_count 2"), "{m}");
    assert!(m.contains("openclaw_gateway_agent_svc_up 1"), "{m}");
    assert!(m.contains("openclaw_agent_runs_total"), "{m}");
    gw.stop().await;

    // And a second embedded gateway does not clash with the first (own port, own agent-svc).
    let gw2 = Gateway::start(&cfg, None).await.with_bearer(TOKEN);
    assert_eq!(
        send(gw2.chat(&json!({"messages": [{"role": "user", "content": "again"}]}))).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_serves_json_and_sse() {
    let mock = MockUpstream::start().await;
    let s =
        stack(config(&mock).set("gateway.http.endpoints.chatCompletions.maxBodyBytes", json!(1 << 20))).await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().expect("h2c client");
    let post = |body: &Value| {
        h2.post(format!("{}/v1/chat/completions", s.gw.url()))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    mock.push(Behavior::text("over h2"));
    let r = send(post(&ask("q"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "over h2");

    mock.push(Behavior::text("streamed over h2"));
    let resp = open(post(&json!({"stream": true, "messages": [{"role": "user", "content": "q"}]}))).await;
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let mut reader = SseReader::new(resp);
    let events = reader.rest(T).await;
    let text = content_of(&events);
    assert_eq!(text, "streamed over h2");
    assert!(events.last().is_some_and(|e| e.is_done()));

    let r = send(h2.get(format!("{}/v1/chat/completions", s.gw.url()))).await;
    assert_eq!(r.status, 405);
    // Oversized over HTTP/2: 413 without the (HTTP/1-only) Connection header.
    let r = send(post(&ask("q")).body(vec![b' '; 2 << 20])).await;
    r.expect_error(413, "invalid_request_error");
    assert!(r.header("connection").is_none(), "{:?}", r.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = harness::parse_config(
        r#"{gateway: {auth: {mode: "token", token: "t"}, http: {endpoints: {chatCompletions: {enabled: true}}}},
            session: {store: "memory"}}"#,
    )
    .expect("config");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let opts = gateway_http::GatewayOptions {
        listener: Some(listener),
        header_read_timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let gw = gateway_http::start(config, opts).await.expect("gateway");
    let addr = gw.local_addr();

    // Half a request head, then silence: the server must hang up on its own.
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {} // a 408-style answer before the close is fine
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(closed, "the slow client was not disconnected");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A normal client on the same listener is served.
    let r = reqwest::Client::new().get(format!("http://{addr}/healthz")).send().await.expect("healthz");
    assert_eq!(r.status(), 200);
    gw.shutdown().await.expect("shutdown");
}
