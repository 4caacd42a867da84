//! Faults end in a clean, bounded answer (issue "Hardening"): what a misbehaving
//! upstream, a hostile or slow client, or a stalled store can do to the pair,
//! and what the client sees instead, end to end over real sockets.

use e2e::prelude::*;

/// An upstream whose answer is a `data:` line that never ends: `502` as soon as
/// the line passes the bound (4 MiB), not at the run timeout, and the upstream
/// connection is dropped.
#[tokio::test]
async fn an_upstream_line_that_never_ends_is_a_502_in_bounded_time() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock).timeout_seconds(600.0)).await;
    mock.push(Behavior::EndlessLine);
    let started = Instant::now();
    let r = chat(&s, &ask("hello")).await;
    assert_eq!(r.status, 502, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["code"], "upstream_error");
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("over 4 MiB"), "{v}");
    assert!(mock.wait_for_disconnect(T).await, "the upstream connection is dropped");
    eprintln!("endless line: 502 after {:?}", started.elapsed());

    // Streaming: before the first token the error keeps its status too.
    mock.push(Behavior::EndlessLine);
    let r = send(s.gw.chat(&streamed("hello", json!({})))).await;
    assert_eq!(r.status, 502, "{}", r.text);
    assert_eq!(r.json()["error"]["code"], "upstream_error");
}

/// A provider that stops sending mid-answer ends the run after the provider's
/// idle timeout (`504`), not after `timeoutSeconds`.
#[tokio::test]
async fn an_upstream_that_stalls_mid_answer_times_out_after_the_idle_timeout() {
    let mock = MockUpstream::start().await;
    let cfg = config(&mock).timeout_seconds(600.0).set("models.providers.mock.idleTimeoutMs", json!(300));
    let s = stack(cfg).await;
    mock.push(Behavior::chunks(["Hel", "lo"]).with_delay(Duration::from_secs(30)));
    let started = Instant::now();
    let r = chat(&s, &ask("hello")).await;
    assert_eq!(r.status, 504, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["code"], "timeout");
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("300 ms"), "{v}");
    assert!(started.elapsed() < Duration::from_secs(25), "ended by the idle timeout, not the stall");
    assert!(mock.wait_for_disconnect(T).await, "the stalled upstream request is dropped");
}

/// A provider error inside the answer that says the request was at fault
/// (context too long) is the client's `400`, as SPEC §4 says, not a `502`.
#[tokio::test]
async fn an_in_stream_error_blaming_the_request_is_a_400() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock)).await;
    mock.push(Behavior::RawSse(vec![json!({"error": {
        "message": "This model's maximum context length is 8192 tokens.",
        "type": "invalid_request_error", "code": "context_length_exceeded"}})]));
    let r = chat(&s, &ask("a very long conversation")).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("maximum context length"), "{v}");
    // A server-side error in the answer stays the provider's fault.
    mock.push(Behavior::RawSse(vec![json!({"error": {"message": "overloaded", "type": "server_error"}})]));
    let r = chat(&s, &ask("again")).await;
    assert_eq!(r.status, 502, "{}", r.text);
}

/// A provider that lists its models accepts only those, in the agents' config
/// as in the `x-openclaw-model` header: a start-up error naming the key.
#[tokio::test]
async fn an_agent_model_the_provider_does_not_list_refuses_to_start() {
    let mock = MockUpstream::start().await;
    let cfg = config(&mock)
        .set("models.providers.mock.models", json!([{"id": "gpt-mock"}]))
        .set("agents.list", json!([{"id": "main", "model": "mock/not-listed"}]))
        .build();
    let e = AgentSvc::try_start(&cfg).await.expect_err("must refuse");
    assert!(e.to_string().contains("agents.list[0].model"), "{e}");
    let e = Gateway::try_start(&cfg, Some("127.0.0.1:1")).await.expect_err("must refuse");
    assert!(e.to_string().contains("agents.list[0].model"), "{e}");
}
