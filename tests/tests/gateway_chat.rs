//! gateway-http end to end, SPEC §4 `POST /v1/chat/completions` (non-streaming):
//! agent selection, the OpenClaw headers, session keys and history, what goes
//! upstream, parameter validation, body limits and the response shape.
//!
//! A real agent-svc (its provider is the mock upstream) and a real gateway on
//! 127.0.0.1; every assertion is on the HTTP answer and/or on what the mock
//! received, and session state is read back through agent-svc's gRPC API.

use bytes::Bytes;
use e2e::mock::content_text;
use e2e::prelude::*;
use services::proto::{HistoryEntry, ListSessionsRequest};
use tonic::Code;

const INVALID_MODEL: &str = "Invalid `model`. Use `openclaw` or `openclaw/<agentId>`.";
const RESERVED: &str = "`x-openclaw-session-key` cannot use reserved internal session namespaces.";
const MISSING_USER: &str = "Missing user message in `messages`.";

/// Agents `main` (default, `mock/gpt-mock`) and `beta` (`mock/beta-model`), each
/// with its own system prompt, so the mock's request shows which agent ran.
fn two_agents(mock: &MockUpstream) -> ConfigBuilder {
    config(mock)
        .agent(json!({"id": "main", "default": true, "systemPrompt": "You are main."}))
        .agent(json!({"id": "beta", "model": "mock/beta-model", "systemPrompt": "You are beta."}))
}

async fn chat_h(s: &Stack, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut rb = s.gw.chat(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    send(rb).await
}

fn ok(r: &Reply) -> Value {
    assert_eq!(r.status, 200, "body: {}", r.text);
    r.json()
}

fn last(mock: &MockUpstream) -> RecordedRequest {
    mock.last_request().expect("the mock received a request")
}

/// The system text the mock received (exactly one system message, first).
fn system_text(req: &RecordedRequest) -> String {
    let texts = req.message_texts();
    let systems: Vec<usize> =
        texts.iter().enumerate().filter(|(_, (r, _))| r == "system").map(|(i, _)| i).collect();
    assert_eq!(systems, vec![0], "exactly one system message, first: {texts:?}");
    texts[0].1.clone()
}

/// `agent:<agent>:openai:<uuid>`.
fn assert_stateless_key(key: &str, agent: &str) {
    let prefix = format!("agent:{agent}:openai:");
    let rest = key.strip_prefix(&prefix).unwrap_or_else(|| panic!("{key:?} does not start with {prefix:?}"));
    assert!(uuid::Uuid::parse_str(rest).is_ok(), "{key:?} does not end in a uuid");
}

async fn history(s: &Stack, key: &str) -> Result<Vec<HistoryEntry>, tonic::Status> {
    s.svc.history(key).await
}

// ---------------------------------------------------------------------------
// Agent selection and the OpenClaw headers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_field_selects_the_agent_and_is_echoed() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    let cases: [(Option<&str>, &str); 8] = [
        (None, "main"),
        (Some("openclaw"), "main"),
        (Some("openclaw/default"), "main"),
        (Some("openclaw/main"), "main"),
        (Some("openclaw/beta"), "beta"),
        (Some("openclaw:beta"), "beta"),
        (Some("agent:beta"), "beta"),
        (Some("agent:main"), "main"),
    ];
    for (model, agent) in cases {
        let body = match model {
            Some(m) => with(ask("which agent?"), json!({"model": m})),
            None => ask("which agent?"),
        };
        let r = chat(&s, &body).await;
        let v = ok(&r);
        assert_eq!(v["model"], model.unwrap_or("openclaw"), "{model:?}: the request's model is echoed");
        assert_stateless_key(&r.session_key(), agent);
        let req = last(&mock);
        let upstream_model = if agent == "main" { "gpt-mock" } else { "beta-model" };
        assert_eq!(req.model(), Some(upstream_model), "{model:?} runs agent {agent}");
        assert_eq!(system_text(&req), format!("You are {agent}."), "{model:?}");
    }
    assert_eq!(mock.request_count(), cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_model_is_400_with_the_exact_message() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    let models = [
        json!("gpt-4o"),
        json!("mock/gpt-mock"),
        json!("openclaw/"),
        json!("openclaw:"),
        json!("agent:"),
        json!(""),
        json!(42),
    ];
    for m in models {
        let r = chat(&s, &with(ask("q"), json!({"model": m}))).await;
        let e = r.expect_error(400, "invalid_request_error");
        assert_eq!(e["message"], INVALID_MODEL, "model {m}");
        assert_eq!(e["param"], "model", "model {m}");
    }
    // Also with stream: true (the error comes before any SSE).
    let r = chat(&s, &with(ask("q"), json!({"model": "gpt-4o", "stream": true}))).await;
    assert_eq!(r.expect_error(400, "invalid_request_error")["message"], INVALID_MODEL);
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_id_header_overrides_the_model_and_unknown_agents_are_400() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    for model in ["openclaw", "openclaw/main", "openclaw/default"] {
        let r =
            chat_h(&s, &with(ask("q"), json!({"model": model})), &[("x-openclaw-agent-id", "beta")]).await;
        let v = ok(&r);
        assert_eq!(v["model"], model, "the model string is echoed, not the agent");
        assert_stateless_key(&r.session_key(), "beta");
        assert_eq!(last(&mock).model(), Some("beta-model"), "header beta wins over {model}");
    }
    let r =
        chat_h(&s, &with(ask("q"), json!({"model": "openclaw/beta"})), &[("x-openclaw-agent-id", "main")])
            .await;
    ok(&r);
    assert_eq!(last(&mock).model(), Some("gpt-mock"));
    let n = mock.request_count();

    let r = chat_h(&s, &ask("q"), &[("x-openclaw-agent-id", "ghost")]).await;
    assert_eq!(r.expect_error(400, "invalid_request_error")["message"], "Unknown agent 'ghost'.");
    for model in ["openclaw/ghost", "openclaw:ghost", "agent:ghost"] {
        let r = chat(&s, &with(ask("q"), json!({"model": model}))).await;
        let e = r.expect_error(400, "invalid_request_error");
        assert_eq!(e["message"], "Unknown agent 'ghost'.", "{model}");
    }
    assert_eq!(mock.request_count(), n, "unknown agents never reach the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_header_runs_the_agent_on_another_model() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    let r = chat_h(&s, &ask("q"), &[("x-openclaw-model", "mock/other-model")]).await;
    let v = ok(&r);
    assert_eq!(v["model"], "openclaw", "the response echoes the request's model, not the header");
    let req = last(&mock);
    assert_eq!(req.model(), Some("other-model"));
    assert_eq!(system_text(&req), "You are main.", "still agent main");

    let body = with(ask("q"), json!({"model": "openclaw/beta"}));
    ok(&chat_h(&s, &body, &[("x-openclaw-model", "mock/third-model")]).await);
    let req = last(&mock);
    assert_eq!(req.model(), Some("third-model"));
    assert_eq!(system_text(&req), "You are beta.", "agent beta on the header's model");
    let n = mock.request_count();

    for bad in ["nope/x", "not-a-ref"] {
        let r = chat_h(&s, &ask("q"), &[("x-openclaw-model", bad)]).await;
        let e = r.expect_error(400, "invalid_request_error");
        assert_eq!(e["message"], format!("Unknown model: {bad}"));
    }
    assert_eq!(mock.request_count(), n);
}

// ---------------------------------------------------------------------------
// Sessions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_calls_get_a_fresh_key_and_are_not_persisted() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    let a = chat(&s, &ask("one")).await;
    ok(&a);
    let b = chat(&s, &ask("two")).await;
    ok(&b);
    let (ka, kb) = (a.session_key(), b.session_key());
    assert_stateless_key(&ka, "main");
    assert_stateless_key(&kb, "main");
    assert_ne!(ka, kb, "a new key each call");
    assert_eq!(
        mock.requests()[1].message_texts(),
        vec![rt("system", "You are main."), rt("user", "two")],
        "nothing carried over"
    );
    let beta = chat(&s, &with(ask("three"), json!({"model": "openclaw/beta"}))).await;
    ok(&beta);
    assert_stateless_key(&beta.session_key(), "beta");

    for key in [ka, kb] {
        match history(&s, &key).await {
            Err(st) => assert_eq!(st.code(), Code::NotFound, "{st:?}"),
            Ok(h) => assert!(h.is_empty(), "stateless session {key} was stored: {h:?}"),
        }
    }
    let mut c = s.svc.client().await;
    let list = c.list_sessions(ListSessionsRequest::default()).await.expect("ListSessions").into_inner();
    assert!(list.sessions.is_empty(), "stateless sessions are not listed: {:?}", list.sessions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_keys_from_user_and_the_session_header() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    let key_of = |r: &Reply| {
        ok(r);
        r.session_key()
    };

    let r = chat(&s, &with(ask("q"), json!({"user": "alice"}))).await;
    assert_eq!(key_of(&r), "agent:main:openai-user:alice");
    let r = chat(&s, &with(ask("q"), json!({"user": "alice", "model": "openclaw/beta"}))).await;
    assert_eq!(key_of(&r), "agent:beta:openai-user:alice");

    let r = chat_h(&s, &ask("q"), &[("x-openclaw-session-key", "my-key")]).await;
    assert_eq!(key_of(&r), "agent:main:my-key", "a plain key is scoped to the agent (OpenClaw: 500)");
    let r = chat_h(
        &s,
        &with(ask("q"), json!({"model": "openclaw/beta"})),
        &[("x-openclaw-session-key", "my-key")],
    )
    .await;
    assert_eq!(key_of(&r), "agent:beta:my-key");
    let r =
        chat_h(&s, &ask("q"), &[("x-openclaw-session-key", "my-key"), ("x-openclaw-agent-id", "beta")]).await;
    assert_eq!(key_of(&r), "agent:beta:my-key");

    // The header wins over `user`.
    let r = chat_h(&s, &with(ask("q"), json!({"user": "bob"})), &[("x-openclaw-session-key", "k1")]).await;
    assert_eq!(key_of(&r), "agent:main:k1");

    // `agent:<id>:<rest>` is used as is and its agent wins over model and header.
    let r = chat_h(
        &s,
        &with(ask("q"), json!({"model": "openclaw/main"})),
        &[("x-openclaw-session-key", "agent:beta:custom"), ("x-openclaw-agent-id", "main")],
    )
    .await;
    assert_eq!(key_of(&r), "agent:beta:custom");
    let req = last(&mock);
    assert_eq!(req.model(), Some("beta-model"), "the key's agent ran");
    assert_eq!(system_text(&req), "You are beta.");
    let n = mock.request_count();

    let r = chat_h(&s, &ask("q"), &[("x-openclaw-session-key", "agent:ghost:x")]).await;
    assert_eq!(r.expect_error(400, "invalid_request_error")["message"], "Unknown agent 'ghost'.");
    assert_eq!(mock.request_count(), n);

    // Stable sessions are kept.
    let mut c = s.svc.client().await;
    let list = c.list_sessions(ListSessionsRequest::default()).await.expect("ListSessions").into_inner();
    let mut keys: Vec<String> = list.sessions.into_iter().map(|x| x.session_key).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "agent:beta:custom",
            "agent:beta:my-key",
            "agent:beta:openai-user:alice",
            "agent:main:k1",
            "agent:main:my-key",
            "agent:main:openai-user:alice",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_oversized_and_control_character_session_keys_are_400() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    for key in [
        "subagent:x",
        "cron:nightly",
        "acp:abc",
        "agent:main:subagent:x",
        "agent:main:cron:nightly",
        "agent:beta:acp:abc",
        "agent:main:agent:main:cron:x",
    ] {
        let r = chat_h(&s, &ask("q"), &[("x-openclaw-session-key", key)]).await;
        let e = r.expect_error(400, "invalid_request_error");
        assert_eq!(e["message"], RESERVED, "{key}");
    }
    for key in ["k".repeat(513), format!("agent:main:{}", "k".repeat(520)), "ab\tcd".to_string()] {
        let r = chat_h(&s, &ask("q"), &[("x-openclaw-session-key", &key)]).await;
        r.expect_error(400, "invalid_request_error");
    }
    assert_eq!(mock.request_count(), 0);
    // Within the limit is fine.
    let key = "k".repeat(500);
    let r = chat_h(&s, &ask("q"), &[("x-openclaw-session-key", &key)]).await;
    ok(&r);
    assert_eq!(r.session_key(), format!("agent:main:{key}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_session_continues_from_the_stored_transcript() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    mock.push(Behavior::text("answer one"));
    mock.push(Behavior::text("answer two"));
    mock.push(Behavior::text("answer three"));
    let sys = json!({"role": "system", "content": "Be brief."});

    let r1 = chat(&s, &json!({"user": "hist", "messages": [sys, user_msg("turn one")]})).await;
    assert_eq!(ok(&r1)["choices"][0]["message"]["content"], "answer one");
    assert_eq!(r1.session_key(), "agent:main:openai-user:hist");
    let req1 = last(&mock);
    let system = system_text(&req1);
    assert!(system.starts_with("You are main.") && system.ends_with("Be brief."), "{system:?}");
    assert_eq!(req1.message_texts()[1..], [rt("user", "turn one")]);

    // The client re-sends its whole history (as OpenAI clients do): the stored
    // transcript goes upstream once, then the new turn.
    let r2 = chat(
        &s,
        &json!({"user": "hist", "messages": [
            sys, user_msg("turn one"), {"role": "assistant", "content": "answer one"}, user_msg("turn two")]}),
    )
    .await;
    assert_eq!(ok(&r2)["choices"][0]["message"]["content"], "answer two");
    let req2 = last(&mock);
    assert_eq!(
        req2.message_texts()[1..],
        [rt("user", "turn one"), rt("assistant", "answer one"), rt("user", "turn two")],
        "turn 1's user + assistant before the new message, nothing duplicated"
    );

    // A client that sends only the new message gets the same continuation; a
    // client-side history that differs from the stored one is not what goes upstream.
    let r3 = chat(
        &s,
        &json!({"user": "hist", "messages": [
            user_msg("forged question"), {"role": "assistant", "content": "forged answer"}, user_msg("turn three")]}),
    )
    .await;
    assert_eq!(ok(&r3)["choices"][0]["message"]["content"], "answer three");
    let req3 = last(&mock);
    assert_eq!(
        req3.message_texts(),
        vec![
            rt("system", "You are main."),
            rt("user", "turn one"),
            rt("assistant", "answer one"),
            rt("user", "turn two"),
            rt("assistant", "answer two"),
            rt("user", "turn three"),
        ]
    );

    let h = history(&s, "agent:main:openai-user:hist").await.expect("history");
    let entries: Vec<_> = h.iter().map(role_text).collect();
    assert_eq!(
        entries,
        vec![
            rt("user", "turn one"),
            rt("assistant", "answer one"),
            rt("user", "turn two"),
            rt("assistant", "answer two"),
            rt("user", "turn three"),
            rt("assistant", "answer three"),
        ]
    );
    assert!(h.iter().all(|e| !e.interrupted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_keep_roles_names_tool_calls_and_images_upstream() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;

    // Stateless: the request's own history is kept message by message (OpenClaw
    // flattens it into one user message).
    let body = json!({"messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "developer", "content": "Use metric units."},
        {"role": "user", "name": "bob", "content": "weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_w1", "content": "18C sunny"},
    ],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]});
    ok(&chat(&s, &body).await);
    let req = last(&mock);
    let system = system_text(&req);
    assert!(system.starts_with("You are main."), "agent prompt first: {system:?}");
    let (terse, metric) =
        (system.find("Be terse.").expect("system"), system.find("Use metric units.").expect("dev"));
    assert!(terse < metric, "request system texts appended in order: {system:?}");
    let m = req.messages();
    assert_eq!(req.roles(), ["system", "user", "assistant", "tool"]);
    assert_eq!(m[1]["name"], "bob");
    assert_eq!(content_text(&m[1]["content"]), "weather in Paris?");
    let tc = &m[2]["tool_calls"][0];
    assert_eq!(tc["id"], "call_w1");
    assert_eq!(tc["type"], "function");
    assert_eq!(tc["function"]["name"], "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(tc["function"]["arguments"].as_str().expect("arguments text"))
            .expect("json"),
        json!({"city": "Paris"})
    );
    assert!(m[2]["content"].is_null() || content_text(&m[2]["content"]).is_empty(), "{}", m[2]);
    assert_eq!(m[3]["tool_call_id"], "call_w1");
    assert_eq!(content_text(&m[3]["content"]), "18C sunny");
    assert_eq!(req.body["tools"][0]["function"]["name"], "get_weather");

    // An earlier turn without tools: user / assistant / user stay three messages.
    let body = json!({"messages": [user_msg("a"), {"role": "assistant", "content": "b"}, user_msg("c")]});
    ok(&chat(&s, &body).await);
    assert_eq!(
        last(&mock).message_texts(),
        vec![rt("system", "You are main."), rt("user", "a"), rt("assistant", "b"), rt("user", "c")]
    );

    // Image parts are passed on.
    let url = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
    let body = json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": url}}]}]});
    ok(&chat(&s, &body).await);
    let req = last(&mock);
    let parts = req.messages()[1]["content"].as_array().cloned().expect("content parts kept as an array");
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0]["text"], "what is this?");
    let img = &parts[1]["image_url"];
    assert_eq!(img.get("url").unwrap_or(img), url, "{parts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_user_message_is_400() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    for messages in [
        json!([]),
        json!([{"role": "system", "content": "only system"}]),
        json!([user_msg("q"), {"role": "assistant", "content": "a"}]),
        json!([user_msg("q"), {"role": "assistant", "content": "a"}, {"role": "system", "content": "s"}]),
    ] {
        let r = chat(&s, &json!({"messages": messages})).await;
        let e = r.expect_error(400, "invalid_request_error");
        assert_eq!(e["message"], MISSING_USER, "{messages}");
        assert_eq!(e["param"], "messages", "{messages}");
    }
    assert_eq!(mock.request_count(), 0);
}

// ---------------------------------------------------------------------------
// Parameters

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_parameter_is_400_naming_it() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather"}}]);
    let img = |url: &str| json!({"type": "image_url", "image_url": {"url": url}});
    let png = "data:image/png;base64,AAAA";
    let q = |patch: Value| with(ask("q"), patch);
    let cases: Vec<(&str, Value)> = vec![
        ("temperature", q(json!({"temperature": 2.5}))),
        ("temperature", q(json!({"temperature": -0.1}))),
        ("temperature", q(json!({"temperature": "hot"}))),
        ("top_p", q(json!({"top_p": 1.5}))),
        ("top_p", q(json!({"top_p": -0.5}))),
        ("top_p", q(json!({"top_p": "x"}))),
        ("frequency_penalty", q(json!({"frequency_penalty": 2.5}))),
        ("frequency_penalty", q(json!({"frequency_penalty": -3}))),
        ("frequency_penalty", q(json!({"frequency_penalty": "x"}))),
        ("presence_penalty", q(json!({"presence_penalty": 3}))),
        ("presence_penalty", q(json!({"presence_penalty": -2.5}))),
        ("presence_penalty", q(json!({"presence_penalty": true}))),
        ("seed", q(json!({"seed": 1.5}))),
        ("seed", q(json!({"seed": "42"}))),
        ("stop", q(json!({"stop": ["a", "b", "c", "d", "e"]}))),
        ("stop", q(json!({"stop": [""]}))),
        ("stop", q(json!({"stop": ["a", ""]}))),
        ("stop", q(json!({"stop": 42}))),
        ("stop", q(json!({"stop": [1]}))),
        ("max_completion_tokens", q(json!({"max_completion_tokens": 0}))),
        ("max_completion_tokens", q(json!({"max_completion_tokens": -1}))),
        ("max_completion_tokens", q(json!({"max_completion_tokens": 1.5}))),
        ("max_completion_tokens", q(json!({"max_completion_tokens": "10"}))),
        ("max_tokens", q(json!({"max_tokens": 0}))),
        ("max_tokens", q(json!({"max_tokens": 2.5}))),
        ("max_tokens", q(json!({"max_tokens": "x"}))),
        ("n", q(json!({"n": 2}))),
        ("n", q(json!({"n": 0}))),
        ("n", q(json!({"n": "1"}))),
        ("tools", q(json!({"tools": "get_weather"}))),
        ("tools", q(json!({"tools": {}}))),
        ("tools", q(json!({"tools": ["get_weather"]}))),
        ("tools", q(json!({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}))),
        ("tools", q(json!({"tools": [{"type": "function"}]}))),
        ("tools", q(json!({"tools": [{"type": "function", "function": {"name": ""}}]}))),
        ("tools", q(json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}))),
        ("tool_choice", q(json!({"tool_choice": "sometimes", "tools": tools}))),
        ("tool_choice", q(json!({"tool_choice": 42, "tools": tools}))),
        ("tool_choice", q(json!({"tool_choice": "required"}))),
        (
            "tool_choice",
            q(json!({"tool_choice": {"type": "function", "function": {"name": "missing"}}, "tools": tools})),
        ),
        ("tool_choice", q(json!({"tool_choice": {"type": "function"}, "tools": tools}))),
        ("response_format", q(json!({"response_format": {"type": "xml"}}))),
        ("response_format", q(json!({"response_format": "json_object"}))),
        ("response_format", q(json!({"response_format": {"type": "json_schema"}}))),
        ("stream_options", q(json!({"stream_options": {"include_usage": "yes"}}))),
        ("stream_options", q(json!({"stream_options": "usage"}))),
        ("stream", q(json!({"stream": "yes"}))),
        ("user", q(json!({"user": 42}))),
        ("model", q(json!({"model": ["openclaw"]}))),
        ("messages", q(json!({"messages": "hi"}))),
        ("messages", q(json!({"messages": [1]}))),
        ("messages", q(json!({"messages": [{"content": "no role"}]}))),
        ("messages", q(json!({"messages": [{"role": "robot", "content": "x"}]}))),
        ("messages", q(json!({"messages": [{"role": "user", "content": 42}]}))),
        ("messages", q(json!({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}))),
        (
            "messages",
            q(json!({"messages": [{"role": "user", "content": [img("https://example.com/cat.png")]}]})),
        ),
        ("messages", q(json!({"messages": [{"role": "user", "content": vec![img(png); 9]}]}))),
        ("messages", q(json!({"messages": [user_msg("q"), {"role": "tool", "content": "no id"}]}))),
        ("messages", json!({"model": "openclaw"})),
        ("messages", json!({"messages": null})),
    ];
    for (param, body) in &cases {
        for stream in [false, true] {
            if *param == "stream" && stream {
                continue;
            }
            let body = if stream { with(body.clone(), json!({"stream": true})) } else { body.clone() };
            let r = chat(&s, &body).await;
            let e = r.expect_error(400, "invalid_request_error");
            assert_eq!(e["param"], *param, "{body}: {e}");
        }
    }
    assert_eq!(mock.request_count(), 0, "nothing invalid reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boundary_parameters_are_accepted_and_forwarded() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "d",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let body = with(
        ask("q"),
        json!({
            "temperature": 2, "top_p": 0, "frequency_penalty": -2, "presence_penalty": 2, "seed": 42,
            "stop": ["a", "b", "c", "d"], "max_completion_tokens": 99, "max_tokens": 5, "n": 1,
            "tools": tools, "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": {"type": "json_object"}, "stream_options": {"include_usage": true},
            "unknown_field": {"ignored": true}, "logit_bias": null,
        }),
    );
    ok(&chat(&s, &body).await);
    let b = last(&mock).body;
    assert_eq!(b["temperature"].as_f64(), Some(2.0));
    assert_eq!(b["top_p"].as_f64(), Some(0.0));
    assert_eq!(b["frequency_penalty"].as_f64(), Some(-2.0));
    assert_eq!(b["presence_penalty"].as_f64(), Some(2.0));
    assert_eq!(b["seed"].as_i64(), Some(42), "{b}");
    assert_eq!(b["stop"], json!(["a", "b", "c", "d"]));
    let cap = b.get("max_completion_tokens").or_else(|| b.get("max_tokens")).and_then(Value::as_u64);
    assert_eq!(cap, Some(99), "max_completion_tokens wins over max_tokens: {b}");
    assert_eq!(b["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(b["tool_choice"]["function"]["name"], "get_weather");
    assert_eq!(b["response_format"], json!({"type": "json_object"}));
    assert!(b.get("unknown_field").is_none(), "unknown fields are not forwarded: {b}");

    // The other end of each range, `stop` as a string, `tool_choice` modes, json_schema.
    let body = with(
        ask("q"),
        json!({"temperature": 0, "top_p": 1, "frequency_penalty": 2, "presence_penalty": -2, "stop": "END",
               "max_tokens": 1, "tools": tools, "tool_choice": "required",
               "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}}),
    );
    ok(&chat(&s, &body).await);
    let b = last(&mock).body;
    assert_eq!(b["temperature"].as_f64(), Some(0.0));
    assert_eq!(b["tool_choice"], "required");
    let stop = &b["stop"];
    assert!(stop == &json!("END") || stop == &json!(["END"]), "{stop}");
    for mode in ["auto", "none"] {
        ok(&chat(&s, &with(ask("q"), json!({"tools": tools, "tool_choice": mode}))).await);
        assert_eq!(last(&mock).body["tool_choice"], mode);
    }
    // `null` counts as absent.
    ok(&chat(&s, &with(ask("q"), json!({"temperature": null, "stop": null, "user": null, "tools": null})))
        .await);
}

// ---------------------------------------------------------------------------
// Body handling

fn padded_body(len: usize) -> String {
    let skeleton = json!({"messages": [user_msg("")]}).to_string();
    assert!(len >= skeleton.len());
    let body = json!({"messages": [user_msg(&"x".repeat(len - skeleton.len()))]}).to_string();
    assert_eq!(body.len(), len);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_bytes_is_413() {
    const MAX: usize = 512;
    let mock = MockUpstream::start().await;
    let s =
        stack(two_agents(&mock).set("gateway.http.endpoints.chatCompletions.maxBodyBytes", json!(MAX))).await;
    let post =
        || s.gw.post("/v1/chat/completions").bearer_auth(TOKEN).header("content-type", "application/json");

    // Exactly the cap is fine, one byte more is not (Content-Length).
    ok(&send(post().body(padded_body(MAX))).await);
    let r = send(post().body(padded_body(MAX + 1))).await;
    let e = r.expect_error(413, "invalid_request_error");
    assert_eq!(e["message"], "Payload too large");
    assert_eq!(r.header("connection"), Some("close"), "the connection is closed: {:?}", r.headers);
    let r = send(post().body(padded_body(8 * MAX))).await;
    r.expect_error(413, "invalid_request_error");

    // Chunked transfer (no Content-Length): the cap applies to what is read.
    let chunked = |body: String| {
        let pieces: Vec<Result<Bytes, std::io::Error>> =
            body.into_bytes().chunks(100).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        reqwest::Body::wrap_stream(futures::stream::iter(pieces))
    };
    let r = send(post().body(chunked(padded_body(4 * MAX)))).await;
    let e = r.expect_error(413, "invalid_request_error");
    assert_eq!(e["message"], "Payload too large");
    ok(&send(post().body(chunked(padded_body(MAX)))).await);
    assert_eq!(mock.request_count(), 2, "only the two bodies within the cap ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_and_non_object_bodies_are_400() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    let post = |body: &str| {
        s.gw.post("/v1/chat/completions")
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    for body in ["", "{", "{\"messages\": [", "not json", "{\"messages\": []} trailing", "{'a': 1}"] {
        let r = send(post(body)).await;
        let e = r.expect_error(400, "invalid_request_error");
        assert!(e.get("param").is_none_or(Value::is_null), "{body:?}: {e}");
    }
    for body in ["[]", "[{\"role\": \"user\", \"content\": \"hi\"}]", "\"hello\"", "42", "null", "true"] {
        let r = send(post(body)).await;
        r.expect_error(400, "invalid_request_error");
    }
    assert_eq!(mock.request_count(), 0);
}

// ---------------------------------------------------------------------------
// The non-streaming answer

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_answer_shape_and_real_usage() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    mock.push(Behavior::text("Hello there, friend").with_usage(12, 3));
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let r = chat(&s, &with(ask("hi"), json!({"model": "openclaw/main"}))).await;
    let v = ok(&r);
    assert!(r.header("content-type").unwrap_or_default().starts_with("application/json"), "{:?}", r.headers);
    let id = v["id"].as_str().expect("id");
    assert!(
        id.strip_prefix("chatcmpl_").is_some_and(|u| uuid::Uuid::parse_str(u).is_ok()),
        "id {id:?} is chatcmpl_<uuid>"
    );
    assert_eq!(v["object"], "chat.completion");
    let created = v["created"].as_u64().expect("created");
    assert!(created >= before && created <= before + 60, "created {created} (now {before})");
    assert_eq!(v["model"], "openclaw/main");
    assert_eq!(
        v["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "Hello there, friend"}, "finish_reason": "stop"}])
    );
    assert_eq!(v["usage"], json!({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}));
    assert_stateless_key(&r.session_key(), "main");
    let req = last(&mock);
    assert!(req.stream() && req.include_usage(), "the upstream is always asked to stream with usage");

    // A second answer gets another id.
    let v2 = ok(&chat(&s, &ask("hi")).await);
    assert_ne!(v2["id"], v["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_tool_calls() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    mock.push(Behavior::tool_calls(vec![
        MockToolCall::new("call_abc", "get_weather", r#"{"city":"Paris","unit":"c"}"#),
        MockToolCall::without_id("get_time", r#"{"tz":"Europe/Paris"}"#),
    ]));
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
    ]);
    let v = ok(&chat(&s, &with(ask("weather and time in Paris?"), json!({"tools": tools}))).await);
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let msg = &choice["message"];
    assert_eq!(msg["role"], "assistant");
    assert!(msg.get("content").is_some_and(Value::is_null), "content is null with tool calls only: {msg}");
    let calls = msg["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 2, "{msg}");
    assert_eq!(calls[0]["id"], "call_abc");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args = calls[0]["function"]["arguments"].as_str().expect("arguments is a JSON string");
    assert_eq!(
        serde_json::from_str::<Value>(args).expect("valid JSON"),
        json!({"city": "Paris", "unit": "c"})
    );
    let id1 = calls[1]["id"].as_str().expect("a call without an upstream id gets one");
    assert!(id1.starts_with("call_") && id1 != "call_abc", "{id1:?}");
    assert_eq!(calls[1]["type"], "function");
    assert_eq!(calls[1]["function"]["name"], "get_time");
    let args = calls[1]["function"]["arguments"].as_str().expect("arguments is a JSON string");
    assert_eq!(serde_json::from_str::<Value>(args).expect("valid JSON"), json!({"tz": "Europe/Paris"}));
    assert_eq!(v["usage"]["total_tokens"], 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_call_round_trip_in_a_user_session() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    mock.push(Behavior::tool_call("call_9", "get_weather", r#"{"city":"Oslo"}"#));
    mock.push(Behavior::text("It is 3C in Oslo."));
    let tools =
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let v =
        ok(&chat(&s, &json!({"user": "tools", "tools": tools, "messages": [user_msg("weather in Oslo?")]}))
            .await);
    let call = v["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(call["id"], "call_9");
    // The client answers the call; the session supplies the assistant tool-call message.
    let v = ok(&chat(
        &s,
        &json!({"user": "tools", "tools": tools, "messages": [
            user_msg("weather in Oslo?"),
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_9", "content": "3C"}]}),
    )
    .await);
    assert_eq!(v["choices"][0]["message"]["content"], "It is 3C in Oslo.");
    let req = last(&mock);
    assert_eq!(req.roles(), ["system", "user", "assistant", "tool"]);
    let m = req.messages();
    assert_eq!(m[2]["tool_calls"][0]["id"], "call_9");
    assert_eq!(m[2]["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(m[3]["tool_call_id"], "call_9");

    // The tool-call and tool messages are part of the stored transcript.
    mock.push(Behavior::text("You're welcome."));
    ok(&chat(&s, &json!({"user": "tools", "messages": [user_msg("thanks")]})).await);
    let req = last(&mock);
    assert_eq!(req.roles(), ["system", "user", "assistant", "tool", "assistant", "user"]);
    let m = req.messages();
    assert_eq!(m[2]["tool_calls"][0]["id"], "call_9");
    assert_eq!(m[3]["tool_call_id"], "call_9");
    assert_eq!(content_text(&m[3]["content"]), "3C");
    assert_eq!(content_text(&m[4]["content"]), "It is 3C in Oslo.");
    let h = history(&s, "agent:main:openai-user:tools").await.expect("history");
    let roles: Vec<String> = h.iter().map(|e| role_text(e).0).collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant", "user", "assistant"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_reason_length_is_reported() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    mock.push(Behavior::text("cut sho").with_finish("length"));
    let v = ok(&chat(&s, &with(ask("long please"), json!({"max_tokens": 2}))).await);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["message"]["content"], "cut sho");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_content_only_on_an_assistant_message_with_tool_calls() {
    let mock = MockUpstream::start().await;
    let s = stack(two_agents(&mock)).await;
    let call = json!({"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}});
    // Allowed: null content on an assistant message with tool calls.
    let body = json!({"messages": [user_msg("q"), {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "r"}]});
    ok(&chat(&s, &body).await);
    let n = mock.request_count();
    // SPEC §4: "Content is a string, an array of parts ..., or null on an assistant
    // message with `tool_calls`": every other null content is a 400 naming `messages`.
    let cases = [
        ("user", json!([{"role": "user", "content": null}])),
        ("user without content", json!([{"role": "user"}])),
        ("system", json!([{"role": "system", "content": null}, user_msg("q")])),
        (
            "assistant without tool_calls",
            json!([user_msg("q"), {"role": "assistant", "content": null}, user_msg("q2")]),
        ),
        (
            "assistant without content or tool_calls",
            json!([user_msg("q"), {"role": "assistant"}, user_msg("q2")]),
        ),
        (
            "tool",
            json!([user_msg("q"), {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": null}]),
        ),
    ];
    let mut failures = Vec::new();
    for (what, messages) in cases {
        let r = chat(&s, &json!({"messages": messages})).await;
        if r.status != 400 {
            failures.push(format!("{what}: {} {}", r.status, r.text));
            continue;
        }
        let e = r.expect_error(400, "invalid_request_error");
        assert_eq!(e["param"], "messages", "{what}: {e}");
    }
    assert!(failures.is_empty(), "null content accepted where SPEC §4 forbids it:\n{}", failures.join("\n"));
    assert_eq!(mock.request_count(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_url_rules() {
    let mock = MockUpstream::start().await;
    let url = "https://example.com/cat.png";
    let img = |u: &str| {
        json!({"role": "user", "content": [{"type": "text", "text": "what?"},
        {"type": "image_url", "image_url": {"url": u}}]})
    };

    // Default: http(s) URLs are refused.
    let s = stack(two_agents(&mock)).await;
    let r = chat(&s, &json!({"messages": [img(url)]})).await;
    assert_eq!(r.expect_error(400, "invalid_request_error")["param"], "messages");
    assert_eq!(mock.request_count(), 0);

    // `images.allowUrl`: passed to the provider as is.
    let cfg = two_agents(&mock).set("gateway.http.endpoints.chatCompletions.images.allowUrl", json!(true));
    let s = stack(cfg).await;
    ok(&chat(&s, &json!({"messages": [img(url)]})).await);
    let parts = last(&mock).messages()[1]["content"].clone();
    let sent = &parts[1]["image_url"];
    assert_eq!(sent.get("url").unwrap_or(sent), url, "{parts}");

    // `images.maxBytes` caps each decoded image.
    let cfg = two_agents(&mock).set("gateway.http.endpoints.chatCompletions.images.maxBytes", json!(16));
    let s = stack(cfg).await;
    let small = format!("data:image/png;base64,{}", "A".repeat(16));
    ok(&chat(&s, &json!({"messages": [img(&small)]})).await);
    let big = format!("data:image/png;base64,{}", "A".repeat(64));
    let r = chat(&s, &json!({"messages": [img(&big)]})).await;
    assert_eq!(r.expect_error(400, "invalid_request_error")["param"], "messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_session_survives_restarts_with_sqlite() {
    let mock = MockUpstream::start().await;
    let dir = harness::TempDir::new();
    let cfg = two_agents(&mock).store_sqlite(&dir);
    let mut s = stack(cfg.clone()).await;
    mock.push(Behavior::text("first answer"));
    ok(&chat(&s, &json!({"user": "durable", "messages": [user_msg("first question")]})).await);

    // Both services restart.
    s.gw.stop().await;
    s.svc.restart().await;
    let gw = Gateway::start(&cfg.build(), Some(&s.svc.url())).await.with_bearer(TOKEN);
    mock.push(Behavior::text("second answer"));
    let r = send(gw.chat(&json!({"user": "durable", "messages": [user_msg("second question")]}))).await;
    assert_eq!(ok(&r)["choices"][0]["message"]["content"], "second answer");
    assert_eq!(
        last(&mock).message_texts(),
        vec![
            rt("system", "You are main."),
            rt("user", "first question"),
            rt("assistant", "first answer"),
            rt("user", "second question"),
        ]
    );
}

/// Writes `head` and `body` on a raw connection and reads until the server
/// closes it; returns what it answered. The body may be incomplete on purpose.
async fn raw_exchange(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(head.as_bytes()).await.expect("write head");
    conn.write_all(body).await.expect("write body");
    let mut out = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server did not close the connection; got {:?}", String::from_utf8_lossy(&out));
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_refused_and_the_connection_closed_without_reading_it_all() {
    let mock = MockUpstream::start().await;
    let s =
        stack(two_agents(&mock).set("gateway.http.endpoints.chatCompletions.maxBodyBytes", json!(256))).await;
    let addr = s.gw.addr();

    // Declared too large: refused before the (never sent) rest of the body.
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    );
    let answer = raw_exchange(addr, &head, &[b'{'; 100]).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.contains("Payload too large"), "{answer:?}");

    // Chunked: refused once the cap is passed, before the terminating chunk.
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let mut body = Vec::new();
    for _ in 0..4 {
        body.extend_from_slice(format!("{:x}\r\n{}\r\n", 100, "x".repeat(100)).as_bytes());
    }
    let answer = raw_exchange(addr, &head, &body).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.contains("Payload too large"), "{answer:?}");
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_client_sends_is_a_500() {
    let mock = MockUpstream::start().await;
    // A short answer whatever the input (long answers are `gateway_stream::long_answers_*`).
    mock.set_default(Behavior::text("ok"));
    let s = stack(two_agents(&mock)).await;
    let q = |patch: Value| with(ask("q"), patch);
    let raw_bodies = [
        "[".repeat(10_000),
        "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], \"temperature\": 1e400}".to_string(),
        "{\"messages\": \"\\ud800\"}".to_string(),
        "\u{feff}{\"messages\": []}".to_string(),
    ];
    for body in &raw_bodies {
        let r = send(s.gw.post("/v1/chat/completions").bearer_auth(TOKEN).body(body.clone())).await;
        assert!(r.status < 500, "{} for {:?}: {}", r.status, &body[..body.len().min(80)], r.text);
        r.expect_error(r.status, "invalid_request_error");
    }
    let bodies = [
        q(json!({"model": "x".repeat(100_000)})),
        q(json!({"user": "u".repeat(10_000)})),
        q(json!({"user": "a\nb"})),
        q(json!({"user": ""})),
        q(json!({"temperature": 1e308})),
        q(json!({"n": 1e30})),
        q(json!({"max_tokens": 1e30})),
        q(json!({"max_completion_tokens": 18_446_744_073_709_551_615u64})),
        q(json!({"seed": -1})),
        q(json!({"seed": 1e300})),
        q(json!({"stop": ["x".repeat(10_000), "y", "z", "w"]})),
        q(json!({"response_format": {"type": "json_schema", "json_schema": "x"}})),
        q(
            json!({"tools": (0..300).map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}})).collect::<Vec<_>>()}),
        ),
        json!({"messages": (0..2000).map(|i| user_msg(&format!("m{i}"))).collect::<Vec<_>>()}),
        json!({"messages": [{"role": 42, "content": "q"}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!"}}]}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 42}]}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
        json!({"messages": [{"role": "assistant", "content": "a", "tool_calls": [42]}, user_msg("q")]}),
        json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function"}]}, user_msg("q")]}),
        json!({"messages": [{"role": "user", "content": "q", "name": 42}]}),
        json!({"messages": [{"role": "user", "content": "q\u{0}nul"}]}),
        json!({"messages": [user_msg(&"big ".repeat(250_000))]}),
    ];
    for body in &bodies {
        let r = chat(&s, body).await;
        let shown: String = body.to_string().chars().take(100).collect();
        assert!(r.status < 500, "{} for {shown}: {}", r.status, r.text);
        if r.status != 200 {
            r.expect_error(400, "invalid_request_error");
        }
    }
    let headers: Vec<(&str, reqwest::header::HeaderValue)> = vec![
        (
            "x-openclaw-session-key",
            reqwest::header::HeaderValue::from_bytes(b"k\xc3\x28ey").expect("obs-text"),
        ),
        ("x-openclaw-session-key", "agent:".parse().expect("hv")),
        ("x-openclaw-session-key", "agent:main:".parse().expect("hv")),
        ("x-openclaw-session-key", "agent::x".parse().expect("hv")),
        ("x-openclaw-session-key", "agent:m a i n:x".parse().expect("hv")),
        ("x-openclaw-session-key", "".parse().expect("hv")),
        ("x-openclaw-session-key", "  ".parse().expect("hv")),
        ("x-openclaw-agent-id", "../../etc".parse().expect("hv")),
        ("x-openclaw-agent-id", reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").expect("obs-text")),
        ("x-openclaw-agent-id", "x".repeat(5000).parse().expect("hv")),
        ("x-openclaw-model", "mock/".parse().expect("hv")),
        ("x-openclaw-model", "/".parse().expect("hv")),
        ("x-openclaw-model", "/gpt-mock".parse().expect("hv")),
        ("x-openclaw-model", "x".repeat(5000).parse().expect("hv")),
        ("authorization", reqwest::header::HeaderValue::from_bytes(b"Bearer \xff").expect("obs-text")),
    ];
    for (name, value) in headers {
        let r = send(s.gw.chat(&ask("q")).header(name, value.clone())).await;
        assert!(r.status < 500, "{} for {name}: {value:?}: {}", r.status, r.text);
        if r.status != 200 {
            let kind = if name == "authorization" { "unauthorized" } else { "invalid_request_error" };
            r.expect_error(r.status, kind);
        }
    }
}
