//! Quick checks of the mock upstream itself, over real HTTP with reqwest.

use e2e::mock::{Behavior, Gate, MockToolCall, MockUpstream};
use e2e::sse::{SseEvent, SseReader};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(5);

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("reqwest client")
}

async fn post(mock: &MockUpstream, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-self-test")
        .body(serde_json::to_vec(&body).expect("json"))
        .send()
        .await
        .expect("request to the mock")
}

fn chat(model: &str, text: &str, include_usage: bool) -> Value {
    let mut body = json!({
        "model": model,
        "stream": true,
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": text}],
    });
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// Reads the whole SSE body: the JSON events and whether `[DONE]` came last (and only once).
async fn sse_events(resp: reqwest::Response) -> (Vec<Value>, bool) {
    let mut reader = SseReader::new(resp);
    let events = reader.rest(T).await;
    assert!(reader.error().is_none(), "sse error: {:?}", reader.error());
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert!(data.iter().filter(|d| **d == "[DONE]").count() <= 1, "one [DONE]: {data:?}");
    let done_last = events.last().is_some_and(SseEvent::is_done);
    let json: Vec<Value> = events.iter().filter_map(|e| e.json.clone()).collect();
    assert_eq!(json.len() + usize::from(done_last), events.len(), "every event is JSON: {data:?}");
    (json, done_last)
}

/// The non-null `choices[0].finish_reason`s of JSON chunks.
fn finish_reasons(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter_map(|e| e["choices"].get(0))
        .map(|c| &c["finish_reason"])
        .filter(|f| !f.is_null())
        .collect()
}

/// The `choices[0].delta.content` texts of JSON chunks, concatenated.
fn text_of(events: &[Value]) -> String {
    events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect()
}

#[tokio::test]
async fn sse_shape_and_usage_only_when_asked() {
    let mock = MockUpstream::start().await;
    mock.push(Behavior::text("hello big world").with_usage(5, 3));
    mock.push(Behavior::text("hello big world").with_usage(5, 3));

    let resp = post(&mock, chat("m1", "hi", true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (events, done) = sse_events(resp).await;
    assert!(done, "[DONE] must end the stream");
    let id = events[0]["id"].clone();
    for e in &events {
        assert_eq!(e["id"], id);
        assert_eq!(e["object"], "chat.completion.chunk");
        assert_eq!(e["model"], "m1");
        assert!(e["created"].is_u64());
    }
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let content: Vec<&str> = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(content, vec!["hello ", "big ", "world"]);
    assert_eq!(finish_reasons(&events), vec![&json!("stop")]);
    // Every choice chunk carries finish_reason (null until the end).
    for e in events.iter().filter(|e| !e["choices"].as_array().expect("choices").is_empty()) {
        assert!(e["choices"][0].as_object().expect("choice").contains_key("finish_reason"));
    }
    let last = events.last().expect("events");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}));

    let (events, done) = sse_events(post(&mock, chat("m1", "hi", false)).await).await;
    assert!(done);
    assert!(events.iter().all(|e| e.get("usage").is_none()), "no usage chunk unless asked");
    assert_eq!(mock.disconnects(), 0, "complete answers are not disconnects");
}

#[tokio::test]
async fn records_requests_and_default_echo() {
    let mock = MockUpstream::start().await;
    let (events, _) = sse_events(post(&mock, chat("m1", "echo me please", true)).await).await;
    assert_eq!(text_of(&events), "echo me please");
    // Echo usage: (request messages, pieces).
    assert_eq!(events.last().expect("usage")["usage"]["prompt_tokens"], 2);
    assert_eq!(events.last().expect("usage")["usage"]["completion_tokens"], 3);

    assert!(mock.wait_for_requests(1, T).await);
    let r = mock.last_request().expect("recorded");
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.header("authorization").as_deref(), Some("Bearer sk-self-test"));
    assert_eq!(r.model(), Some("m1"));
    assert!(r.stream());
    assert!(r.include_usage());
    assert_eq!(r.roles(), vec!["system", "user"]);
    assert_eq!(r.last_user_text().as_deref(), Some("echo me please"));
    assert!(!mock.wait_for_requests(2, Duration::from_millis(50)).await);
}

#[tokio::test]
async fn per_model_wins_over_queue_then_queue_then_default() {
    let mock = MockUpstream::start().await;
    mock.set_for_model("m-fail", Behavior::error(500, "primary down"));
    mock.push(Behavior::text("queued"));

    let r = post(&mock, chat("m-fail", "x", false)).await;
    assert_eq!(r.status(), 500);
    let body: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    assert_eq!(body["error"]["message"], "primary down");

    let (ev, _) = sse_events(post(&mock, chat("m-ok", "x", false)).await).await;
    assert_eq!(text_of(&ev), "queued");

    mock.set_default(Behavior::text("the default"));
    let (ev, _) = sse_events(post(&mock, chat("m-ok", "x", false)).await).await;
    assert_eq!(text_of(&ev), "the default");
    assert_eq!(mock.request_count(), 3);
}

#[tokio::test]
async fn json_and_tool_call_shapes() {
    let mock = MockUpstream::start().await;
    mock.push(Behavior::json_completion("plain", (3, 1)));
    let r = post(&mock, chat("m", "x", false)).await;
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    assert_eq!(body["choices"][0]["message"]["content"], "plain");

    mock.push(Behavior::tool_calls(vec![
        MockToolCall::new("call_a", "get_weather", r#"{"city":"Paris"}"#),
        MockToolCall::without_id("get_time", r#"{"tz":"UTC"}"#),
    ]));
    let (events, done) = sse_events(post(&mock, chat("m", "x", true)).await).await;
    assert!(done);
    let frags: Vec<&Value> = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"].as_array())
        .flat_map(|a| a.iter())
        .collect();
    assert_eq!(frags.len(), 6, "3 fragments per call");
    assert_eq!(frags[0]["index"], 0);
    assert_eq!(frags[0]["id"], "call_a");
    assert_eq!(frags[0]["type"], "function");
    assert_eq!(frags[0]["function"]["name"], "get_weather");
    assert!(frags[1].get("id").is_none() && frags[1]["function"].get("name").is_none());
    assert_eq!(frags[3]["index"], 1);
    assert!(frags[3].get("id").is_none(), "without_id streams no id");
    let args0: String = frags[..3].iter().filter_map(|f| f["function"]["arguments"].as_str()).collect();
    assert_eq!(args0, r#"{"city":"Paris"}"#);
    assert_eq!(finish_reasons(&events), vec![&json!("tool_calls")]);
}

#[tokio::test]
async fn reset_and_malformed_break_the_stream() {
    let mock = MockUpstream::start().await;
    mock.push(Behavior::ResetAfter { chunks: vec!["par".into(), "tial".into()] });
    let mut reader = SseReader::new(post(&mock, chat("m", "x", false)).await);
    let events = reader.rest(T).await;
    assert!(reader.error().is_some(), "the client must see a broken body");
    let chunks: Vec<Value> = events.iter().map(|e| e.value().clone()).collect();
    assert_eq!(text_of(&chunks), "partial");
    assert_eq!(mock.disconnects(), 0, "a deliberate reset is not a client disconnect");

    mock.push(Behavior::Malformed);
    let mut reader = SseReader::new(post(&mock, chat("m", "x", false)).await);
    let events = reader.rest(T).await;
    assert!(reader.error().is_none(), "sse framing is fine: {:?}", reader.error());
    let bad = events.iter().any(|e| !e.is_done() && e.json.is_none());
    assert!(bad, "a data line that is not JSON");
}

#[tokio::test]
async fn detects_client_disconnect_mid_stream() {
    let mock = MockUpstream::start().await;
    mock.push(Behavior::trickle("w", 100, Duration::from_millis(20)));
    let mut reader = SseReader::new(post(&mock, chat("m", "x", false)).await);
    for _ in 0..3 {
        let ev = reader.next(T).await.expect("more events");
        assert!(!ev.data.is_empty());
    }
    assert_eq!(mock.in_flight(), 1);
    let dropped_at = Instant::now();
    drop(reader);
    assert!(mock.wait_for_disconnect(T).await, "the mock must notice the client going away");
    let latency = mock.last_disconnect_at().expect("instant").duration_since(dropped_at);
    assert!(latency < Duration::from_millis(500), "noticed after {latency:?}");
    assert_eq!(mock.disconnects(), 1);
    assert_eq!(mock.in_flight(), 0);
}

#[tokio::test]
async fn detects_client_disconnect_while_hanging_or_gated() {
    let mock = MockUpstream::start().await;
    mock.push(Behavior::Hang);
    let m = mock.base_url();
    let task = tokio::spawn(async move {
        let _ = client()
            .post(format!("{m}/chat/completions"))
            .header("content-type", "application/json")
            .body(r#"{"model":"m","messages":[]}"#)
            .send()
            .await;
    });
    assert!(mock.wait_for_requests(1, T).await);
    assert_eq!(mock.disconnects(), 0);
    let dropped_at = Instant::now();
    task.abort();
    assert!(mock.wait_for_disconnect(T).await, "hang: the mock must notice the client going away");
    let latency = mock.last_disconnect_at().expect("instant").duration_since(dropped_at);
    assert!(latency < Duration::from_millis(500), "noticed after {latency:?}");

    // A gate holds the answer until opened; then it completes normally.
    let gate = Gate::new();
    mock.push(Behavior::text("after gate").gated(&gate));
    let m = mock.base_url();
    let pending = tokio::spawn(async move {
        let r = client()
            .post(format!("{m}/chat/completions"))
            .header("content-type", "application/json")
            .body(r#"{"model":"m","stream":true,"messages":[]}"#)
            .send()
            .await
            .expect("response");
        sse_events(r).await
    });
    assert!(mock.wait_for_requests(2, T).await);
    assert!(!pending.is_finished());
    gate.open();
    let (events, done) = pending.await.expect("task");
    assert!(done);
    assert_eq!(text_of(&events), "after gate");
    assert_eq!(mock.disconnects(), 1);
}

#[tokio::test]
async fn delay_then_holds_the_headers() {
    let mock = MockUpstream::start().await;
    mock.push(Behavior::text("late").delayed(Duration::from_millis(300)));
    let t0 = Instant::now();
    let resp = post(&mock, chat("m", "x", false)).await;
    assert!(t0.elapsed() >= Duration::from_millis(300), "headers after the delay");
    let (events, _) = sse_events(resp).await;
    assert!(!events.is_empty());
}
