//! gateway-http end to end, SPEC §4 "Streaming" and "Cancellation": SSE read the
//! way `EventSource` reads it ([`e2e::sse`]), from a real gateway in front of a
//! real agent-svc whose provider is the mock upstream.

use e2e::prelude::*;
use std::collections::BTreeMap;

/// Checks every SPEC rule a streamed answer that did not end in an error must
/// follow, and returns its JSON chunks.
fn check_stream(r: &SseReply, model: &str, usage_expected: bool) -> Vec<Value> {
    assert_eq!(r.status, 200, "{}", r.raw);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct:?}");
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("x-accel-buffering"), Some("no"));
    assert!(r.header("x-openclaw-session-key").is_some_and(|k| k.starts_with("agent:")), "{:?}", r.headers);

    // `[DONE]` exactly once, last; everything else is JSON.
    assert!(r.events.last().is_some_and(|e| e.is_done()), "ends with [DONE]: {}", r.raw);
    assert_eq!(r.events.iter().filter(|e| e.is_done()).count(), 1, "{}", r.raw);
    let chunks = r.chunks();
    assert!(chunks.len() >= 2, "{}", r.raw);
    for c in &chunks {
        assert!(c.get("error").is_none(), "no error event on a successful stream: {c}");
    }

    // Shared fields.
    let id = chunks[0]["id"].as_str().expect("id").to_string();
    assert!(!id.is_empty());
    let created = chunks[0]["created"].as_u64().expect("created");
    for c in &chunks {
        assert_eq!(c["id"], id.as_str(), "{c}");
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(c["created"], created, "{c}");
        assert_eq!(c["model"], model, "{c}");
    }

    // Role only in the first delta, never empty.
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "first chunk: {}", chunks[0]);
    for c in &chunks[1..] {
        if let Some(d) = c.pointer("/choices/0/delta") {
            assert!(d.get("role").is_none(), "role after the first chunk: {c}");
        }
    }

    // `finish_reason` present on every choice, null but on exactly one chunk.
    let with_choices: Vec<&Value> =
        chunks.iter().filter(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty())).collect();
    let mut finals = Vec::new();
    for (i, c) in with_choices.iter().enumerate() {
        let choice = c["choices"][0].as_object().expect("choice object");
        assert_eq!(c["choices"].as_array().map(Vec::len), Some(1), "{c}");
        assert_eq!(choice.get("index"), Some(&json!(0)), "{c}");
        let fr = choice.get("finish_reason").unwrap_or_else(|| panic!("finish_reason missing: {c}"));
        match fr {
            Value::Null => {}
            Value::String(s) => {
                assert!(!s.is_empty(), "finish_reason \"\": {c}");
                finals.push(i);
            }
            other => panic!("finish_reason {other}: {c}"),
        }
    }
    assert_eq!(finals.len(), 1, "exactly one chunk has a finish_reason: {}", r.raw);
    assert_eq!(finals[0], with_choices.len() - 1, "the finish chunk is the last chunk with choices");
    assert_eq!(
        with_choices[finals[0]]["choices"][0]["delta"],
        json!({}),
        "the finish chunk's delta is empty"
    );

    // Usage: only on a last `choices: []` chunk, only when asked for.
    let last = chunks.last().expect("a chunk");
    let usage_chunks = chunks.len() - with_choices.len();
    if usage_expected {
        assert_eq!(usage_chunks, 1, "one usage chunk: {}", r.raw);
        assert_eq!(last["choices"], json!([]), "the usage chunk is last: {last}");
        let u = &last["usage"];
        let (p, c, t) =
            (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64(), u["total_tokens"].as_u64());
        assert!(p.is_some() && c.is_some() && t == Some(p.unwrap_or(0) + c.unwrap_or(0)), "usage {u}");
    } else {
        assert_eq!(usage_chunks, 0, "no usage chunk unless asked for: {}", r.raw);
    }
    let earlier = if usage_expected { &chunks[..chunks.len() - 1] } else { &chunks[..] };
    for c in earlier {
        assert!(c.get("usage").is_none_or(Value::is_null), "usage before the usage chunk: {c}");
    }
    chunks
}

fn finish_reason(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c.pointer("/choices/0/finish_reason").and_then(Value::as_str))
        .next()
        .expect("a finish_reason")
        .to_string()
}

fn content(chunks: &[Value]) -> String {
    chunks.iter().filter_map(|c| c.pointer("/choices/0/delta/content").and_then(Value::as_str)).collect()
}

/// The session of a cut run: its user message and the interrupted assistant
/// message (stored after the run's stream is gone: polled). Returns the text
/// the assistant message kept.
async fn interrupted_answer(s: &Stack, key: &str, question: &str) -> String {
    let h = s.svc.history_with(key, 2, T).await;
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(role_text(&h[0]), rt("user", question));
    assert!(!h[0].interrupted);
    let (role, text) = role_text(&h[1]);
    assert_eq!(role, "assistant");
    assert!(h[1].interrupted, "the partial answer is marked interrupted");
    text
}

// ---------------------------------------------------------------------------
// Shape

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_stream_headers_and_chunk_shape() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock)).await;
    mock.push(Behavior::text("Hello streaming world"));
    let r = read_stream(s.gw.chat(&streamed("hi", json!({"model": "openclaw/main", "user": "sse"})))).await;
    let chunks = check_stream(&r, "openclaw/main", false);
    assert_eq!(content(&chunks), "Hello streaming world");
    assert_eq!(finish_reason(&chunks), "stop");
    assert_eq!(r.header("x-openclaw-session-key"), Some("agent:main:openai-user:sse"));
    assert!(mock.last_request().expect("request").include_usage(), "the upstream is always asked for usage");
    // Content deltas carry only content.
    for c in &chunks[1..] {
        if let Some(d) = c.pointer("/choices/0/delta").and_then(Value::as_object) {
            if d.contains_key("content") {
                assert!(d.keys().all(|k| k == "content"), "{c}");
            }
        }
    }

    // Absent model: `openclaw` in every chunk; stateless and explicit session keys on SSE too.
    let r = read_stream(s.gw.chat(&streamed("hi", json!({})))).await;
    check_stream(&r, "openclaw", false);
    let key = r.header("x-openclaw-session-key").expect("session key header");
    assert!(key.starts_with("agent:main:openai:"), "{key}");
    let r = read_stream(
        s.gw.chat(&streamed("hi", json!({"model": "openclaw:main"})))
            .header("x-openclaw-session-key", "sse-key"),
    )
    .await;
    check_stream(&r, "openclaw:main", false);
    assert_eq!(r.header("x-openclaw-session-key"), Some("agent:main:sse-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_chunk_only_with_include_usage() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock)).await;

    mock.push(Behavior::text("counted answer").with_usage(21, 4));
    let r = read_stream(s.gw.chat(&streamed("hi", json!({"stream_options": {"include_usage": true}})))).await;
    let chunks = check_stream(&r, "openclaw", true);
    assert_eq!(
        chunks.last().expect("usage chunk")["usage"],
        json!({"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25}),
        "the provider's real usage"
    );
    assert_eq!(content(&chunks), "counted answer");

    for extra in
        [json!({"stream_options": {"include_usage": false}}), json!({}), json!({"stream_options": {}})]
    {
        mock.push(Behavior::text("uncounted").with_usage(21, 4));
        let r = read_stream(s.gw.chat(&streamed("hi", extra.clone()))).await;
        let chunks = check_stream(&r, "openclaw", false);
        assert_eq!(content(&chunks), "uncounted", "{extra}");
        assert!(mock.last_request().expect("request").include_usage(), "{extra}: upstream still asked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_reason_length_in_a_stream() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock)).await;
    mock.push(Behavior::text("trunc ated").with_finish("length"));
    let r = read_stream(s.gw.chat(&streamed("hi", json!({"max_tokens": 2})))).await;
    let chunks = check_stream(&r, "openclaw", false);
    assert_eq!(finish_reason(&chunks), "length");
    assert_eq!(content(&chunks), "trunc ated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_tool_calls_carry_index_and_first_fragment_fields() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock)).await;
    let weather = r#"{"city":"Paris","unit":"celsius"}"#;
    let time = r#"{"tz":"Europe/Paris"}"#;
    mock.push(
        Behavior::tool_calls(vec![
            MockToolCall::new("call_abc", "get_weather", weather),
            MockToolCall::without_id("get_time", time),
        ])
        .with_fragments(3),
    );
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
    ]);
    let r = read_stream(s.gw.chat(&streamed("weather and time?", json!({"tools": tools})))).await;
    let chunks = check_stream(&r, "openclaw", false);
    assert_eq!(finish_reason(&chunks), "tool_calls");

    // (index → (id, name, arguments, fragments)), in the order of first appearance.
    let mut calls: BTreeMap<u64, (String, String, String, usize)> = BTreeMap::new();
    let mut order = Vec::new();
    for c in &chunks {
        let Some(deltas) = c.pointer("/choices/0/delta/tool_calls").and_then(Value::as_array) else {
            continue;
        };
        for d in deltas {
            let index =
                d["index"].as_u64().unwrap_or_else(|| panic!("a tool-call fragment without index: {c}"));
            let first = !calls.contains_key(&index);
            if first {
                order.push(index);
                let id = d["id"].as_str().unwrap_or_else(|| panic!("first fragment without id: {c}"));
                assert!(!id.is_empty(), "empty id: {c}");
                assert_eq!(d["type"], "function", "first fragment's type: {c}");
                let name = d.pointer("/function/name").and_then(Value::as_str);
                let name = name.unwrap_or_else(|| panic!("first fragment without function.name: {c}"));
                assert!(!name.is_empty(), "{c}");
                calls.insert(index, (id.to_string(), name.to_string(), String::new(), 0));
            }
            let entry = calls.get_mut(&index).expect("call");
            if let Some(a) = d.pointer("/function/arguments").and_then(Value::as_str) {
                entry.2.push_str(a);
            }
            entry.3 += 1;
        }
    }
    assert_eq!(order, vec![0, 1], "contiguous 0-based indexes, one per parallel call");
    let (id0, name0, args0, frags0) = &calls[&0];
    assert_eq!((id0.as_str(), name0.as_str(), args0.as_str()), ("call_abc", "get_weather", weather));
    assert!(*frags0 >= 2, "the arguments arrived in fragments ({frags0})");
    let (id1, name1, args1, _) = &calls[&1];
    assert!(id1.starts_with("call_") && id1 != "call_abc", "a call with no upstream id gets call_<n>: {id1}");
    assert_eq!((name1.as_str(), args1.as_str()), ("get_time", time));
    assert!(content(&chunks).is_empty());
}

/// A real answer is hundreds to thousands of tokens, each its own upstream chunk
/// and its own gRPC message between agent-svc and the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_answers_of_many_chunks_arrive_whole() {
    const PIECES: usize = 3000;
    /// A few rounds, each through a fresh gateway (a fresh gRPC connection): the
    /// failure this guards against depends on timing.
    const ROUNDS: usize = 5;
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock)).await;
    let pieces = numbered_words("t", PIECES);
    let full: String = pieces.concat();
    mock.set_default(Behavior::chunks(pieces).with_usage(10, PIECES as u32));

    let cfg = config(&mock).build();
    for round in 0..ROUNDS {
        let gw = Gateway::start(&cfg, Some(&s.svc.url())).await.with_bearer(TOKEN);
        let body = json!({"messages": [{"role": "user", "content": "a long answer please"}]});
        let r = send(gw.chat(&body)).await;
        assert_eq!(r.status, 200, "non-streaming, round {round}: {}", r.text);
        assert_eq!(r.json()["choices"][0]["message"]["content"].as_str(), Some(full.as_str()));

        let gw = Gateway::start(&cfg, Some(&s.svc.url())).await.with_bearer(TOKEN);
        let body = streamed("a long answer please", json!({"stream_options": {"include_usage": true}}));
        let r = read_stream(gw.chat(&body)).await;
        let chunks = check_stream(&r, "openclaw", true);
        assert_eq!(content(&chunks), full, "streaming, round {round}: every chunk arrived");
        assert_eq!(chunks.last().expect("usage")["usage"]["completion_tokens"], PIECES);
    }
}

// ---------------------------------------------------------------------------
// Delivery as produced, keep-alive

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_arrive_as_the_provider_produces_them() {
    const GAP: Duration = Duration::from_millis(200);
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock)).await;
    let pieces = ["one ", "two ", "three ", "four ", "five"];
    mock.push(Behavior::chunks(pieces).with_delay(GAP));
    let resp = open(s.gw.chat(&streamed("count", json!({})))).await;
    assert_eq!(resp.status(), 200);
    let mut reader = SseReader::new(resp);

    let role = reader.next(T).await.expect("role chunk");
    assert_eq!(role.value()["choices"][0]["delta"]["role"], "assistant");
    let first = reader.next(T).await.expect("first content chunk");
    assert_eq!(first.value()["choices"][0]["delta"]["content"], "one ");
    // Ordering, not a stopwatch: when the first piece reaches the client the
    // upstream is still answering (four more pieces, GAP apart, to go).
    assert_eq!(mock.in_flight(), 1, "the first chunk arrived before the upstream finished");
    let upstream_started = mock.last_request().expect("request").received_at;
    let last_piece_produced_earliest = upstream_started + GAP * (pieces.len() as u32 - 1);
    assert!(
        first.at < last_piece_produced_earliest,
        "first chunk not held back until the answer was complete"
    );

    let rest = reader.rest(T).await;
    let contents: Vec<(String, Instant)> =
        rest.iter().filter_map(|e| Some((e.content()?.to_string(), e.at))).collect();
    let texts: Vec<&str> = contents.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(texts, &pieces[1..], "every piece as its own chunk, in order");
    let last_at = contents.last().expect("last piece").1;
    assert!(
        last_at.duration_since(first.at) >= GAP * 2,
        "pieces produced {GAP:?} apart were delivered spread out, not in one burst: {:?}",
        last_at.duration_since(first.at)
    );
    assert!(rest.last().is_some_and(|e| e.is_done()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_comments_while_the_run_is_silent() {
    // `gateway_http::start` always uses the SPEC's 15 s; the same router with a
    // shorter interval (ChatSettings.keep_alive) is served here.
    const KA: Duration = Duration::from_millis(150);
    let mock = MockUpstream::start().await;
    let cfg = config(&mock).build();
    let svc = AgentSvc::start(&cfg).await;
    let gw = Gateway::start_with_keep_alive(&cfg, &svc.url(), KA).await.with_bearer(TOKEN);

    // Silent before the first token: the stream is committed with the role chunk and comments.
    let gate = Gate::new();
    mock.push(Behavior::text("after silence").gated(&gate));
    let resp = open(gw.chat(&streamed("wait", json!({})))).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap_or_default().starts_with("text/event-stream"));
    let mut reader = SseReader::new(resp);
    let count = |raw: &str| raw.matches(": keep-alive\n").count();
    assert!(
        reader.wait_raw(T, |raw| count(raw) >= 3).await,
        "keep-alive comments while silent: {:?}",
        reader.raw_text()
    );
    let before_answer = count(&reader.raw_text());
    gate.open();
    let events = reader.rest(T).await;
    let raw = reader.raw_text();
    let first_content = raw.find("\"content\"").expect("content in the body");
    assert!(raw[..first_content].matches(": keep-alive\n").count() >= before_answer, "{raw:?}");
    assert!(raw.starts_with("data: {"), "the role chunk comes first: {raw:?}");
    assert_eq!(events.first().expect("role").value()["choices"][0]["delta"]["role"], "assistant");
    let text = content_of(&events);
    assert_eq!(text, "after silence");
    assert!(events.last().is_some_and(|e| e.is_done()));

    // Silent between two tokens.
    mock.push(Behavior::chunks(["tick ", "tock"]).with_delay(KA * 5));
    let r = read_stream(gw.chat(&streamed("again", json!({})))).await;
    check_stream(&r, "openclaw", false);
    let (a, b) = (r.raw.find("\"tick \"").expect("tick"), r.raw.find("\"tock\"").expect("tock"));
    assert!(r.raw[a..b].contains("\n: keep-alive\n"), "a comment between the two tokens: {:?}", r.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_run_that_then_times_out_ends_with_an_error_event() {
    const KA: Duration = Duration::from_millis(100);
    let mock = MockUpstream::start().await;
    let cfg = config(&mock).timeout_seconds(0.6).build();
    let svc = AgentSvc::start(&cfg).await;
    let gw = Gateway::start_with_keep_alive(&cfg, &svc.url(), KA).await.with_bearer(TOKEN);
    mock.push(Behavior::Hang);
    // Committed (role chunk + comments) before the run fails: the failure is an SSE error event.
    let r = read_stream(gw.chat(&streamed("hang", json!({})))).await;
    assert_eq!(r.status, 200);
    assert!(r.raw.contains("\n: keep-alive\n") || r.raw.contains("\r\n: keep-alive"), "{:?}", r.raw);
    let n = r.events.len();
    assert!(r.events[n - 1].is_done(), "{}", r.raw);
    let err = r.events[n - 2].value();
    assert_eq!(err["error"]["code"], "timeout", "{err}");
    assert_eq!(err["error"]["type"], "api_error", "{err}");
    assert_eq!(r.events[0].value()["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(n, 3, "role chunk, error, [DONE]: {}", r.raw);
    assert!(mock.wait_for_disconnect(CANCEL_BOUND).await);
}

/// SPEC §4: "While a run is silent for 15 s, a comment line `: keep-alive` is
/// sent" and the session key header is "also on SSE". A streaming turn queued
/// behind another turn of its session is silent for as long as that turn runs
/// (up to `timeoutSeconds`); the client must still get the SSE head and keep-alive
/// comments meanwhile, or any client/proxy read timeout drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_streaming_turn_gets_its_head_and_keep_alives_while_it_waits() {
    const KA: Duration = Duration::from_millis(150);
    /// Many keep-alive intervals: the head is due after one.
    const QUEUED_WAIT: Duration = Duration::from_secs(2);
    let mock = MockUpstream::start().await;
    let cfg = config(&mock).build();
    let svc = AgentSvc::start(&cfg).await;
    let gw =
        std::sync::Arc::new(Gateway::start_with_keep_alive(&cfg, &svc.url(), KA).await.with_bearer(TOKEN));
    let gate = Gate::new();
    mock.push(Behavior::text("first answer").gated(&gate));
    let first = {
        let gw = gw.clone();
        let body = json!({"user": "queued", "messages": [{"role": "user", "content": "first"}]});
        tokio::spawn(async move { send(gw.chat(&body)).await })
    };
    assert!(mock.wait_for_requests(1, T).await, "turn 1 is running, held by the gate");

    // Turn 2 waits behind turn 1 (the gate stays closed for all of this block).
    let second = gw.chat(&streamed("second", json!({"user": "queued"}))).send();
    let head = tokio::time::timeout(QUEUED_WAIT, second).await;
    let head_while_queued = head.is_ok();
    let mut keep_alive_while_queued = false;
    let mut reader = None;
    if let Ok(resp) = head {
        let resp = resp.expect("response");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers().get("x-openclaw-session-key").and_then(|v| v.to_str().ok()),
            Some("agent:main:openai-user:queued")
        );
        let mut rd = SseReader::new(resp);
        keep_alive_while_queued = rd.wait_raw(QUEUED_WAIT, |raw| raw.contains(": keep-alive\n")).await;
        reader = Some(rd);
    }
    assert!(!gate.is_open());
    gate.open();
    let first = tokio::time::timeout(T, first).await.expect("turn 1 ends").expect("task");
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(
        head_while_queued,
        "no SSE head within {QUEUED_WAIT:?} while the turn waited in its session's queue"
    );
    assert!(keep_alive_while_queued, "no `: keep-alive` while the turn waited in its session's queue");
    let mut reader = reader.expect("reader");
    let events = reader.rest(T).await;
    let text = content_of(&events);
    assert_eq!(text, "second", "turn 2 ran after turn 1");
}

// ---------------------------------------------------------------------------
// Errors in a stream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_after_the_stream_began_is_an_error_event_then_done() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock)).await;
    mock.push(Behavior::ResetAfter { chunks: vec!["partial ".into(), "answer".into()] });
    let r = read_stream(s.gw.chat(&streamed("hi", json!({"stream_options": {"include_usage": true}})))).await;
    assert_eq!(r.status, 200);
    let n = r.events.len();
    assert!(n >= 4, "{}", r.raw);
    assert!(r.events[n - 1].is_done(), "[DONE] last: {}", r.raw);
    let err = r.events[n - 2].value();
    let obj = err.as_object().expect("error event object");
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["error"], "{err}");
    assert_eq!(err["error"]["type"], "api_error", "{err}");
    assert_eq!(err["error"]["code"], "upstream_error", "{err}");
    assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{err}");
    let chunks: Vec<Value> = r.events[..n - 2].iter().map(|e| e.value().clone()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(content(&chunks), "partial answer", "the deltas before the failure were delivered");
    for c in &chunks {
        assert!(c.pointer("/choices/0/finish_reason").is_some_and(Value::is_null), "no finish chunk: {c}");
        assert!(c.get("usage").is_none_or(Value::is_null), "{c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_timeout_after_the_stream_began_is_a_timeout_error_event() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock).timeout_seconds(0.5)).await;
    mock.push(Behavior::trickle("w", 100, Duration::from_millis(50)));
    let r = read_stream(s.gw.chat(&streamed("slow", json!({})))).await;
    assert_eq!(r.status, 200);
    let n = r.events.len();
    assert!(r.events[n - 1].is_done(), "{}", r.raw);
    let err = r.events[n - 2].value();
    assert_eq!(err["error"]["type"], "api_error", "{err}");
    assert_eq!(err["error"]["code"], "timeout", "{err}");
    let chunks: Vec<Value> = r.events[..n - 2].iter().map(|e| e.value().clone()).collect();
    assert!(!content(&chunks).is_empty(), "tokens were streamed before the deadline");
    assert!(mock.wait_for_disconnect(CANCEL_BOUND).await, "the upstream request was aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_before_the_first_token_keep_their_http_status() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock).timeout_seconds(0.5)).await;

    mock.push(Behavior::error(500, "kaput"));
    let r = send(s.gw.chat(&streamed("hi", json!({})))).await;
    let e = r.expect_error(502, "api_error");
    assert_eq!(e["code"], "upstream_error");

    mock.push(Behavior::error(400, "This model's maximum context length is 8 tokens."));
    let r = send(s.gw.chat(&streamed("hi", json!({})))).await;
    let e = r.expect_error(400, "invalid_request_error");
    assert!(e["message"].as_str().unwrap_or_default().contains("maximum context length"), "{e}");

    mock.push(Behavior::Hang);
    let r = send(s.gw.chat(&streamed("hi", json!({})))).await;
    let e = r.expect_error(504, "api_error");
    assert_eq!(e["code"], "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_svc_going_away_mid_stream_ends_with_an_error_event() {
    let mock = MockUpstream::start().await;
    let mut s = stack(config(&mock)).await;
    mock.push(Behavior::trickle("z", 100, Duration::from_millis(50)));
    let resp = open(s.gw.chat(&streamed("long", json!({})))).await;
    assert_eq!(resp.status(), 200);
    let mut reader = SseReader::new(resp);
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &SseEvent| e.content().is_some()) {
        seen.push(reader.next(T).await.expect("a chunk"));
    }
    // agent-svc stops with no grace: the running turn is cancelled under the stream.
    s.svc.stop_with_grace(Duration::ZERO).await.expect("agent-svc stop");
    seen.extend(reader.rest(T).await);
    assert!(reader.error().is_none(), "the body ends cleanly: {:?}", reader.error());
    let n = seen.len();
    assert!(seen[n - 1].is_done(), "[DONE] last: {}", reader.raw_text());
    let err = seen[n - 2].value();
    assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "error event: {err}");
    assert!(err["error"]["type"].is_string(), "{err}");
    for e in &seen[..n - 2] {
        let c = e.value();
        assert!(c.get("error").is_none(), "{c}");
        assert!(c.pointer("/choices/0/finish_reason").is_some_and(Value::is_null), "no finish chunk: {c}");
    }
}

// ---------------------------------------------------------------------------
// Client disconnects

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_stream_cancels_the_upstream_and_keeps_the_partial_answer() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock)).await;
    let full = numbered_words("w", 100).concat();
    mock.push(Behavior::trickle("w", 100, Duration::from_millis(50)));
    let resp = open(s.gw.chat(&streamed("tell me a long story", json!({"user": "gone"})))).await;
    assert_eq!(resp.status(), 200);
    let mut reader = SseReader::new(resp);
    let mut got = String::new();
    while got.matches(' ').count() < 2 {
        let ev = reader.next(T).await.expect("more chunks");
        got.push_str(ev.content().unwrap_or_default());
    }
    let dropped_at = Instant::now();
    drop(reader);
    expect_upstream_cancelled(&mock, dropped_at).await;

    let text = interrupted_answer(&s, "agent:main:openai-user:gone", "tell me a long story").await;
    assert!(text.starts_with(&got), "stored {text:?} starts with what the client saw {got:?}");
    assert!(full.starts_with(&text) && text.len() < full.len(), "a strict prefix: {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_before_the_first_token_cancels_the_upstream() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock)).await;
    mock.push(Behavior::Hang);
    let body = streamed("anyone there?", json!({"user": "early"}));
    // The client leaves once the run is waiting on the (silent) provider.
    let asked = async { assert!(mock.wait_for_requests(1, T).await, "the run reached the upstream") };
    let dropped_at = give_up_when(s.gw.chat(&body), asked).await;
    expect_upstream_cancelled(&mock, dropped_at).await;
    interrupted_answer(&s, "agent:main:openai-user:early", "anyone there?").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_client_that_gives_up_cancels_the_run() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock)).await;
    let full = numbered_words("n", 100).concat();
    mock.push(Behavior::trickle("n", 100, Duration::from_millis(50)));
    let body = with(ask("take your time"), json!({"user": "patience"}));
    let dropped_at = give_up_after(s.gw.chat(&body), Duration::from_millis(600)).await;
    expect_upstream_cancelled(&mock, dropped_at).await;

    let text = interrupted_answer(&s, "agent:main:openai-user:patience", "take your time").await;
    assert!(full.starts_with(&text) && text.len() < full.len(), "a strict prefix of the answer: {text:?}");
}
