//! The browser edge and guessing (SPEC §3), end to end against a real gateway:
//! a web page from a foreign origin is refused before authentication (HTTP and
//! WebSocket), allowed origins get CORS, clients without `Origin` are
//! unchanged, a cross-site "simple" request cannot run, guessing the token from
//! loopback is slowed down and capped, and mode `trusted-proxy` believes the
//! identity header only from a trusted proxy.

use e2e::prelude::*;
use e2e::ws::{connect_params, WsClient};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio_tungstenite::tungstenite;

const EVIL: &str = "https://evil.example";
const APP: &str = "https://app.example.com";

async fn gateway(cfg: ConfigBuilder) -> (AgentSvc, Gateway) {
    harness::init_tracing();
    let text = cfg.build();
    let svc = AgentSvc::start(&text).await;
    let gw = Gateway::start(&text, Some(&svc.url())).await.with_bearer(TOKEN);
    (svc, gw)
}

fn hello() -> Value {
    json!({"model": "openclaw", "messages": [{"role": "user", "content": "hello"}]})
}

/// The status of a refused WebSocket upgrade, or 101 when it was accepted.
async fn upgrade_status(gw: &Gateway, headers: &[(&'static str, &str)]) -> u16 {
    match WsClient::try_open_with(gw.addr(), "/", headers).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

#[tokio::test]
async fn foreign_origins_are_refused_before_auth_allowed_ones_get_cors_and_others_are_unchanged() {
    let mock = MockUpstream::start().await;
    let (_svc, gw) = gateway(config(&mock).set("gateway.allowedOrigins", json!([APP]))).await;
    let chat = "/v1/chat/completions";

    // Foreign origin: 403 before auth (no token needed to be refused), HTTP and WebSocket.
    let r = send(json_body(gw.post(chat), &hello()).header("origin", EVIL)).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.json()["error"]["code"], "origin_not_allowed");
    let r = send(gw.chat(&hello()).header("origin", EVIL)).await;
    assert_eq!(r.status, 403, "the right token from a foreign page is refused too");
    assert_eq!(upgrade_status(&gw, &[("origin", EVIL)]).await, 403);
    let r = send(
        gw.request(reqwest::Method::OPTIONS, chat)
            .header("origin", EVIL)
            .header("access-control-request-method", "POST"),
    )
    .await;
    assert_eq!(r.status, 403, "no preflight for a foreign origin");
    // The classic: a cross-site text/plain form post (no preflight in browsers).
    let r = send(
        gw.post(chat).header("origin", EVIL).header("content-type", "text/plain").body(hello().to_string()),
    )
    .await;
    assert_eq!(r.status, 403);

    // The allowed origin: preflight answered, the request runs, CORS headers on the answer.
    let r = send(
        gw.request(reqwest::Method::OPTIONS, chat)
            .header("origin", APP)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type"),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert!(r.header("access-control-allow-headers").is_some_and(|h| h.contains("authorization")));
    assert!(r.header("access-control-allow-methods").is_some_and(|h| h.contains("POST")));
    let r = send(gw.chat(&hello()).header("origin", APP)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert!(r.header("access-control-expose-headers").is_some_and(|h| h.contains("x-openclaw-session-key")));
    assert_eq!(upgrade_status(&gw, &[("origin", APP)]).await, 101);

    // The gateway's own origin (reached by address) is same-origin: no CORS needed.
    let own = format!("http://{}", gw.addr());
    let r = send(gw.chat(&hello()).header("origin", own.as_str())).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(upgrade_status(&gw, &[("origin", own.as_str())]).await, 101);

    // No Origin (SDKs, curl, servers): exactly as before.
    let r = send(gw.chat(&hello())).await;
    assert_eq!(r.status, 200);
    assert_eq!(upgrade_status(&gw, &[]).await, 101);
    // …but a chat completion must still say it is JSON.
    let r =
        send(gw.post(chat).bearer_auth(TOKEN).header("content-type", "text/plain").body(hello().to_string()))
            .await;
    assert_eq!(r.status, 415);

    let metrics = send(gw.get("/metrics")).await.text;
    assert!(metrics.contains("openclaw_gateway_origin_refused_total 5"), "{metrics}");
}

/// One `connect` with a wrong token over a fresh WebSocket (the attack: a page
/// guessing the local gateway's token). Returns the error code it got.
async fn guess(gw: &Gateway, origin: Option<&str>) -> String {
    let headers: Vec<(&'static str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
    let mut ws = WsClient::try_open_with(gw.addr(), "/", &headers).await.expect("upgrade");
    let _challenge = ws.next_json().await;
    let res = ws.send_connect(connect_params(json!({"token": "wrong-guess"}))).await;
    assert_eq!(res["ok"], false, "{res}");
    res["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_from_loopback_is_slowed_and_capped_and_a_page_gets_locked_out() {
    let mock = MockUpstream::start().await;
    // The allowed page is an allowed origin, and still may not guess.
    let (_svc, gw) = gateway(
        config(&mock)
            .set("gateway.allowedOrigins", json!([APP]))
            .set("gateway.auth.rateLimit", json!({"maxAttempts": 5, "maxFailuresPerSecond": 20})),
    )
    .await;

    // Loopback without Origin is exempt from the lockout, but each wrong secret waits
    // longer: 250 ms, 500 ms, 1 s, …
    let t0 = Instant::now();
    for _ in 0..3 {
        assert_eq!(guess(&gw, None).await, "UNAUTHORIZED");
    }
    let sequential = t0.elapsed();
    assert!(sequential >= Duration::from_millis(1750), "three wrong secrets were answered in {sequential:?}");
    // The right token still works (never locked out), and resets the doubling.
    let (_ws, hello) = WsClient::connect(gw.addr(), json!({"token": TOKEN})).await;
    assert_eq!(hello["ok"], true);

    // Many guesses in parallel (what a page would do): at most the ceiling a second
    // get compared at all; the rest are refused unseen (RATE_LIMITED).
    let compared = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let guesses: Vec<_> = (0..200)
        .map(|_| {
            let (gw, compared, refused) = (&gw, compared.clone(), refused.clone());
            async move {
                match guess(gw, None).await.as_str() {
                    "UNAUTHORIZED" => compared.fetch_add(1, Ordering::Relaxed),
                    "RATE_LIMITED" => refused.fetch_add(1, Ordering::Relaxed),
                    other => panic!("unexpected answer {other}"),
                };
            }
        })
        .collect();
    futures::future::join_all(guesses).await;
    let took = start.elapsed().as_secs_f64();
    let (compared, refused) = (compared.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    let rate = compared as f64 / took;
    eprintln!(
        "guessing from loopback: 200 attempts in {took:.2} s, {compared} compared ({rate:.1} guesses/s), {refused} refused unseen"
    );
    // Before: 1,236 guesses/s. Now at most the ceiling (20/s), plus one second's worth.
    assert!((compared as f64) <= 20.0 * (took.ceil() + 1.0), "{compared} guesses compared in {took:.2} s");
    assert!(refused > 0);

    // A page (browser Origin) on loopback is not exempt: locked out after maxAttempts.
    // (Wait out this second's ceiling first, so only the lockout is at play.)
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(guess(&gw, Some(APP)).await);
    }
    let locked = codes.iter().filter(|c| *c == "RATE_LIMITED").count();
    assert!(locked >= 1, "a browser page was never locked out: {codes:?}");
    let metrics = send(gw.get("/metrics")).await.text;
    for series in [
        "openclaw_gateway_auth_failures_total",
        "openclaw_gateway_auth_delayed_total",
        "openclaw_gateway_auth_throttled_total",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(series) && !l.ends_with(" 0")),
            "{series} in {metrics}"
        );
    }
}

#[tokio::test]
async fn trusted_proxy_mode_believes_the_identity_header_only_from_a_trusted_proxy() {
    let mock = MockUpstream::start().await;
    let trusted = |proxies: Value| {
        ConfigBuilder::with_mock(&mock)
            .enable_chat_completions()
            .set("gateway.trustedProxies", proxies)
            .set(
                "gateway.auth",
                json!({"mode": "trusted-proxy", "trustedProxy": {
                    "userHeader": "x-forwarded-user", "requiredHeaders": ["x-forwarded-proto"], "allowLoopback": true}}),
            )
    };
    // The test's own address (loopback) is the proxy.
    let (_svc, gw) = gateway(trusted(json!(["127.0.0.1"]))).await;
    let chat = || json_body(gw.post("/v1/chat/completions"), &hello());
    let r = send(chat().header("x-forwarded-user", "nick@example.com").header("x-forwarded-proto", "https"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = send(chat().header("x-forwarded-user", "nick@example.com")).await;
    assert_eq!(r.status, 401, "a required header is missing");
    let r = send(chat().bearer_auth(TOKEN)).await;
    assert_eq!(r.status, 401, "no identity, and a bearer secret means nothing here");
    // WebSocket: the identity rides on the upgrade; `connect` needs no secret.
    let mut ws = WsClient::try_open_with(
        gw.addr(),
        "/",
        &[("x-forwarded-user", "nick@example.com"), ("x-forwarded-proto", "https")],
    )
    .await
    .expect("upgrade");
    let _challenge = ws.next_json().await;
    let res = ws.send_connect(connect_params(json!({}))).await;
    assert_eq!(res["ok"], true, "{res}");
    let mut ws = WsClient::try_open_with(gw.addr(), "/", &[]).await.expect("upgrade");
    let _challenge = ws.next_json().await;
    let res = ws.send_connect(connect_params(json!({"token": TOKEN}))).await;
    assert_eq!(res["error"]["code"], "UNAUTHORIZED", "{res}");

    // The same headers from an address that is not a trusted proxy are anyone's forgery.
    let (_svc2, gw2) = gateway(trusted(json!(["10.0.0.0/8"]))).await;
    let r = send(
        json_body(gw2.post("/v1/chat/completions"), &hello())
            .header("x-forwarded-user", "nick@example.com")
            .header("x-forwarded-proto", "https"),
    )
    .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn bad_security_settings_refuse_to_start_naming_the_key() {
    let mock = MockUpstream::start().await;
    let cases = [
        (config(&mock).set("gateway.allowedOrigins", json!(["evil.example"])), "gateway.allowedOrigins[0]"),
        (config(&mock).set("gateway.trustedProxies", json!(["10.0.0.0/40"])), "gateway.trustedProxies[0]"),
        (
            ConfigBuilder::with_mock(&mock).set(
                "gateway.auth",
                json!({"mode": "trusted-proxy", "trustedProxy": {"userHeader": "x-user"}}),
            ),
            "gateway.trustedProxies",
        ),
        (
            ConfigBuilder::with_mock(&mock).set("gateway.trustedProxies", json!(["127.0.0.1"])).set(
                "gateway.auth",
                json!({"mode": "trusted-proxy", "trustedProxy": {"userHeader": "x-user"}}),
            ),
            "gateway.trustedProxies[0]",
        ),
    ];
    for (cfg, key) in cases {
        let e = Gateway::try_start(&cfg.build(), Some("127.0.0.1:1")).await.expect_err("must refuse");
        assert!(e.to_string().contains(key), "{key}: {e}");
    }
}

/// Behind a trusted proxy, the lockout counts the clients it forwards (not the
/// proxy, which would lock everyone out), IPv6 clients per /64; from anyone
/// else `X-Forwarded-For` is ignored.
#[tokio::test]
async fn the_lockout_counts_forwarded_clients_behind_trusted_proxies_and_ipv6_per_64() {
    let mock = MockUpstream::start().await;
    let (_svc, gw) = gateway(
        config(&mock)
            // The test connects from loopback: that is the "proxy".
            .set("gateway.trustedProxies", json!(["127.0.0.1"]))
            .set("gateway.auth.rateLimit", json!({"maxAttempts": 2, "exemptLoopback": false})),
    )
    .await;
    let attempt = |xff: &'static str, token: &'static str| {
        let gw = &gw;
        async move {
            send(
                json_body(gw.post("/v1/chat/completions"), &hello())
                    .bearer_auth(token)
                    .header("x-forwarded-for", xff),
            )
            .await
            .status
        }
    };
    assert_eq!(attempt("203.0.113.9", "bad").await, 401);
    assert_eq!(attempt("203.0.113.9", "bad").await, 401);
    assert_eq!(attempt("203.0.113.9", TOKEN).await, 429, "that client is locked out");
    assert_eq!(attempt("203.0.113.10", TOKEN).await, 200, "another client behind the same proxy is not");
    // A forged left-most entry does not help: the right-most untrusted address counts.
    assert_eq!(attempt("1.1.1.1, 203.0.113.9", TOKEN).await, 429);
    // IPv6: one /64 is one client.
    assert_eq!(attempt("2001:db8:1:2::1", "bad").await, 401);
    assert_eq!(attempt("2001:db8:1:2::99", "bad").await, 401);
    assert_eq!(attempt("2001:db8:1:2::abc", TOKEN).await, 429);
    assert_eq!(attempt("2001:db8:1:3::1", TOKEN).await, 200);
}
