//! `GET /openapi.json` and what `scripts/api-conformance.sh` (schemathesis)
//! found: the served document is the committed file, every documented route
//! answers, and the request rules the document states hold on a real gateway
//! (embedded mode, the offline `echo` model).

use e2e::prelude::*;

const GATEWAY_TOKEN: &str = "openapi-e2e-token";

async fn gateway() -> Gateway {
    harness::init_tracing();
    let config = format!(
        r#"{{
          gateway: {{ auth: {{ mode: "token", token: "{GATEWAY_TOKEN}" }},
                     http: {{ endpoints: {{ chatCompletions: {{ enabled: true }} }} }} }},
          agents: {{ list: [ {{ id: "main", default: true }}, {{ id: "beta" }} ] }},
          session: {{ store: "memory" }},
        }}"#
    );
    Gateway::start(&config, None).await.with_bearer(GATEWAY_TOKEN)
}

fn committed_document() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway-http/openapi.json");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_document_is_the_committed_file_without_auth() {
    let gw = gateway().await;
    let r = send(gw.get("/openapi.json")).await;
    assert_eq!(r.status, 200, "body: {}", r.text);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text, committed_document(), "the served document differs from gateway-http/openapi.json");
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/openapi.json"]["get"].is_object());

    // Wrong method: 405 with `Allow`, like every route.
    let r = send(gw.post("/openapi.json")).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    // The browser guard applies here too.
    let r = send(gw.get("/openapi.json").header("origin", "https://evil.example")).await;
    r.expect_error(403, "forbidden");
}

/// Every documented operation is routed (the reverse, every route documented, is
/// a unit test of `gateway_http::routes`): none answers the router's 404 or 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers() {
    let gw = gateway().await;
    let doc: Value = serde_json::from_str(&committed_document()).expect("openapi.json is JSON");
    let paths = doc["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            if op["operationId"] == "websocketUpgrade" {
                continue;
            }
            let concrete = path.replace("{id}", "openclaw%2Fmain");
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let mut rb = gw.request(method.clone(), &concrete).bearer_auth(GATEWAY_TOKEN);
            if method == reqwest::Method::POST {
                rb = json_body(rb, &ask("hi"));
            }
            let r = send(rb).await;
            assert_eq!(r.status, 200, "{method} {path}: {}", r.text);
            checked += 1;
        }
    }
    assert_eq!(checked, 7, "operations checked");
}

// ---------------------------------------------------------------------------
// What schemathesis found (each failed before its fix)

/// A seed beyond what a double holds exactly used to be rounded silently
/// (2^53 + 1 ran as 2^53); the document says ±(2^53 − 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_beyond_2_pow_53_is_a_400() {
    let gw = gateway().await;
    for seed in ["9007199254740993", "9007199254740992", "-9007199254740993", "18446744073709551615", "1e300"]
    {
        let body = format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],"seed":{seed}}}"#);
        let rb = gw.post("/v1/chat/completions").bearer_auth(GATEWAY_TOKEN);
        let r = send(rb.header("content-type", "application/json").body(body)).await;
        let e = r.expect_error(400, "invalid_request_error");
        assert_eq!(e["param"], "seed", "seed {seed}: {e}");
    }
    for seed in [json!(9_007_199_254_740_991_i64), json!(-9_007_199_254_740_991_i64), json!(0), json!(42.0)] {
        let r = send(gw.chat(&with(ask("hi"), json!({"seed": seed})))).await;
        assert_eq!(r.status, 200, "seed {seed}: {}", r.text);
    }
}

fn assistant_call(call: Value) -> Value {
    json!({"messages": [
        user_msg("weather?"),
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]})
}

/// Tool-call arguments are JSON text, as at OpenAI: a string is carried as is,
/// anything else is a 400 naming `messages`; the call's `type` is `function`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assistant_tool_call_arguments_are_a_string() {
    let gw = gateway().await;
    for arguments in [json!("{\"city\":\"Paris\"}"), json!(""), json!("not json at all"), Value::Null] {
        let call = json!({"id": "call_1", "type": "function",
                          "function": {"name": "get_weather", "arguments": arguments}});
        let r = send(gw.chat(&assistant_call(call))).await;
        assert_eq!(r.status, 200, "arguments {arguments}: {}", r.text);
        assert_eq!(r.json()["choices"][0]["message"]["content"], "tool result: sunny");
    }
    for arguments in [json!({"city": "Paris"}), json!(["Paris"]), json!(3), json!(true)] {
        let call = json!({"id": "call_1", "type": "function",
                          "function": {"name": "get_weather", "arguments": arguments}});
        let r = send(gw.chat(&assistant_call(call))).await;
        let e = r.expect_error(400, "invalid_request_error");
        assert_eq!(e["param"], "messages", "arguments {arguments}: {e}");
    }
    let call =
        json!({"id": "call_1", "type": "retrieval", "function": {"name": "get_weather", "arguments": "{}"}});
    let e = send(gw.chat(&assistant_call(call))).await.expect_error(400, "invalid_request_error");
    assert_eq!(e["param"], "messages", "{e}");
}

/// `user` of a wrong type is a 400 even when `x-openclaw-session-key` (which
/// wins over it) is given: it used to be ignored then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_user_type_is_a_400_with_a_session_key_too() {
    let gw = gateway().await;
    for user in [json!({}), json!(5), json!(["alice"])] {
        let rb = gw.chat(&with(ask("hi"), json!({"user": user}))).header("x-openclaw-session-key", "k1");
        let e = send(rb).await.expect_error(400, "invalid_request_error");
        assert_eq!(e["param"], "user", "user {user}: {e}");
    }
    let rb = gw.chat(&with(ask("hi"), json!({"user": "alice"}))).header("x-openclaw-session-key", "k1");
    let r = send(rb).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.session_key(), "agent:main:k1");
}
