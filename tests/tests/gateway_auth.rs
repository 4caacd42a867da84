//! gateway-http end to end, SPEC §3 (authentication, lockout) and the route /
//! method / auth / size order of SPEC §4: a real agent-svc (mock upstream) and a
//! real gateway on 127.0.0.1, driven over HTTP.
//!
//! The env fallbacks (`OPENCLAW_GATEWAY_TOKEN` / `_PASSWORD`) live in
//! `gateway_env.rs`, alone in their process.

use e2e::prelude::*;
use reqwest::Method;

fn base(mock: &MockUpstream) -> ConfigBuilder {
    ConfigBuilder::with_mock(mock).enable_chat_completions()
}

fn hello() -> Value {
    json!({"model": "openclaw", "messages": [{"role": "user", "content": "hello"}]})
}

/// `POST /v1/chat/completions` with this `Authorization` value (`None`: no header).
async fn chat_with_auth(gw: &Gateway, authorization: Option<&str>) -> Reply {
    let mut rb = json_body(gw.post("/v1/chat/completions"), &hello());
    if let Some(a) = authorization {
        rb = rb.header("authorization", a);
    }
    send(rb).await
}

async fn models_with_auth(gw: &Gateway, authorization: Option<&str>) -> Reply {
    let mut rb = gw.get("/v1/models");
    if let Some(a) = authorization {
        rb = rb.header("authorization", a);
    }
    send(rb).await
}

fn expect_unauthorized(r: &Reply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text);
    r.expect_error(401, "unauthorized");
    assert_eq!(
        r.json(),
        json!({"error": {"message": "Unauthorized", "type": "unauthorized"}}),
        "{what}: exact 401 body"
    );
}

fn expect_locked(r: &Reply, lockout_ms: u64, what: &str) {
    r.expect_error(429, "rate_limit_error");
    let ra = r.header("retry-after").unwrap_or_else(|| panic!("{what}: 429 without Retry-After"));
    let secs: u64 = ra.parse().unwrap_or_else(|_| panic!("{what}: Retry-After {ra:?} is not seconds"));
    assert!(secs >= 1 && secs <= lockout_ms.div_ceil(1000), "{what}: Retry-After {secs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_accepts_only_the_bearer_token() {
    let mock = MockUpstream::start().await;
    let s = stack(base(&mock).auth_token(TOKEN)).await;
    let gw = &s.gw;

    expect_unauthorized(&chat_with_auth(gw, None).await, "no header");
    expect_unauthorized(&chat_with_auth(gw, Some("Bearer wrong-token")).await, "wrong token");
    expect_unauthorized(&chat_with_auth(gw, Some(&format!("Bearer {TOKEN}x"))).await, "longer token");
    expect_unauthorized(&chat_with_auth(gw, Some(&format!("Basic {TOKEN}"))).await, "other scheme");
    expect_unauthorized(&chat_with_auth(gw, Some(TOKEN)).await, "no scheme");
    expect_unauthorized(&chat_with_auth(gw, Some("Bearer ")).await, "empty secret");
    assert_eq!(mock.request_count(), 0, "nothing unauthenticated reached the upstream");

    for auth in [format!("Bearer {TOKEN}"), format!("bearer {TOKEN}"), format!("BEARER {TOKEN}")] {
        let r = chat_with_auth(gw, Some(&auth)).await;
        assert_eq!(r.status, 200, "{auth:?}: {}", r.text);
        assert_eq!(r.json()["choices"][0]["message"]["content"], "hello");
    }

    // `/v1/models` has the same auth.
    expect_unauthorized(&models_with_auth(gw, None).await, "models without header");
    expect_unauthorized(&models_with_auth(gw, Some("Bearer nope")).await, "models wrong token");
    expect_unauthorized(&send(gw.get("/v1/models/openclaw")).await, "one model without header");
    assert_eq!(models_with_auth(gw, Some(&format!("Bearer {TOKEN}"))).await.status, 200);

    // Health and metrics need none.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = send(gw.get(path).header("authorization", "Bearer wrong")).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert_eq!(send(gw.get(path)).await.status, 200, "{path} without header");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_mode_compares_against_the_password() {
    let mock = MockUpstream::start().await;
    let cfg = base(&mock).set("gateway.auth", json!({"mode": "password", "password": "pw-s3cret"}));
    let s = stack(cfg).await;
    let gw = &s.gw;
    expect_unauthorized(&chat_with_auth(gw, None).await, "no header");
    expect_unauthorized(&chat_with_auth(gw, Some("Bearer pw-wrong")).await, "wrong password");
    let r = chat_with_auth(gw, Some("Bearer pw-s3cret")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(models_with_auth(gw, Some("bearer pw-s3cret")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_mode_ignores_a_configured_token() {
    let mock = MockUpstream::start().await;
    let cfg = base(&mock)
        .set("gateway.auth", json!({"mode": "password", "password": "the-password", "token": "the-token"}));
    let s = stack(cfg).await;
    expect_unauthorized(&chat_with_auth(&s.gw, Some("Bearer the-token")).await, "token in password mode");
    assert_eq!(chat_with_auth(&s.gw, Some("Bearer the-password")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_mode_needs_no_header() {
    let mock = MockUpstream::start().await;
    let s = stack(base(&mock).set("gateway.auth", json!({"mode": "none"}))).await;
    let gw = &s.gw;
    let r = chat_with_auth(gw, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(chat_with_auth(gw, Some("Bearer anything")).await.status, 200);
    assert_eq!(chat_with_auth(gw, Some("Basic whatever")).await.status, 200);
    assert_eq!(models_with_auth(gw, None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_after_max_attempts_refuses_even_the_right_secret() {
    const LOCKOUT_MS: u64 = 1500;
    let mock = MockUpstream::start().await;
    let cfg = base(&mock).auth_token(TOKEN).set(
        "gateway.auth.rateLimit",
        json!({"maxAttempts": 3, "windowMs": 60000, "lockoutMs": LOCKOUT_MS, "exemptLoopback": false}),
    );
    let s = stack(cfg).await;
    let gw = &s.gw;
    let good = format!("Bearer {TOKEN}");

    // A missing header never counts.
    for i in 0..6 {
        expect_unauthorized(&chat_with_auth(gw, None).await, &format!("missing header {i}"));
    }
    assert_eq!(chat_with_auth(gw, Some(&good)).await.status, 200, "missing headers did not lock");

    // Two failures, then a success resets the count ...
    for i in 0..2 {
        expect_unauthorized(&chat_with_auth(gw, Some("Bearer bad")).await, &format!("wrong {i}"));
    }
    assert_eq!(chat_with_auth(gw, Some(&good)).await.status, 200, "below maxAttempts");
    // ... so two more failures do not lock either.
    for i in 0..2 {
        expect_unauthorized(&chat_with_auth(gw, Some("Bearer bad")).await, &format!("wrong after reset {i}"));
    }
    assert_eq!(chat_with_auth(gw, Some(&good)).await.status, 200, "the success reset the count");

    // maxAttempts failures in the window: locked out.
    for i in 0..3 {
        let r = chat_with_auth(gw, Some("Bearer bad")).await;
        assert!(r.status == 401 || (i == 2 && r.status == 429), "failure {i}: {} {}", r.status, r.text);
    }
    let requests_before = mock.request_count();
    expect_locked(&chat_with_auth(gw, Some(&good)).await, LOCKOUT_MS, "right secret while locked");
    expect_locked(&chat_with_auth(gw, Some("Bearer bad")).await, LOCKOUT_MS, "wrong secret while locked");
    expect_locked(&models_with_auth(gw, Some(&good)).await, LOCKOUT_MS, "models while locked");
    assert_eq!(mock.request_count(), requests_before, "nothing ran during the lockout");
    // Routes without auth are not locked.
    assert_eq!(send(gw.get("/healthz")).await.status, 200);

    // Once the lockout is over the right secret works again (no signal: bounded poll).
    let after = harness::eventually(Duration::from_secs(5), Duration::from_millis(100), || async {
        let r = chat_with_auth(gw, Some(&good)).await;
        (r.status != 429).then_some(r)
    })
    .await
    .expect("the lockout ends after lockoutMs");
    assert_eq!(after.status, 200, "{}", after.text);
    // And the count starts from zero.
    for i in 0..2 {
        expect_unauthorized(&chat_with_auth(gw, Some("Bearer bad")).await, &format!("after lockout {i}"));
    }
    assert_eq!(chat_with_auth(gw, Some(&good)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_outside_the_window_do_not_add_up() {
    const WINDOW: Duration = Duration::from_millis(300);
    let mock = MockUpstream::start().await;
    let cfg = base(&mock).auth_token(TOKEN).set(
        "gateway.auth.rateLimit",
        json!({"maxAttempts": 3, "windowMs": WINDOW.as_millis() as u64, "lockoutMs": 60000, "exemptLoopback": false}),
    );
    let s = stack(cfg).await;
    let gw = &s.gw;
    for _ in 0..2 {
        expect_unauthorized(&chat_with_auth(gw, Some("Bearer bad")).await, "first window");
    }
    // The window is a duration: nothing to wait on but time.
    tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
    for _ in 0..2 {
        expect_unauthorized(&chat_with_auth(gw, Some("Bearer bad")).await, "second window");
    }
    let r = chat_with_auth(gw, Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(r.status, 200, "4 failures in two windows of 2 do not lock: {}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_exempt_by_default() {
    let mock = MockUpstream::start().await;
    let cfg = base(&mock)
        .auth_token(TOKEN)
        .set("gateway.auth.rateLimit", json!({"maxAttempts": 2, "windowMs": 60000, "lockoutMs": 60000}));
    let s = stack(cfg).await;
    for i in 0..6 {
        expect_unauthorized(&chat_with_auth(&s.gw, Some("Bearer bad")).await, &format!("wrong {i}"));
    }
    let r = chat_with_auth(&s.gw, Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(r.status, 200, "loopback is never locked out while exemptLoopback is true: {}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_endpoints_are_plain_404_with_or_without_auth() {
    let mock = MockUpstream::start().await;
    // chatCompletions.enabled defaults to false.
    let cfg = ConfigBuilder::with_mock(&mock).auth_token(TOKEN);
    let s = stack(cfg).await;
    let gw = &s.gw;
    for auth in [None, Some(format!("Bearer {TOKEN}")), Some("Bearer wrong".to_string())] {
        let with = |rb: reqwest::RequestBuilder| match &auth {
            Some(a) => rb.header("authorization", a.as_str()),
            None => rb,
        };
        send(with(json_body(gw.post("/v1/chat/completions"), &hello()))).await.expect_not_found();
        // The route check comes before the method check.
        send(with(gw.get("/v1/chat/completions"))).await.expect_not_found();
        send(with(gw.get("/v1/models"))).await.expect_not_found();
        send(with(gw.get("/v1/models/openclaw"))).await.expect_not_found();
        send(with(gw.get("/v1/models/openclaw%2Fmain"))).await.expect_not_found();
    }
    assert_eq!(mock.request_count(), 0);
    assert_eq!(send(gw.get("/healthz")).await.status, 200);

    // Explicitly disabled is the same.
    let cfg = ConfigBuilder::with_mock(&mock)
        .auth_token(TOKEN)
        .set("gateway.http.endpoints.chatCompletions.enabled", json!(false));
    let s = stack(cfg).await;
    send(s.gw.chat(&hello())).await.expect_not_found();
    send(s.gw.authed_get("/v1/models")).await.expect_not_found();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_plain_404() {
    let mock = MockUpstream::start().await;
    let s = stack(base(&mock).auth_token(TOKEN)).await;
    let gw = &s.gw;
    for path in ["/", "/v1", "/v1/nope", "/v1/chat", "/v1/chat/completions/extra", "/v2/chat/completions"] {
        send(gw.get(path)).await.expect_not_found();
        send(gw.authed_get(path)).await.expect_not_found();
        send(json_body(gw.post(path), &hello()).bearer_auth(TOKEN)).await.expect_not_found();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_is_405_with_allow_before_auth() {
    let mock = MockUpstream::start().await;
    let s = stack(base(&mock).auth_token(TOKEN)).await;
    let gw = &s.gw;
    let good = format!("Bearer {TOKEN}");
    for method in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
        for auth in [None, Some("Bearer wrong"), Some(good.as_str())] {
            let mut rb = gw.request(method.clone(), "/v1/chat/completions");
            if let Some(a) = auth {
                rb = rb.header("authorization", a);
            }
            let r = send(rb).await;
            assert_eq!(r.status, 405, "{method} with {auth:?}: {}", r.text);
            assert_eq!(r.text, "Method Not Allowed", "{method}");
            let allow = r.header("allow").unwrap_or_else(|| panic!("{method}: 405 without Allow"));
            assert_eq!(allow, "POST", "{method}");
        }
    }
    // `/v1/models` is GET only.
    let r = send(json_body(gw.post("/v1/models"), &hello())).await;
    assert_eq!(r.status, 405, "{}", r.text);
    assert!(r.header("allow").unwrap_or_default().contains("GET"), "{:?}", r.headers);
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_of_checks_route_method_auth_size_json_semantics() {
    let mock = MockUpstream::start().await;
    let cfg =
        base(&mock).auth_token(TOKEN).set("gateway.http.endpoints.chatCompletions.maxBodyBytes", json!(300));
    let s = stack(cfg).await;
    let gw = &s.gw;
    let big_bad_json = format!("{{not json {}", "x".repeat(1000));
    let post =
        |body: String| gw.post("/v1/chat/completions").header("content-type", "application/json").body(body);

    // method before auth (and before the body is looked at)
    let r = send(gw.get("/v1/chat/completions").body(big_bad_json.clone())).await;
    assert_eq!(r.status, 405, "{}", r.text);
    // auth before size
    expect_unauthorized(&send(post(big_bad_json.clone())).await, "oversized without auth");
    expect_unauthorized(&send(post(big_bad_json.clone()).bearer_auth("wrong")).await, "oversized wrong auth");
    // size before JSON
    let r = send(post(big_bad_json).bearer_auth(TOKEN)).await;
    let e = r.expect_error(413, "invalid_request_error");
    assert_eq!(e["message"], "Payload too large");
    // JSON before semantics
    let r = send(post("{\"model\": \"not-a-model\", ".into()).bearer_auth(TOKEN)).await;
    r.expect_error(400, "invalid_request_error");
    // semantics last
    let r = send(post(json!({"model": "not-a-model", "messages": []}).to_string()).bearer_auth(TOKEN)).await;
    let e = r.expect_error(400, "invalid_request_error");
    assert_eq!(e["param"], "model");
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_mode_refuses_a_non_loopback_bind() {
    harness::init_tracing();
    let mock = MockUpstream::start().await;
    let svc = harness::AgentSvc::start(&base(&mock).build()).await;
    // The listener handed over is still 127.0.0.1; `gateway.bind` decides the rule.
    for bind in ["lan", "0.0.0.0"] {
        let cfg =
            base(&mock).set("gateway.auth", json!({"mode": "none"})).set("gateway.bind", json!(bind)).build();
        let err =
            Gateway::try_start(&cfg, Some(&svc.url())).await.expect_err("mode none on a non-loopback bind");
        let msg = format!("{err:#}");
        assert!(msg.contains("gateway.auth") || msg.contains("gateway.bind"), "names the key: {msg}");
    }
    let cfg = base(&mock)
        .set("gateway.auth", json!({"mode": "none"}))
        .set("gateway.bind", json!("loopback"))
        .build();
    let gw = Gateway::start(&cfg, Some(&svc.url())).await;
    assert_eq!(chat_with_auth(&gw, None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_mode_refuses_a_non_loopback_bind_flag() {
    // `--bind lan` (GatewayOptions::bind) overrides a loopback `gateway.bind`: the
    // refusal is a config error naming `gateway.auth.mode`, before anything binds.
    let config = harness::parse_config(r#"{gateway: {auth: {mode: "none"}}}"#).expect("config");
    let opts = gateway_http::GatewayOptions { bind: Some("lan".into()), ..Default::default() };
    let e = gateway_http::start(config, opts).await.expect_err("mode none with --bind lan");
    assert!(matches!(e, gateway_http::GatewayError::Config(ref c) if c.key == "gateway.auth.mode"), "{e}");
}
