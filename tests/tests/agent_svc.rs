//! agent-svc end to end: a real tonic client against a real agent-svc on
//! 127.0.0.1, whose provider is the real mock upstream (HTTP + SSE).
//!
//! Each test asserts on the gRPC events/statuses AND on what the mock received.

use e2e::harness::{
    self, assistant, assistant_tool_calls, dead_port, developer, error_code, error_param, error_type,
    for_user, role_text, rt, run_outcome, stateless, summarize, system, tool_call, tool_result, user,
    with_session_key, AgentSvc, ConfigBuilder, TempDir,
};
use e2e::mock::{numbered_words, Behavior, Gate, MockToolCall, MockUpstream, RecordedRequest};
use e2e::prelude::{expect_upstream_cancelled, CANCEL_BOUND, T};
use serde_json::{json, Value};
use services::proto::agent_run_event::Event;
use services::proto::agent_service_client::AgentServiceClient;
use services::proto::{
    tool_choice, AbortRunRequest, AgentRunEvent, AgentRunRequest, GetSessionHistoryRequest, HistoryEntry,
    ListAgentsRequest, ListSessionsRequest, SamplingParams, Tool, ToolChoice, Usage,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

type Client = AgentServiceClient<Channel>;

async fn start(builder: ConfigBuilder) -> (AgentSvc, Client) {
    harness::init_tracing();
    let svc = AgentSvc::start(&builder.build()).await;
    let client = svc.client().await;
    (svc, client)
}

async fn start_mock() -> MockUpstream {
    MockUpstream::start().await
}

/// Opens the event stream of a run (the call must succeed).
async fn open_run(client: &mut Client, req: AgentRunRequest) -> Streaming<AgentRunEvent> {
    tokio::time::timeout(T, client.agent_run(req))
        .await
        .expect("AgentRun call timed out")
        .expect("AgentRun call")
        .into_inner()
}

/// The next event; panics on error, end of stream or timeout.
async fn next_event(s: &mut Streaming<AgentRunEvent>) -> Event {
    let item = tokio::time::timeout(T, s.message()).await.expect("next event timed out");
    item.expect("stream error").expect("stream ended early").event.expect("event payload")
}

/// Reads until the stream ends; returns the events and the terminating error, if any.
async fn drain(s: &mut Streaming<AgentRunEvent>) -> (Vec<AgentRunEvent>, Option<tonic::Status>) {
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout(T, s.message()).await.expect("stream did not end in time") {
            Ok(Some(ev)) => events.push(ev),
            Ok(None) => return (events, None),
            Err(status) => return (events, Some(status)),
        }
    }
}

/// Runs a request that must succeed and returns the folded events.
async fn run_ok(client: &mut Client, req: AgentRunRequest) -> harness::RunSummary {
    let out = tokio::time::timeout(T, run_outcome(client, req)).await.expect("run timed out");
    if let Some(e) = &out.error {
        panic!("run failed: {e:?}");
    }
    out.summary()
}

/// Runs a request that must fail and returns the status and the events before it.
async fn run_err(client: &mut Client, req: AgentRunRequest) -> (tonic::Status, harness::RunSummary) {
    let out = tokio::time::timeout(T, run_outcome(client, req)).await.expect("run timed out");
    let summary = out.summary();
    match out.error {
        Some(s) => (s, summary),
        None => panic!("run should have failed; events: {:?}", out.events),
    }
}

/// Starts a turn on `user_name`'s session whose answer (`answer`) the mock holds
/// until the returned gate opens. Returns once the turn reached the upstream: it
/// holds the session, and later turns of it queue behind.
async fn hold_session(
    mock: &MockUpstream,
    client: &Client,
    user_name: &str,
    text: &str,
    answer: &str,
) -> (Gate, tokio::task::JoinHandle<harness::RunOutcome>) {
    let gate = Gate::new();
    mock.push(Behavior::text(answer).gated(&gate));
    let before = mock.request_count();
    let (mut c, req) = (client.clone(), for_user(user_name, vec![user(text)]));
    let turn = tokio::spawn(async move { run_outcome(&mut c, req).await });
    assert!(mock.wait_for_requests(before + 1, T).await, "the held turn reached the upstream");
    (gate, turn)
}

/// Opens a turn on `user_name`'s session and reads its `started`, which agent-svc
/// sends once the turn has its place in the session's queue (arrival order).
async fn queue_turn(client: &Client, user_name: &str, text: &str) -> (String, Streaming<AgentRunEvent>) {
    let mut stream = open_run(&mut client.clone(), for_user(user_name, vec![user(text)])).await;
    match next_event(&mut stream).await {
        Event::Started(st) => (st.run_id, stream),
        other => panic!("expected started first, got {other:?}"),
    }
}

/// Waits until run `run_id` is no longer running. agent-svc refuses a run id
/// that a running run has, so a stateless run on the built-in echo model (it
/// never reaches the mock and stores nothing) under that id is refused until
/// the run is gone.
async fn wait_until_run_gone(client: &Client, run_id: &str) {
    let gone = harness::eventually(T, Duration::from_millis(10), || {
        let mut c = client.clone();
        let mut probe = stateless(vec![user("probe")]);
        probe.run_id = run_id.to_string();
        probe.model = Some("echo/echo".into());
        async move {
            match c.agent_run(probe).await {
                Ok(r) => {
                    let mut s = r.into_inner();
                    while let Ok(Some(_)) = s.message().await {}
                    Some(())
                }
                Err(st)
                    if st.code() == Code::InvalidArgument
                        && error_param(&st).as_deref() == Some("run_id") =>
                {
                    None
                }
                Err(st) => panic!("probe run failed: {st:?}"),
            }
        }
    })
    .await;
    assert!(gone.is_some(), "run {run_id} is still running");
}

async fn history(client: &mut Client, key: &str) -> Vec<HistoryEntry> {
    harness::history(client, key).await.expect("GetSessionHistory")
}

/// History polled until it has `n` entries.
async fn history_with(client: &Client, key: &str, n: usize) -> Vec<HistoryEntry> {
    harness::history_with(client, key, n, T).await
}

fn usage(p: u32, c: u32) -> Usage {
    Usage { prompt_tokens: p, completion_tokens: c, total_tokens: p + c }
}

fn with_params(mut req: AgentRunRequest, f: impl FnOnce(&mut SamplingParams)) -> AgentRunRequest {
    let mut p = req.params.take().unwrap_or_default();
    f(&mut p);
    req.params = Some(p);
    req
}

fn weather_tool() -> Tool {
    Tool {
        r#type: "function".into(),
        name: "get_weather".into(),
        description: Some("Current weather".into()),
        parameters_json: Some(r#"{"type":"object","properties":{"city":{"type":"string"}}}"#.into()),
    }
}

fn models_of(reqs: &[RecordedRequest]) -> Vec<String> {
    reqs.iter().map(|r| r.model().unwrap_or_default().to_string()).collect()
}

fn expect_invalid(status: &tonic::Status, context: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{context}: {status:?}");
    assert_eq!(error_type(status).as_deref(), Some("invalid_request_error"), "{context}: {status:?}");
}

// ---------------------------------------------------------------------------
// Streaming, events, usage

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_text_arrives_in_order_between_started_and_finished() {
    let mock = start_mock().await;
    mock.push(
        Behavior::chunks(["Hel", "lo, ", "wor", "ld!"])
            .with_delay(Duration::from_millis(10))
            .with_usage(17, 4),
    );
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;

    let mut req = for_user("alice", vec![user("hi")]);
    req.include_usage = true;
    let run = run_ok(&mut client, req).await;

    let started = run.started.as_ref().expect("started event");
    assert!(run.started_first, "RunStarted must be the first event");
    assert!(!started.run_id.is_empty());
    assert_eq!(started.agent_id, "main");
    assert_eq!(started.session_key, "agent:main:openai-user:alice");
    assert_eq!(started.model, "mock/gpt-mock");
    assert_eq!(run.text_deltas, vec!["Hel", "lo, ", "wor", "ld!"], "one event per upstream chunk, in order");
    assert_eq!(run.text, "Hello, world!");
    assert!(run.finished_last, "RunFinished must be the last event");
    assert_eq!(run.event_count, 6, "started + 4 deltas + finished");
    let fin = run.finished.as_ref().expect("finished");
    assert_eq!(fin.finish_reason, "stop");
    assert_eq!(fin.usage, Some(usage(17, 4)), "the provider's real usage");
    assert_eq!(fin.model, "mock/gpt-mock");

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.model(), Some("gpt-mock"));
    assert_eq!(r.header("authorization").as_deref(), Some("Bearer sk-e2e-test"));
    assert!(r.stream());
    assert!(r.include_usage());
    assert_eq!(r.message_texts(), vec![rt("user", "hi")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_text_keeps_the_answer_whole_and_in_order_and_never_waits() {
    let mock = start_mock().await;
    // All at once: deltas queued together may be joined.
    mock.push(Behavior::chunks(["Hel", "lo, ", "wor", "ld!"]).with_usage(17, 4));
    // 100 ms apart: each is sent as it comes, joined with nothing.
    mock.push(Behavior::chunks(["Hel", "lo, ", "wor", "ld!"]).with_delay(Duration::from_millis(100)));
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;

    let mut req = stateless(vec![user("hi")]);
    req.coalesce_text = true;
    let together = run_ok(&mut client, req.clone()).await;
    assert!(together.started_first && together.finished_last);
    assert_eq!(together.text, "Hello, world!");
    assert!((1..=4).contains(&together.text_deltas.len()), "{:?}", together.text_deltas);
    assert_eq!(together.event_count, together.text_deltas.len() + 2);

    let spaced = run_ok(&mut client, req).await;
    assert_eq!(spaced.text_deltas, vec!["Hel", "lo, ", "wor", "ld!"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_is_always_asked_to_stream_with_usage() {
    let mock = start_mock().await;
    mock.push(Behavior::text("fine thanks").with_usage(30, 2));
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;

    let req = stateless(vec![user("how are you")]); // include_usage: false
    let run = run_ok(&mut client, req).await;
    assert_eq!(run.text, "fine thanks");
    assert_eq!(run.finish_reason(), Some("stop"));
    if let Some(u) = run.usage() {
        // The caller did not ask; if agent-svc reports it anyway it must be the real count.
        assert_eq!(*u, usage(30, 2));
    }

    let r = mock.last_request().expect("one request");
    assert_eq!(r.body["stream"], json!(true));
    assert_eq!(r.body["stream_options"]["include_usage"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_json_upstream_answer_is_accepted() {
    let mock = start_mock().await;
    mock.push(Behavior::json_completion("plain answer", (9, 3)));
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let mut req = stateless(vec![user("q")]);
    req.include_usage = true;
    let run = run_ok(&mut client, req).await;
    assert_eq!(run.text, "plain answer");
    assert_eq!(run.finish_reason(), Some("stop"));
    assert_eq!(run.usage(), Some(&usage(9, 3)));
    assert_eq!(mock.request_count(), 1);
}

// ---------------------------------------------------------------------------
// Message assembly (SPEC §4 "What goes upstream")

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_request_sends_system_then_client_history_then_new_turn() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock).system_prompt("You are terse.")).await;

    let mut named = user("u2");
    named.name = Some("bob".into());
    let req = stateless(vec![system("S1"), user("u1"), assistant("a1"), developer("D1"), named, user("u3")]);
    let run = run_ok(&mut client, req).await;
    assert_eq!(run.text, "u3", "the mock echoes the last user message");
    let key = run.session_key();
    let rest = key.strip_prefix("agent:main:openai:").unwrap_or_else(|| panic!("stateless key {key}"));
    assert!(uuid_like(rest), "stateless key ends in a uuid: {key}");

    let r = mock.last_request().expect("request");
    assert_eq!(
        r.message_texts(),
        vec![
            rt("system", "You are terse.\n\nS1\n\nD1"),
            rt("user", "u1"),
            rt("assistant", "a1"),
            rt("user", "u2"),
            rt("user", "u3"),
        ]
    );
    assert_eq!(r.messages()[3]["name"], "bob", "message names are kept");
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-') && s.matches('-').count() == 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_session_sends_stored_transcript_not_client_history() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock).system_prompt("P")).await;

    let run1 = run_ok(&mut client, for_user("carol", vec![system("S"), user("first")])).await;
    assert_eq!(run1.text, "first");

    // The client's own (different) history must be ignored for a stable session.
    let req2 =
        for_user("carol", vec![system("S"), user("CLIENT-OLD"), assistant("CLIENT-OLD-A"), user("second")]);
    let run2 = run_ok(&mut client, req2).await;
    assert_eq!(run2.text, "second");
    assert_eq!(run1.session_key(), run2.session_key());
    assert_ne!(run1.run_id(), run2.run_id());

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].message_texts(), vec![rt("system", "P\n\nS"), rt("user", "first")]);
    assert_eq!(
        reqs[1].message_texts(),
        vec![rt("system", "P\n\nS"), rt("user", "first"), rt("assistant", "first"), rt("user", "second")]
    );
}

// ---------------------------------------------------------------------------
// Tool calls

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_call_round_trip_through_a_user_session() {
    let mock = start_mock().await;
    let args = r#"{"city":"Paris"}"#;
    mock.push(Behavior::tool_call("call_abc", "get_weather", args).with_usage(20, 5));
    mock.push(Behavior::text("It is sunny in Paris."));
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;

    // Run 1: the model asks for a tool.
    let mut req1 = for_user("tooly", vec![user("weather in Paris?")]);
    req1.tools = vec![weather_tool()];
    req1.include_usage = true;
    let run1 = run_ok(&mut client, req1).await;
    assert_eq!(run1.text, "");
    assert!(run1.tool_call_deltas.len() >= 2, "arguments arrive in fragments: {:?}", run1.tool_call_deltas);
    let first = &run1.tool_call_deltas[0];
    assert_eq!((first.index, first.id.as_str(), first.name.as_str()), (0, "call_abc", "get_weather"));
    for later in &run1.tool_call_deltas[1..] {
        assert_eq!(later.index, 0);
        assert!(
            later.id.is_empty() && later.name.is_empty(),
            "id/name only on the first fragment: {later:?}"
        );
    }
    assert_eq!(run1.tool_calls.len(), 1);
    assert_eq!(run1.tool_calls[0].arguments, args);
    assert_eq!(run1.finish_reason(), Some("tool_calls"));
    assert_eq!(run1.usage(), Some(&usage(20, 5)));

    let r1 = mock.last_request().expect("request 1");
    assert_eq!(r1.body["tools"][0]["type"], "function");
    assert_eq!(r1.body["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(r1.body["tools"][0]["function"]["parameters"]["type"], "object");

    // Run 2: the client sends the tool result; the new turn is just the tool message.
    let mut req2 = for_user(
        "tooly",
        vec![
            user("weather in Paris?"),
            assistant_tool_calls(vec![tool_call("call_abc", "get_weather", args)]),
            tool_result("call_abc", r#"{"temp":21}"#),
        ],
    );
    req2.tools = vec![weather_tool()];
    let run2 = run_ok(&mut client, req2).await;
    assert_eq!(run2.text, "It is sunny in Paris.");
    assert_eq!(run2.finish_reason(), Some("stop"));

    let r2 = mock.last_request().expect("request 2");
    assert_eq!(
        r2.roles(),
        vec!["user", "assistant", "tool"],
        "stored transcript then the tool message: {}",
        r2.raw_body
    );
    let msgs = r2.messages();
    let call = &msgs[1]["tool_calls"][0];
    assert_eq!(call["id"], "call_abc");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], args);
    assert!(
        msgs[1]["content"].is_null() || msgs[1]["content"] == "",
        "assistant tool-call message has no text: {}",
        msgs[1]
    );
    assert_eq!(msgs[2]["tool_call_id"], "call_abc");
    assert_eq!(harness_content(&msgs[2]), r#"{"temp":21}"#);

    let h = history(&mut client, &run2.session_key()).await;
    let roles: Vec<String> = h.iter().map(|e| role_text(e).0).collect();
    assert_eq!(roles, vec!["user", "assistant", "tool", "assistant"]);
    let stored_call = &h[1].message.as_ref().expect("msg").tool_calls;
    assert_eq!(stored_call.len(), 1);
    assert_eq!((stored_call[0].id.as_str(), stored_call[0].name.as_str()), ("call_abc", "get_weather"));
    assert_eq!(stored_call[0].arguments, args);
    assert!(h.iter().all(|e| !e.interrupted));
}

fn harness_content(m: &Value) -> String {
    e2e::mock::content_text(m.get("content").unwrap_or(&Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_tool_calls_get_contiguous_indexes_and_ids() {
    let mock = start_mock().await;
    mock.push(Behavior::tool_calls(vec![
        MockToolCall::new("c1", "get_weather", r#"{"city":"Oslo"}"#),
        MockToolCall::without_id("get_time", r#"{"tz":"CET"}"#),
    ]));
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let mut req = stateless(vec![user("weather and time in Oslo")]);
    req.tools = vec![
        weather_tool(),
        Tool { r#type: "function".into(), name: "get_time".into(), description: None, parameters_json: None },
    ];
    let run = run_ok(&mut client, req).await;
    assert_eq!(run.finish_reason(), Some("tool_calls"));
    let idx: Vec<u32> = run.tool_calls.iter().map(|c| c.index).collect();
    assert_eq!(idx, vec![0, 1]);
    assert_eq!(run.tool_calls[0].id, "c1");
    assert_eq!(run.tool_calls[0].name, "get_weather");
    assert_eq!(run.tool_calls[0].arguments, r#"{"city":"Oslo"}"#);
    assert!(!run.tool_calls[1].id.is_empty(), "a call without upstream id gets one");
    assert_ne!(run.tool_calls[1].id, run.tool_calls[0].id);
    assert_eq!(run.tool_calls[1].name, "get_time");
    assert_eq!(run.tool_calls[1].arguments, r#"{"tz":"CET"}"#);
    for i in [0u32, 1] {
        let first = run.tool_call_deltas.iter().find(|d| d.index == i).expect("fragment");
        assert!(!first.id.is_empty() && !first.name.is_empty(), "first fragment of call {i}: {first:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_named_after_its_first_fragment_still_starts_with_its_name() {
    // Some upstreams send the id first and the function name in a later fragment,
    // and say `stop` although the answer is a tool call.
    let mock = start_mock().await;
    let delta =
        |tc: Value| json!({"choices": [{"index": 0, "delta": {"tool_calls": [tc]}, "finish_reason": null}]});
    mock.push(Behavior::RawSse(vec![
        delta(json!({"index": 0, "id": "call_abc", "type": "function", "function": {"arguments": ""}})),
        delta(json!({"index": 0, "function": {"name": "get_weather"}})),
        delta(json!({"index": 0, "function": {"arguments": "{\"city\":"}})),
        delta(json!({"index": 0, "function": {"arguments": "\"Oslo\"}"}})),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    ]));
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let mut req = stateless(vec![user("weather in Oslo")]);
    req.tools = vec![weather_tool()];
    let run = run_ok(&mut client, req).await;
    assert_eq!(run.finish_reason(), Some("tool_calls"), "a tool-call answer finishes with tool_calls");
    let first = run.tool_call_deltas.first().expect("a tool-call fragment");
    assert_eq!((first.index, first.id.as_str(), first.name.as_str()), (0, "call_abc", "get_weather"));
    assert!(run.tool_call_deltas[1..].iter().all(|d| d.id.is_empty() && d.name.is_empty()));
    let args: String = run.tool_call_deltas.iter().map(|d| d.arguments.as_str()).collect();
    assert_eq!(args, r#"{"city":"Oslo"}"#);
    assert_eq!(run.tool_calls.len(), 1);
    assert_eq!(run.tool_calls[0].name, "get_weather");
}

// ---------------------------------------------------------------------------
// Fallbacks and upstream errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_answers_when_primary_fails_before_first_token() {
    let mock = start_mock().await;
    mock.set_for_model("m-fail", Behavior::error(500, "primary down"));
    let (_svc, mut client) =
        start(ConfigBuilder::with_mock(&mock).model_with_fallbacks("mock/m-fail", &["mock/m-ok"])).await;

    let run = run_ok(&mut client, stateless(vec![user("hello fallback")])).await;
    assert_eq!(
        run.started.as_ref().expect("started").model,
        "mock/m-fail",
        "started names the first model tried"
    );
    assert_eq!(run.text, "hello fallback");
    assert_eq!(
        run.finished.as_ref().expect("finished").model,
        "mock/m-ok",
        "finished names the model that answered"
    );
    assert_eq!(models_of(&mock.requests()), vec!["m-fail", "m-ok"], "primary tried first");
    let reqs = mock.requests();
    assert_eq!(reqs[0].message_texts(), reqs[1].message_texts(), "the fallback gets the same conversation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fallback_once_the_primary_produced_a_token() {
    let mock = start_mock().await;
    mock.set_for_model("m-fail", Behavior::ResetAfter { chunks: vec!["partial ".into()] });
    let (_svc, mut client) =
        start(ConfigBuilder::with_mock(&mock).model_with_fallbacks("mock/m-fail", &["mock/m-ok"])).await;

    let (status, run) = run_err(&mut client, for_user("nofb", vec![user("q")])).await;
    assert_eq!(run.text, "partial ", "the delta before the failure was delivered");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_code(&status).as_deref(), Some("upstream_error"));
    assert_eq!(models_of(&mock.requests()), vec!["m-fail"], "no fallback after the first token");

    let h = history_with(&client, "agent:main:openai-user:nofb", 2).await;
    assert_eq!(role_text(&h[1]), rt("assistant", "partial "));
    assert!(h[1].interrupted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_429_on_every_model_is_resource_exhausted() {
    let mock = start_mock().await;
    mock.set_for_model("a", Behavior::error(429, "slow down a"));
    mock.set_for_model("b", Behavior::error(429, "slow down b"));
    let (_svc, mut client) =
        start(ConfigBuilder::with_mock(&mock).model_with_fallbacks("mock/a", &["mock/b"])).await;
    let (status, run) = run_err(&mut client, stateless(vec![user("q")])).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(error_type(&status).as_deref(), Some("rate_limit_error"));
    assert!(run.text.is_empty());
    assert_eq!(models_of(&mock.requests()), vec!["a", "b"], "the fallback is tried after a 429");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_500_or_auth_failure_without_fallback_is_unavailable_upstream_error() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    for (n, (code, message)) in [(500, "kaput"), (401, "Incorrect API key provided")].into_iter().enumerate()
    {
        mock.push(Behavior::error(code, message));
        let (status, _) = run_err(&mut client, stateless(vec![user("q")])).await;
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(error_code(&status).as_deref(), Some("upstream_error"));
        assert_eq!(error_type(&status).as_deref(), Some("api_error"));
        assert_eq!(mock.request_count(), n + 1, "not retried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_400_is_invalid_argument_with_the_provider_message_and_no_fallback() {
    let mock = start_mock().await;
    mock.set_for_model("a", Behavior::error(400, "This model's maximum context length is 8 tokens"));
    let (_svc, mut client) =
        start(ConfigBuilder::with_mock(&mock).model_with_fallbacks("mock/a", &["mock/b"])).await;
    let (status, _) = run_err(&mut client, stateless(vec![user("q")])).await;
    expect_invalid(&status, "provider 400");
    assert!(
        status.message().contains("maximum context length"),
        "provider message kept: {}",
        status.message()
    );
    assert_eq!(models_of(&mock.requests()), vec!["a"], "a request error is not retried on a fallback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_reset_is_an_error_after_the_deltas() {
    let mock = start_mock().await;
    mock.push(Behavior::ResetAfter { chunks: vec!["Hello ".into(), "wor".into()] });
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let (status, run) = run_err(&mut client, for_user("reset", vec![user("q")])).await;
    assert!(run.started_first);
    assert_eq!(run.text_deltas, vec!["Hello ", "wor"]);
    assert!(run.finished.is_none(), "no RunFinished after a failure");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_code(&status).as_deref(), Some("upstream_error"));

    let h = history_with(&client, "agent:main:openai-user:reset", 2).await;
    assert_eq!(role_text(&h[0]), rt("user", "q"));
    assert_eq!(role_text(&h[1]), rt("assistant", "Hello wor"));
    assert!(h[1].interrupted, "a failed run's partial answer is marked interrupted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sse_is_an_upstream_error() {
    let mock = start_mock().await;
    mock.push(Behavior::Malformed);
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let (status, run) = run_err(&mut client, stateless(vec![user("q")])).await;
    assert!(run.finished.is_none());
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_code(&status).as_deref(), Some("upstream_error"));
}

// ---------------------------------------------------------------------------
// Sessions: persistence, serialization, queue bound

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_continues_across_restart_with_sqlite_store() {
    let dir = TempDir::new();
    let mock = start_mock().await;
    let (mut svc, mut client) = start(ConfigBuilder::with_mock(&mock).store_sqlite(&dir)).await;

    let run1 = run_ok(&mut client, for_user("dave", vec![user("remember 42")])).await;
    assert_eq!(run1.text, "remember 42");
    drop(client);

    let old_addr = svc.addr();
    svc.stop().await;
    assert!(tokio::net::TcpStream::connect(old_addr).await.is_err(), "after stop the port is closed");
    svc.restart().await;
    let mut client = svc.client().await;

    let run2 = run_ok(&mut client, for_user("dave", vec![user("what number?")])).await;
    assert_eq!(run2.session_key(), "agent:main:openai-user:dave");
    let r = mock.last_request().expect("request 2");
    assert_eq!(
        r.message_texts(),
        vec![rt("user", "remember 42"), rt("assistant", "remember 42"), rt("user", "what number?")],
        "turn 1 survived the restart"
    );
    let h = history(&mut client, "agent:main:openai-user:dave").await;
    assert_eq!(h.len(), 4);
    assert_eq!(h[0].run_id, run1.run_id());
    assert_eq!(h[3].run_id, run2.run_id());
    let sessions =
        client.list_sessions(ListSessionsRequest::default()).await.expect("ListSessions").into_inner();
    assert!(sessions
        .sessions
        .iter()
        .any(|s| s.session_key == "agent:main:openai-user:dave" && s.message_count == 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_turns_on_one_session_are_serialized_in_full() {
    const TURNS: usize = 20;
    // The session queue admits 16 waiting turns (SPEC §4); keep at most 16 calls
    // in flight so none is refused while they still overlap heavily.
    const IN_FLIGHT: usize = 16;
    let mock = start_mock().await;
    mock.set_default(Behavior::echo_slow(Duration::from_millis(3)));
    let (_svc, client) = start(ConfigBuilder::with_mock(&mock)).await;

    let limit = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = Vec::new();
    for i in 0..TURNS {
        let mut c = client.clone();
        let limit = limit.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore");
            let text = format!("turn {i:02} alpha beta gamma");
            let out = run_outcome(&mut c, for_user("crowd", vec![user(&text)])).await;
            (text, out)
        }));
    }
    for t in tasks {
        let (text, out) =
            tokio::time::timeout(Duration::from_secs(20), t).await.expect("turn timed out").expect("task");
        assert!(out.error.is_none(), "turn {text:?} failed: {:?}", out.error);
        let run = out.summary();
        assert_eq!(run.text, text, "each stream carries only its own answer");
        assert_eq!(run.finish_reason(), Some("stop"));
    }

    assert_eq!(mock.max_in_flight(), 1, "turns of one session never reach the upstream together");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), TURNS);
    let h = history(&mut client.clone(), "agent:main:openai-user:crowd").await;
    assert_eq!(h.len(), 2 * TURNS, "nothing lost");
    let pairs: Vec<(String, String)> = h.iter().map(role_text).collect();
    let mut seen = std::collections::BTreeSet::new();
    for (k, pair) in pairs.chunks(2).enumerate() {
        assert_eq!(pair[0].0, "user", "entry {}: {pairs:?}", 2 * k);
        assert_eq!(pair[1].0, "assistant", "entry {}: {pairs:?}", 2 * k + 1);
        assert_eq!(pair[1].1, pair[0].1, "each answer follows its own question");
        assert!(seen.insert(pair[0].1.clone()), "duplicate turn {}", pair[0].1);
        // The k-th upstream request carried exactly the k turns before it.
        let sent = reqs[k].message_texts();
        assert_eq!(sent.len(), 2 * k + 1, "request {k} history length");
        assert_eq!(sent[..], pairs[..2 * k + 1], "request {k} saw the transcript in order");
    }
    assert!(h.iter().all(|e| !e.interrupted));
    assert_eq!(seen.len(), TURNS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seventeenth_waiting_turn_is_refused_with_session_busy() {
    let mock = start_mock().await;
    let (_svc, client) = start(ConfigBuilder::with_mock(&mock)).await;
    let (gate, first) = hold_session(&mock, &client, "busy", "first", "first done").await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..17 {
        let mut c = client.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let out = run_outcome(&mut c, for_user("busy", vec![user(&format!("waiting {i}"))])).await;
            let _ = tx.send(out);
        });
    }
    drop(tx);
    // With turn 1 held by the gate, 16 may wait; exactly one of the 17 is refused at once.
    let refused =
        tokio::time::timeout(T, rx.recv()).await.expect("one turn must be refused").expect("result");
    let status = refused.error.expect("the first result back is the refusal");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(error_code(&status).as_deref(), Some("session_busy"));
    assert_eq!(error_type(&status).as_deref(), Some("rate_limit_error"));

    gate.open();
    let first = tokio::time::timeout(T, first).await.expect("turn 1").expect("task");
    assert_eq!(first.summary().text, "first done");
    let mut ok = 0;
    while let Some(out) =
        tokio::time::timeout(Duration::from_secs(15), rx.recv()).await.expect("waiting turns finish")
    {
        assert!(out.error.is_none(), "a queued turn failed: {:?}", out.error);
        ok += 1;
    }
    assert_eq!(ok, 16, "all 16 waiting turns ran");
    assert_eq!(mock.request_count(), 17);
}

// ---------------------------------------------------------------------------
// Cancellation, abort, timeouts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_cancels_the_upstream_and_keeps_the_partial_answer() {
    let mock = start_mock().await;
    mock.push(Behavior::trickle("w", 100, Duration::from_millis(50)));
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;

    let mut stream = open_run(&mut client, for_user("erin", vec![user("long story")])).await;
    assert!(matches!(next_event(&mut stream).await, Event::Started(_)));
    let mut got = String::new();
    for _ in 0..2 {
        match next_event(&mut stream).await {
            Event::Text(t) => got.push_str(&t.text),
            other => panic!("expected text, got {other:?}"),
        }
    }
    let dropped_at = Instant::now();
    drop(stream);
    expect_upstream_cancelled(&mock, dropped_at).await;

    let h = history_with(&client, "agent:main:openai-user:erin", 2).await;
    assert_eq!(h.len(), 2);
    assert_eq!(role_text(&h[0]), rt("user", "long story"));
    assert!(!h[0].interrupted);
    let (role, text) = role_text(&h[1]);
    assert_eq!(role, "assistant");
    assert!(h[1].interrupted, "the partial answer is marked interrupted");
    assert!(text.starts_with(&got), "stored partial {text:?} starts with what the client saw {got:?}");
    let full = numbered_words("w", 100).concat();
    assert!(full.starts_with(&text) && text.len() < full.len(), "stored text is a strict prefix: {text:?}");
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_run_by_id_and_by_session_key() {
    let mock = start_mock().await;
    let slow = Behavior::trickle("x", 100, Duration::from_millis(50));
    mock.push(slow.clone());
    mock.push(slow);
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let key = "agent:main:openai-user:frank";

    // By run id.
    let mut stream = open_run(&mut client, for_user("frank", vec![user("go")])).await;
    let Event::Started(started) = next_event(&mut stream).await else { panic!("started first") };
    assert!(matches!(next_event(&mut stream).await, Event::Text(_)));
    let aborted_at = Instant::now();
    let resp = client
        .clone()
        .abort_run(AbortRunRequest { run_id: started.run_id.clone(), session_key: String::new() })
        .await
        .expect("AbortRun")
        .into_inner();
    assert_eq!(resp.aborted_run_ids, vec![started.run_id.clone()]);
    let (_, end) = drain(&mut stream).await;
    let status = end.expect("an aborted run ends with a status");
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    expect_upstream_cancelled(&mock, aborted_at).await;
    let h = history_with(&client, key, 2).await;
    assert!(h[1].interrupted);
    assert_eq!(h[1].run_id, started.run_id);

    // Unknown run id: nothing aborted, not an error.
    let none = client
        .abort_run(AbortRunRequest { run_id: "no-such-run".into(), session_key: String::new() })
        .await
        .expect("AbortRun unknown")
        .into_inner();
    assert!(none.aborted_run_ids.is_empty());

    // By session key.
    let mut stream = open_run(&mut client, for_user("frank", vec![user("again")])).await;
    let Event::Started(started2) = next_event(&mut stream).await else { panic!("started first") };
    assert!(matches!(next_event(&mut stream).await, Event::Text(_)));
    let resp = client
        .clone()
        .abort_run(AbortRunRequest { run_id: String::new(), session_key: key.into() })
        .await
        .expect("AbortRun by session")
        .into_inner();
    assert_eq!(resp.aborted_run_ids, vec![started2.run_id.clone()]);
    let (_, end) = drain(&mut stream).await;
    assert_eq!(end.expect("status").code(), Code::Cancelled);
    assert!(mock.wait_for_disconnects(2, T).await);
    let h = history_with(&client, key, 4).await;
    assert_eq!(role_text(&h[2]), rt("user", "again"));
    assert!(h[3].interrupted);
}

/// `AbortRun` by session key aborts the session's running turn, not the turns
/// queued behind it (the proto says "the running turn").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_by_session_key_leaves_queued_turns_alone() {
    let mock = start_mock().await;
    mock.push(Behavior::trickle("x", 100, Duration::from_millis(50)));
    mock.push(Behavior::text("second answer"));
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let key = "agent:main:openai-user:gina";
    let mut running = open_run(&mut client, for_user("gina", vec![user("first")])).await;
    let Event::Started(first) = next_event(&mut running).await else { panic!("started first") };
    assert!(matches!(next_event(&mut running).await, Event::Text(_)), "the first turn is running");
    let mut queued = open_run(&mut client, for_user("gina", vec![user("second")])).await;
    assert!(matches!(next_event(&mut queued).await, Event::Started(_)), "the second turn is queued");
    let resp = client
        .clone()
        .abort_run(AbortRunRequest { run_id: String::new(), session_key: key.into() })
        .await
        .expect("AbortRun by session")
        .into_inner();
    assert_eq!(resp.aborted_run_ids, vec![first.run_id.clone()]);
    assert_eq!(drain(&mut running).await.1.expect("status").code(), Code::Cancelled);
    let (events, end) = drain(&mut queued).await;
    assert!(end.is_none(), "the queued turn was not aborted: {end:?}");
    assert_eq!(summarize(&events).text, "second answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_timeout_is_deadline_exceeded_and_aborts_the_upstream() {
    let mock = start_mock().await;
    mock.push(Behavior::Hang);
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock).timeout_seconds(0.5)).await;

    let t0 = Instant::now();
    let (status, run) = run_err(&mut client, for_user("slowpoke", vec![user("q")])).await;
    let elapsed = t0.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(error_code(&status).as_deref(), Some("timeout"));
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(3),
        "timed out after {elapsed:?}"
    );
    assert!(run.started.is_some(), "the run had started");
    assert!(mock.wait_for_disconnect(CANCEL_BOUND).await, "the hanging upstream request was aborted");
    let h = history_with(&client, "agent:main:openai-user:slowpoke", 1).await;
    assert_eq!(role_text(&h[0]), rt("user", "q"), "the user turn is kept");
    assert!(h[1..].iter().all(|e| e.interrupted), "any assistant entry is interrupted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_agent_timeout_cuts_a_slow_stream() {
    let mock = start_mock().await;
    mock.push(Behavior::trickle("s", 100, Duration::from_millis(50)));
    let cfg = ConfigBuilder::with_mock(&mock)
        .agent(json!({"id": "main", "default": true}))
        .agent(json!({"id": "quick", "timeoutSeconds": 0.5}));
    let (_svc, mut client) = start(cfg).await;
    let mut req = for_user("q1", vec![user("q")]);
    req.agent_id = "quick".into();
    let (status, run) = run_err(&mut client, req).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(!run.text.is_empty(), "deltas arrived before the deadline");
    assert!(mock.wait_for_disconnect(CANCEL_BOUND).await);
    let h = history_with(&client, "agent:quick:openai-user:q1", 2).await;
    assert!(h[1].interrupted);
    assert_eq!(role_text(&h[1]).1, run.text, "the stored partial answer is what the client saw");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_timeout_is_deadline_exceeded() {
    let mock = start_mock().await;
    mock.push(Behavior::text("too late").delayed(Duration::from_secs(3)));
    let cfg = ConfigBuilder::with_mock(&mock).set("models.providers.mock.firstByteTimeoutMs", json!(200));
    let (_svc, mut client) = start(cfg).await;
    let t0 = Instant::now();
    let (status, _) = run_err(&mut client, stateless(vec![user("q")])).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(error_code(&status).as_deref(), Some("timeout"));
    assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
    assert!(mock.wait_for_disconnect(CANCEL_BOUND).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_lets_a_running_turn_finish() {
    let mock = start_mock().await;
    mock.push(Behavior::trickle("g", 8, Duration::from_millis(30)));
    let (mut svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let mut stream = open_run(&mut client, stateless(vec![user("q")])).await;
    assert!(matches!(next_event(&mut stream).await, Event::Started(_)));
    // The turn is mid-answer when the stop begins.
    assert!(matches!(next_event(&mut stream).await, Event::Text(t) if t.text == "g0 "));
    let ((), (events, end)) = tokio::join!(svc.stop(), drain(&mut stream));
    assert!(end.is_none(), "the running turn finished: {end:?}");
    let run = summarize(&events);
    assert_eq!(run.text, numbered_words("g", 8)[1..].concat(), "rest of the answer after started");
    assert_eq!(run.finish_reason(), Some("stop"));
    assert_eq!(mock.disconnects(), 0);
}

// ---------------------------------------------------------------------------
// Validation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_parameters_are_rejected_before_the_upstream() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let base = || for_user("val", vec![user("q")]);
    let mut cases: Vec<(&str, AgentRunRequest, &str)> = vec![
        ("temperature 2.5", with_params(base(), |p| p.temperature = Some(2.5)), "temperature"),
        ("temperature -0.1", with_params(base(), |p| p.temperature = Some(-0.1)), "temperature"),
        ("top_p 1.5", with_params(base(), |p| p.top_p = Some(1.5)), "top_p"),
        (
            "frequency_penalty 3",
            with_params(base(), |p| p.frequency_penalty = Some(3.0)),
            "frequency_penalty",
        ),
        ("presence_penalty -3", with_params(base(), |p| p.presence_penalty = Some(-3.0)), "presence_penalty"),
        ("seed 1.5", with_params(base(), |p| p.seed = Some(1.5)), "seed"),
        (
            "stop x5",
            with_params(base(), |p| p.stop = ["a", "b", "c", "d", "e"].map(String::from).to_vec()),
            "stop",
        ),
        ("stop empty", with_params(base(), |p| p.stop = vec![String::new()]), "stop"),
        ("max_tokens 0", with_params(base(), |p| p.max_tokens = Some(0)), "max_tokens"),
        (
            "max_completion_tokens -1",
            with_params(base(), |p| p.max_completion_tokens = Some(-1)),
            "max_completion_tokens",
        ),
        ("n 2", with_params(base(), |p| p.n = Some(2)), "n"),
    ];
    let mut bad_type = base();
    bad_type.tools = vec![Tool { r#type: "retrieval".into(), ..weather_tool() }];
    cases.push(("tool type", bad_type, "tools"));
    let mut no_name = base();
    no_name.tools = vec![Tool { name: String::new(), ..weather_tool() }];
    cases.push(("tool without name", no_name, "tools"));
    let mut unknown_fn = base();
    unknown_fn.tools = vec![weather_tool()];
    unknown_fn.tool_choice = Some(ToolChoice { choice: Some(tool_choice::Choice::Function("nope".into())) });
    cases.push(("tool_choice unknown function", unknown_fn, "tool_choice"));
    for rf in [r#""json_object""#, "[1,2]", "not json at all"] {
        let mut r = base();
        r.response_format_json = Some(rf.into());
        cases.push(("response_format not an object", r, "response_format"));
    }

    for (name, req, param) in cases {
        let (status, run) = run_err(&mut client, req).await;
        expect_invalid(&status, name);
        assert_eq!(error_param(&status).as_deref(), Some(param), "{name}: {status:?}");
        assert!(run.started.is_none(), "{name}: refused before the stream");
    }
    assert_eq!(mock.request_count(), 0, "nothing reached the upstream");
    let sessions =
        client.list_sessions(ListSessionsRequest::default()).await.expect("ListSessions").into_inner();
    assert!(sessions.sessions.is_empty(), "refused turns are not stored: {:?}", sessions.sessions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boundary_parameters_are_accepted_and_forwarded() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let mut req = with_params(stateless(vec![user("q")]), |p| {
        p.temperature = Some(0.0);
        p.top_p = Some(1.0);
        p.frequency_penalty = Some(-2.0);
        p.presence_penalty = Some(2.0);
        p.seed = Some(42.0);
        p.stop = ["a", "b", "c", "d"].map(String::from).to_vec();
        p.max_completion_tokens = Some(99);
        p.max_tokens = Some(5);
        p.n = Some(1);
    });
    req.tools = vec![weather_tool()];
    req.tool_choice = Some(ToolChoice { choice: Some(tool_choice::Choice::Mode("required".into())) });
    req.response_format_json = Some(r#"{"type":"json_object"}"#.into());
    let run = run_ok(&mut client, req).await;
    assert_eq!(run.text, "q");

    let b = mock.last_request().expect("request").body;
    assert_eq!(b["temperature"].as_f64(), Some(0.0));
    assert_eq!(b["top_p"].as_f64(), Some(1.0));
    assert_eq!(b["frequency_penalty"].as_f64(), Some(-2.0));
    assert_eq!(b["presence_penalty"].as_f64(), Some(2.0));
    assert_eq!(b["seed"].as_i64(), Some(42), "seed is sent as an integer: {}", b["seed"]);
    assert_eq!(b["stop"], json!(["a", "b", "c", "d"]));
    let cap = b.get("max_completion_tokens").or_else(|| b.get("max_tokens")).and_then(Value::as_u64);
    assert_eq!(cap, Some(99), "max_completion_tokens wins over max_tokens: {b}");
    assert_eq!(b["tool_choice"], "required");
    assert_eq!(b["response_format"], json!({"type": "json_object"}));
    assert_eq!(b["tools"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_max_tokens_caps_the_upstream_request() {
    let mock = start_mock().await;
    let cfg = ConfigBuilder::with_mock(&mock)
        .set("models.providers.mock.models", json!([{"id": "gpt-mock", "maxTokens": 50}]));
    let (_svc, mut client) = start(cfg).await;
    let cap_of = |r: RecordedRequest| {
        r.body.get("max_completion_tokens").or_else(|| r.body.get("max_tokens")).and_then(Value::as_u64)
    };
    run_ok(&mut client, with_params(stateless(vec![user("q")]), |p| p.max_completion_tokens = Some(99)))
        .await;
    assert_eq!(cap_of(mock.last_request().expect("r1")), Some(50), "clamped to the model's maxTokens");
    run_ok(&mut client, with_params(stateless(vec![user("q")]), |p| p.max_tokens = Some(10))).await;
    assert_eq!(cap_of(mock.last_request().expect("r2")), Some(10));
    run_ok(&mut client, stateless(vec![user("q")])).await;
    assert_eq!(cap_of(mock.last_request().expect("r3")), Some(50), "the model cap applies by default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_agent_is_invalid_argument() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let mut req = stateless(vec![user("q")]);
    req.agent_id = "nope".into();
    let (status, _) = run_err(&mut client, req).await;
    expect_invalid(&status, "unknown agent id");
    assert_eq!(status.message(), "Unknown agent 'nope'.");

    let (status, _) = run_err(&mut client, with_session_key("agent:ghost:x", vec![user("q")])).await;
    expect_invalid(&status, "unknown agent in session key");
    assert_eq!(status.message(), "Unknown agent 'ghost'.");
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_session_namespaces_are_rejected() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    for key in ["subagent:x", "agent:main:cron:y", "cron:daily", "acp:z", "agent:main:subagent:w"] {
        let (status, _) = run_err(&mut client, with_session_key(key, vec![user("q")])).await;
        expect_invalid(&status, key);
        assert_eq!(
            status.message(),
            "`x-openclaw-session-key` cannot use reserved internal session namespaces.",
            "{key}"
        );
    }
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_turn_without_user_or_tool_message_is_rejected() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let cases = [
        vec![],
        vec![system("only system")],
        vec![user("u"), assistant("a")],
        vec![system("s"), user("u"), assistant("a"), developer("d")],
    ];
    for msgs in cases {
        let desc = format!("{:?}", msgs.iter().map(|m| m.role.clone()).collect::<Vec<_>>());
        let (status, _) = run_err(&mut client, for_user("nomsg", msgs)).await;
        expect_invalid(&status, &desc);
        assert_eq!(status.message(), "Missing user message in `messages`.", "{desc}");
    }
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_override_and_unknown_model() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let mut req = stateless(vec![user("q")]);
    req.model = Some("mock/other-model".into());
    let run = run_ok(&mut client, req).await;
    assert_eq!(run.started.as_ref().expect("started").model, "mock/other-model");
    assert_eq!(run.finished.as_ref().expect("finished").model, "mock/other-model");
    assert_eq!(mock.last_request().expect("r").model(), Some("other-model"));

    let mut req = stateless(vec![user("q")]);
    req.model = Some("nope/x".into());
    let (status, _) = run_err(&mut client, req).await;
    expect_invalid(&status, "unknown model");
    assert_eq!(error_param(&status).as_deref(), Some("model"));
    assert_eq!(status.message(), "Unknown model: nope/x");
    assert_eq!(mock.request_count(), 1);
}

// ---------------------------------------------------------------------------
// Agents, sessions, keys

fn two_agents(mock: &MockUpstream) -> ConfigBuilder {
    ConfigBuilder::with_mock(mock)
        .model_with_fallbacks("mock/gpt-mock", &["mock/fb"])
        .agent(json!({"id": "main", "default": true}))
        .agent(json!({"id": "beta", "model": {"primary": "mock/b", "fallbacks": ["mock/c"]}, "systemPrompt": "B"}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_agents_and_run_a_non_default_agent() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(two_agents(&mock)).await;
    let list = client.list_agents(ListAgentsRequest {}).await.expect("ListAgents").into_inner();
    assert_eq!(list.default_agent_id, "main");
    let ids: Vec<&str> = list.agents.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, vec!["main", "beta"]);
    let main = &list.agents[0];
    assert!(main.is_default);
    assert_eq!(main.model, "mock/gpt-mock");
    assert_eq!(main.fallbacks, vec!["mock/fb"]);
    let beta = &list.agents[1];
    assert!(!beta.is_default);
    assert_eq!(beta.model, "mock/b");
    assert_eq!(beta.fallbacks, vec!["mock/c"]);

    let mut req = stateless(vec![user("hi beta")]);
    req.agent_id = "beta".into();
    let run = run_ok(&mut client, req).await;
    let started = run.started.as_ref().expect("started");
    assert_eq!((started.agent_id.as_str(), started.model.as_str()), ("beta", "mock/b"));
    assert!(started.session_key.starts_with("agent:beta:openai:"), "{}", started.session_key);
    let r = mock.last_request().expect("request");
    assert_eq!(r.model(), Some("b"));
    assert_eq!(r.message_texts(), vec![rt("system", "B"), rt("user", "hi beta")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_keys_from_user_channel_and_explicit_keys() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(two_agents(&mock)).await;

    let mut req = for_user("bob", vec![user("q")]);
    req.channel = "ws".into();
    assert_eq!(run_ok(&mut client, req).await.session_key(), "agent:main:ws-user:bob");

    let run = run_ok(&mut client, with_session_key("my-key", vec![user("q")])).await;
    assert_eq!(run.session_key(), "agent:main:my-key", "a plain key is scoped to the agent");

    let mut req = with_session_key("agent:beta:xyz", vec![user("q")]);
    req.agent_id = "main".into();
    let run = run_ok(&mut client, req).await;
    assert_eq!(run.session_key(), "agent:beta:xyz");
    assert_eq!(run.started.as_ref().expect("started").agent_id, "beta", "the key's agent wins");
    assert_eq!(mock.last_request().expect("r").model(), Some("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_sessions_and_history_after_a_user_turn() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(two_agents(&mock)).await;
    let before = harness_now_ms();
    let run = run_ok(&mut client, for_user("gina", vec![user("hello gina")])).await;
    let key = "agent:main:openai-user:gina";
    assert_eq!(run.session_key(), key);

    let list = client.list_sessions(ListSessionsRequest::default()).await.expect("ListSessions").into_inner();
    assert_eq!(list.sessions.len(), 1, "{:?}", list.sessions);
    let s = &list.sessions[0];
    assert_eq!(s.session_key, key);
    assert_eq!(s.agent_id, "main");
    assert_eq!(s.message_count, 2);
    assert!(s.created_at_ms >= before - 1000 && s.updated_at_ms >= s.created_at_ms, "{s:?}");

    let only_main = client
        .list_sessions(ListSessionsRequest { agent_id: "main".into(), limit: 0 })
        .await
        .expect("ListSessions main")
        .into_inner();
    assert_eq!(only_main.sessions.len(), 1);
    let only_beta = client
        .list_sessions(ListSessionsRequest { agent_id: "beta".into(), limit: 0 })
        .await
        .expect("ListSessions beta")
        .into_inner();
    assert!(only_beta.sessions.is_empty());

    let h = client
        .get_session_history(GetSessionHistoryRequest { session_key: key.into(), limit: 0, before_seq: None })
        .await
        .expect("history")
        .into_inner();
    assert_eq!(h.session_key, key);
    let entries: Vec<(String, String)> = h.messages.iter().map(role_text).collect();
    assert_eq!(entries, vec![rt("user", "hello gina"), rt("assistant", "hello gina")]);
    for e in &h.messages {
        assert_eq!(e.run_id, run.run_id());
        assert!(!e.interrupted);
        assert!(e.created_at_ms >= before - 1000);
    }
    let last = client
        .get_session_history(GetSessionHistoryRequest { session_key: key.into(), limit: 1, before_seq: None })
        .await
        .expect("history limit")
        .into_inner();
    assert_eq!(last.messages.iter().map(role_text).collect::<Vec<_>>(), vec![rt("assistant", "hello gina")]);

    let missing = client
        .get_session_history(GetSessionHistoryRequest {
            session_key: "agent:main:nope".into(),
            limit: 0,
            before_seq: None,
        })
        .await;
    match missing {
        Err(s) => assert_eq!(s.code(), Code::NotFound, "{s:?}"),
        Ok(r) => assert!(r.into_inner().messages.is_empty()),
    }
}

fn harness_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_sessions_are_not_persisted() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let a = run_ok(&mut client, stateless(vec![user("one")])).await;
    let b = run_ok(&mut client, stateless(vec![user("two")])).await;
    assert!(a.session_key().starts_with("agent:main:openai:"));
    assert_ne!(a.session_key(), b.session_key(), "a fresh key per stateless call");
    assert_eq!(mock.requests()[1].message_texts(), vec![rt("user", "two")], "nothing carried over");

    let list = client.list_sessions(ListSessionsRequest::default()).await.expect("ListSessions").into_inner();
    assert!(list.sessions.is_empty(), "stateless sessions are not listed: {:?}", list.sessions);
    match client
        .get_session_history(GetSessionHistoryRequest {
            session_key: a.session_key(),
            limit: 0,
            before_seq: None,
        })
        .await
    {
        Err(s) => assert_eq!(s.code(), Code::NotFound, "{s:?}"),
        Ok(r) => assert!(r.into_inner().messages.is_empty(), "stateless history is not stored"),
    }
}

// ---------------------------------------------------------------------------
// Standard services

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_service_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let mock = start_mock().await;
    let (svc, _client) = start(ConfigBuilder::with_mock(&mock)).await;
    let mut health = HealthClient::new(svc.channel().await);
    for service in ["", "openclaw.agent.v1.AgentService"] {
        let resp = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .unwrap_or_else(|e| panic!("health check {service:?}: {e:?}"))
            .into_inner();
        assert_eq!(resp.status, ServingStatus::Serving as i32, "service {service:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_agent_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let mock = start_mock().await;
    let (svc, _client) = start(ConfigBuilder::with_mock(&mock)).await;
    let mut refl = ServerReflectionClient::new(svc.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = refl
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .expect("reflection call")
        .into_inner();
    let resp = tokio::time::timeout(T, responses.message())
        .await
        .expect("timely")
        .expect("reflection")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer: {resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "openclaw.agent.v1.AgentService"), "{names:?}");
    assert!(names.iter().any(|n| n == "grpc.health.v1.Health"), "{names:?}");
}

// ---------------------------------------------------------------------------
// Content parts, images, run ids, key limits, ordering, the built-in provider

fn image(url: &str) -> services::proto::ContentPart {
    services::proto::ContentPart {
        part: Some(services::proto::content_part::Part::ImageUrl(services::proto::ImageUrl {
            url: url.into(),
            detail: None,
        })),
    }
}

fn text_part(t: &str) -> services::proto::ContentPart {
    services::proto::ContentPart { part: Some(services::proto::content_part::Part::Text(t.into())) }
}

fn parts_message(parts: Vec<services::proto::ContentPart>) -> services::proto::Message {
    services::proto::Message { role: "user".into(), parts, text_only: false, ..Default::default() }
}

const PNG: &str = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_parts_and_images_keep_their_shape_and_are_validated() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;

    // A parts array (text + data: image) goes upstream as a parts array.
    let req = stateless(vec![parts_message(vec![text_part("what is "), text_part("this?"), image(PNG)])]);
    let run = run_ok(&mut client, req).await;
    assert_eq!(run.finish_reason(), Some("stop"));
    let r = mock.last_request().expect("request");
    let content = &r.messages()[0]["content"];
    let parts = content.as_array().unwrap_or_else(|| panic!("content stays an array: {content}"));
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0], json!({"type": "text", "text": "what is "}));
    assert_eq!(parts[2]["type"], "image_url");
    assert_eq!(parts[2]["image_url"]["url"], PNG);
    // A plain string stays a string.
    run_ok(&mut client, stateless(vec![user("plain")])).await;
    assert_eq!(mock.last_request().expect("request").messages()[0]["content"], "plain");

    // http(s) image URLs only when allowed; then passed through untouched.
    let url = "https://example.com/cat.png";
    let (status, _) =
        run_err(&mut client, stateless(vec![parts_message(vec![text_part("x"), image(url)])])).await;
    expect_invalid(&status, "image URL not allowed");
    let mut allowed = stateless(vec![parts_message(vec![text_part("x"), image(url)])]);
    allowed.allow_image_urls = true;
    run_ok(&mut client, allowed).await;
    assert_eq!(mock.last_request().expect("request").messages()[0]["content"][1]["image_url"]["url"], url);

    let before = mock.request_count();
    let (status, _) = run_err(
        &mut client,
        stateless(vec![parts_message(vec![text_part("x"), image("data:image/png;base64,@@@")])]),
    )
    .await;
    expect_invalid(&status, "bad data URI");
    let nine = std::iter::once(text_part("x")).chain((0..9).map(|_| image(PNG))).collect();
    let (status, _) = run_err(&mut client, stateless(vec![parts_message(nine)])).await;
    expect_invalid(&status, "9 images");
    let eight = std::iter::once(text_part("x")).chain((0..8).map(|_| image(PNG))).collect();
    run_ok(&mut client, stateless(vec![parts_message(eight)])).await;
    assert_eq!(mock.request_count(), before + 1, "only the valid request went upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_chosen_run_id_is_used() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let mut req = for_user("rid", vec![user("q")]);
    req.run_id = "my-run-0001".into();
    let run = run_ok(&mut client, req).await;
    assert_eq!(run.run_id(), "my-run-0001");
    let h = history(&mut client, "agent:main:openai-user:rid").await;
    assert!(h.iter().all(|e| e.run_id == "my-run-0001"), "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_control_character_session_keys_are_rejected() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let long = "k".repeat(600);
    for key in [long.as_str(), "a\nb", "tab\there"] {
        let (status, _) = run_err(&mut client, with_session_key(key, vec![user("q")])).await;
        expect_invalid(&status, &format!("key {:?}", &key[..key.len().min(20)]));
    }
    let (status, _) = run_err(&mut client, for_user(&"u".repeat(600), vec![user("q")])).await;
    expect_invalid(&status, "long user");
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_turns_run_in_arrival_order() {
    let mock = start_mock().await;
    let (_svc, client) = start(ConfigBuilder::with_mock(&mock)).await;
    let (gate, first) = hold_session(&mock, &client, "fifo", "turn 0", "held").await;
    // Each turn is sent once the one before it has its place in the queue.
    let mut queued = Vec::new();
    for i in 1..=5 {
        queued.push(queue_turn(&client, "fifo", &format!("turn {i}")).await.1);
    }
    assert_eq!(mock.request_count(), 1, "the others wait for turn 0");
    gate.open();
    let out = tokio::time::timeout(T, first).await.expect("turn 0").expect("task");
    assert!(out.error.is_none(), "{:?}", out.error);
    for mut stream in queued {
        let (_, end) = drain(&mut stream).await;
        assert!(end.is_none(), "{end:?}");
    }
    let order: Vec<String> = mock.requests().iter().map(|r| r.last_user_text().unwrap_or_default()).collect();
    assert_eq!(order, (0..=5).map(|i| format!("turn {i}")).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_echo_provider_needs_no_upstream() {
    // No providers and no model: one implicit agent `main` on `echo/echo`.
    let (_svc, mut client) = start(ConfigBuilder::new()).await;
    let list = client.list_agents(ListAgentsRequest {}).await.expect("ListAgents").into_inner();
    assert_eq!(list.default_agent_id, "main");
    assert_eq!(list.agents.len(), 1);
    assert_eq!(list.agents[0].model, "echo/echo");
    let mut req = stateless(vec![user("ping pong")]);
    req.include_usage = true;
    let a = run_ok(&mut client, req.clone()).await;
    let b = run_ok(&mut client, req).await;
    assert_eq!(a.started.as_ref().expect("started").model, "echo/echo");
    assert!(!a.text.is_empty());
    assert_eq!(a.text, b.text, "deterministic");
    assert!(a.text.contains("ping pong"), "echoes the input: {:?}", a.text);
    assert_eq!(a.finish_reason(), Some("stop"));
    assert!(a.usage().is_some_and(|u| u.total_tokens == u.prompt_tokens + u.completion_tokens));
}

// ---------------------------------------------------------------------------
// More failure paths

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_falls_back_or_is_unavailable() {
    let mock = start_mock().await;
    let dead = format!("http://127.0.0.1:{}/v1", dead_port());
    let cfg = ConfigBuilder::with_mock(&mock)
        .provider("dead", &dead)
        .model_with_fallbacks("dead/m", &["mock/ok"])
        .agent(json!({"id": "main", "default": true}))
        .agent(json!({"id": "alone", "model": {"primary": "dead/m"}}));
    let (_svc, mut client) = start(cfg).await;

    let run = run_ok(&mut client, stateless(vec![user("via fallback")])).await;
    assert_eq!(run.text, "via fallback");
    assert_eq!(run.finished.as_ref().expect("finished").model, "mock/ok");

    let mut req = stateless(vec![user("q")]);
    req.agent_id = "alone".into();
    let (status, _) = run_err(&mut client, req).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_code(&status).as_deref(), Some("upstream_error"));
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_timeout_falls_back_to_the_next_model() {
    let mock = start_mock().await;
    mock.set_for_model("slow", Behavior::text("too late").delayed(Duration::from_secs(3)));
    let cfg = ConfigBuilder::with_mock(&mock)
        .set("models.providers.mock.firstByteTimeoutMs", json!(200))
        .model_with_fallbacks("mock/slow", &["mock/fast"]);
    let (_svc, mut client) = start(cfg).await;
    let t0 = Instant::now();
    let run = run_ok(&mut client, stateless(vec![user("quick please")])).await;
    assert_eq!(run.text, "quick please");
    assert_eq!(run.finished.as_ref().expect("finished").model, "mock/fast");
    assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
    assert_eq!(models_of(&mock.requests()), vec!["slow", "fast"]);
    assert!(mock.wait_for_disconnect(CANCEL_BOUND).await, "the timed-out attempt was aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_reason_length_and_extra_provider_headers_pass_through() {
    let mock = start_mock().await;
    mock.push(Behavior::text("cut short").with_finish("length"));
    let cfg = ConfigBuilder::with_mock(&mock).set("models.providers.mock.headers", json!({"x-extra": "yes"}));
    let (_svc, mut client) = start(cfg).await;
    let run = run_ok(&mut client, stateless(vec![user("q")])).await;
    assert_eq!(run.finish_reason(), Some("length"));
    assert_eq!(mock.last_request().expect("r").header("x-extra").as_deref(), Some("yes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_messages_are_rejected_with_param_messages() {
    let mock = start_mock().await;
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let wizard = harness::text_message("wizard", "abracadabra");
    let tool_without_id = harness::text_message("tool", "42");
    for (name, msgs) in
        [("unknown role", vec![wizard, user("q")]), ("tool without id", vec![user("q"), tool_without_id])]
    {
        let (status, _) = run_err(&mut client, stateless(msgs)).await;
        expect_invalid(&status, name);
        assert_eq!(error_param(&status).as_deref(), Some("messages"), "{name}");
    }
    let empty_key = client.get_session_history(GetSessionHistoryRequest::default()).await;
    assert_eq!(empty_key.expect_err("empty key").code(), Code::InvalidArgument);
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_tool_call_is_not_replayed_upstream() {
    let mock = start_mock().await;
    // A tool call whose arguments trickle in; the client leaves half way.
    mock.push(
        Behavior::tool_call("call_half", "get_weather", r#"{"city":"Copenhagen, Denmark"}"#)
            .with_fragments(10)
            .with_delay(Duration::from_millis(50)),
    );
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock)).await;
    let mut req = for_user("half", vec![user("weather?")]);
    req.tools = vec![weather_tool()];
    let mut stream = open_run(&mut client, req).await;
    assert!(matches!(next_event(&mut stream).await, Event::Started(_)));
    assert!(matches!(next_event(&mut stream).await, Event::ToolCall(_)));
    drop(stream);
    assert!(mock.wait_for_disconnect(T).await);
    let key = "agent:main:openai-user:half";
    let h = history_with(&client, key, 2).await;
    assert!(h[1].interrupted);

    // The next turn must not send a half-made tool call (the provider would reject it).
    let run = run_ok(&mut client, for_user("half", vec![user("never mind")])).await;
    assert_eq!(run.text, "never mind");
    let r = mock.last_request().expect("turn 2");
    for m in r.messages() {
        assert!(m.get("tool_calls").is_none_or(Value::is_null), "no tool_calls replayed: {}", r.raw_body);
    }
    assert_eq!(r.message_texts().first(), Some(&rt("user", "weather?")));
    assert_eq!(r.message_texts().last(), Some(&rt("user", "never mind")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_timed_out_leaves_a_usable_session() {
    let mock = start_mock().await;
    mock.push(Behavior::Hang);
    let (_svc, mut client) = start(ConfigBuilder::with_mock(&mock).timeout_seconds(0.3)).await;
    let (status, _) = run_err(&mut client, for_user("after", vec![user("first")])).await;
    assert_eq!(status.code(), Code::DeadlineExceeded);
    let run = run_ok(&mut client, for_user("after", vec![user("second")])).await;
    assert_eq!(run.text, "second");
    let r = mock.last_request().expect("turn 2");
    let sent = r.message_texts();
    assert!(
        sent.iter().all(|(role, text)| role != "assistant" || !text.is_empty()),
        "no empty assistant message goes upstream: {sent:?}"
    );
    assert_eq!(sent.first(), Some(&rt("user", "first")));
    assert_eq!(sent.last(), Some(&rt("user", "second")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_turn_cancelled_while_queued_never_runs() {
    let mock = start_mock().await;
    let (_svc, client) = start(ConfigBuilder::with_mock(&mock)).await;
    let (gate, first) = hold_session(&mock, &client, "q", "turn 1", "held").await;

    // Turn 2 waits behind turn 1; its client gives up on it.
    let (queued_run, queued) = queue_turn(&client, "q", "turn 2").await;
    drop(queued);
    // agent-svc drops the queued turn when it sees its stream cancelled; turn 1
    // must not end before that, or turn 2 would get the session's turn.
    wait_until_run_gone(&client, &queued_run).await;

    gate.open();
    assert!(tokio::time::timeout(T, first).await.expect("turn 1").expect("task").error.is_none());
    let mut c = client.clone();
    let run = run_ok(&mut c, for_user("q", vec![user("turn 3")])).await;
    assert_eq!(run.text, "turn 3");
    let users: Vec<String> = mock.requests().iter().map(|r| r.last_user_text().unwrap_or_default()).collect();
    assert_eq!(users, vec!["turn 1", "turn 3"], "the abandoned turn never reached the upstream");
    let h = history(&mut c, "agent:main:openai-user:q").await;
    let texts: Vec<(String, String)> = h.iter().map(role_text).collect();
    assert_eq!(
        texts,
        vec![rt("user", "turn 1"), rt("assistant", "held"), rt("user", "turn 3"), rt("assistant", "turn 3")],
        "the abandoned turn left no trace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_shutdown_interrupts_and_keeps_the_partial_answer() {
    let dir = TempDir::new();
    let mock = start_mock().await;
    mock.push(Behavior::trickle("p", 100, Duration::from_millis(50)));
    let (mut svc, mut client) = start(ConfigBuilder::with_mock(&mock).store_sqlite(&dir)).await;
    let mut stream = open_run(&mut client, for_user("shut", vec![user("q")])).await;
    assert!(matches!(next_event(&mut stream).await, Event::Started(_)));
    assert!(matches!(next_event(&mut stream).await, Event::Text(_)));

    let (stopped, (events, end)) =
        tokio::join!(svc.stop_with_grace(Duration::from_millis(200)), drain(&mut stream));
    stopped.expect("shutdown");
    let status = end.expect("the cut turn ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_code(&status).as_deref(), Some("agent_unavailable"));
    assert!(summarize(&events).finished.is_none());
    assert!(mock.wait_for_disconnect(T).await, "the upstream request was aborted");

    svc.restart().await;
    let mut client = svc.client().await;
    let h = history(&mut client, "agent:main:openai-user:shut").await;
    assert_eq!(h.len(), 2, "{h:?}");
    assert!(h[1].interrupted);
    assert!(role_text(&h[1]).1.starts_with("p0 "), "partial text kept: {:?}", role_text(&h[1]));
}
