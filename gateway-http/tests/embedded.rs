//! Smoke tests of `gateway_http::start` in embedded mode: a real agent-svc in
//! the same process (memory store, default `echo` agent), reached over gRPC.

use gateway_http::{start, GatewayOptions};
use serde_json::{json, Value};
use services::config::{parse, ConfigSource};
use tokio::net::TcpListener;

const CONFIG: &str = r#"{
  gateway: { auth: { mode: "token", token: "t" }, http: { endpoints: { chatCompletions: { enabled: true } } } },
  session: { store: "memory" },
}"#;

async fn gateway() -> gateway_http::GatewayHandle {
    let config = parse(CONFIG, ConfigSource::Defaults).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start(config, GatewayOptions { listener: Some(listener), ..Default::default() }).await.unwrap()
}

#[tokio::test]
async fn echo_round_trip() {
    let gw = gateway().await;
    assert!(gw.embedded_agent_svc().is_some());
    let base = format!("http://{}", gw.local_addr());
    let c = reqwest::Client::new();

    assert_eq!(c.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);

    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("t")
        .json(&json!({"model": "openclaw", "user": "alice", "messages": [{"role": "user", "content": "hello there"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-openclaw-session-key"], "agent:main:openai-user:alice");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "openclaw");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["choices"][0]["message"]["content"].as_str().unwrap().contains("hello there"), "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // Streaming: the same answer as chunks, ending in [DONE].
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("t")
        .json(&json!({"stream": true, "messages": [{"role": "user", "content": "stream me"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let content: String = text
        .split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert!(content.contains("stream me"), "{text}");

    // Validation by agent-svc comes back as a 400 naming the field.
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("t")
        .json(&json!({"temperature": 3, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "temperature");

    // Unknown agent by header.
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("t")
        .header("x-openclaw-agent-id", "ghost")
        .json(&json!({"messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["message"], "Unknown agent 'ghost'.");

    let v: Value =
        c.get(format!("{base}/v1/models")).bearer_auth("t").send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["openclaw", "openclaw/default", "openclaw/main"]);

    // The two finished runs (JSON and SSE) recorded the gateway's own overhead.
    let m = c.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("openclaw_gateway_overhead_seconds_count 2"), "{m}");
    // /readyz above recorded agent-svc as up; the embedded agent-svc's own series are included.
    assert!(m.contains("openclaw_gateway_agent_svc_up 1"), "{m}");
    assert!(m.contains("openclaw_agent_runs_total"), "{m}");

    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn config_errors_refuse_to_start() {
    let config = parse(r#"{gateway: {auth: {mode: "none"}}}"#, ConfigSource::Defaults).unwrap();
    let opts = GatewayOptions { bind: Some("lan".into()), ..Default::default() };
    let e = start(config, opts).await.unwrap_err();
    assert!(matches!(e, gateway_http::GatewayError::Config(ref c) if c.key == "gateway.auth.mode"), "{e}");
}
