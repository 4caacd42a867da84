//! Sessions that last (SPEC §9): a stable session driven far past its context
//! budget keeps answering and never sends more than the budget; compaction
//! (summarised with the documented prompt, or truncated without orphaning a
//! tool result) keeps the compacted turns in history, flagged; a provider that
//! finds the prompt too long gets one compaction and a retry; sessions are
//! reset, deleted, compacted and paged through over gRPC and the WebSocket;
//! retention sweeps old sessions. End to end: mock upstream, agent-svc,
//! gateway, real sockets.

use e2e::harness::TempDir;
use e2e::prelude::*;
use e2e::ws::WsClient;
use services::proto::{
    CompactSessionRequest, DeleteSessionRequest, GetSessionHistoryRequest, ListSessionsRequest,
    ResetSessionRequest,
};

/// The agents' budget in these tests, in estimated tokens.
const BUDGET: u64 = 1500;
/// `compaction.summaryMaxTokens` in these tests.
const SUMMARY_MAX: u32 = 200;
/// About 70 tokens of text, so that a few turns fill the budget.
const FILLER: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor \
incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation";

fn budgeted(mock: &MockUpstream, mode: &str) -> ConfigBuilder {
    config(mock)
        .set("agents.defaults.contextTokens", json!(BUDGET))
        .set("agents.defaults.compaction", json!({"mode": mode, "summaryMaxTokens": SUMMARY_MAX}))
}

fn is_summary_call(r: &RecordedRequest) -> bool {
    r.message_texts()
        .first()
        .is_some_and(|(role, text)| role == "system" && *text == agent_svc::run::summary_prompt(SUMMARY_MAX))
}

/// Bytes of the roles and texts a request sent upstream. The estimator counts
/// at least one token per three of them, so a prompt within the budget stays
/// within three times the budget in bytes.
fn prompt_bytes(r: &RecordedRequest) -> usize {
    r.message_texts().iter().map(|(role, text)| role.len() + text.len()).sum()
}

fn turn(user: &str, text: &str) -> Value {
    with(ask(text), json!({"user": user}))
}

/// The user key of `user` for the default agent over HTTP.
fn key_of(user: &str) -> String {
    format!("agent:main:openai-user:{user}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_driven_far_past_its_budget_keeps_answering_within_it() {
    let mock = MockUpstream::start().await;
    drive_past_the_budget(&mock, budgeted(&mock, "summarize")).await;
}

/// The same on the default store, SQLite, whose turns read their context from
/// its cache: compactions must cut it in place without losing a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_session_driven_far_past_its_budget_keeps_answering_within_it() {
    let mock = MockUpstream::start().await;
    let dir = TempDir::new();
    drive_past_the_budget(&mock, budgeted(&mock, "summarize").store_sqlite(&dir)).await;
}

/// 200 turns of one session through a stack on `cfg`, checked against what
/// the mock received and the session's history.
async fn drive_past_the_budget(mock: &MockUpstream, cfg: ConfigBuilder) {
    let s = stack(cfg).await;
    let mut uncompacted_bytes = 0usize;
    for i in 0..200 {
        let text = format!("turn {i}: {FILLER}");
        let r = chat(&s, &turn("alice", &text)).await;
        assert_eq!(r.status, 200, "turn {i}: {}", r.text);
        // What a session without compaction would have sent by now: every user
        // and assistant text so far (echo answers with the question).
        uncompacted_bytes += 2 * ("user".len() + text.len());
    }
    let requests = mock.requests();
    let (summaries, turns): (Vec<&RecordedRequest>, Vec<&RecordedRequest>) =
        requests.iter().partition(|r| is_summary_call(r));
    assert_eq!(turns.len(), 200);
    assert!(summaries.len() >= 10, "only {} summary calls", summaries.len());
    for (i, r) in turns.iter().enumerate() {
        let bytes = prompt_bytes(r);
        assert!(bytes <= 3 * BUDGET as usize, "turn {i} sent {bytes} bytes: over the budget");
        assert!(r.last_user_text().is_some_and(|t| t.starts_with(&format!("turn {i}:"))), "turn {i}");
    }
    // The summary call: the documented prompt, then the older turns as text, capped.
    let first = summaries[0];
    assert_eq!(first.body["max_tokens"], json!(SUMMARY_MAX));
    assert_eq!(first.roles(), ["system", "user"]);
    assert!(first.message_texts()[1].1.contains("User: turn 0:"), "{:?}", first.message_texts());
    // Later turns carry the current summary in the system message, not the old turns.
    let last = turns[199].message_texts();
    assert!(last[0].1.starts_with("Summary of the earlier conversation:\n"), "{last:?}");
    assert!(!last.iter().any(|(_, t)| t.starts_with("turn 0:")));

    // History keeps every message, the early ones flagged, and every summary.
    let mut client = s.svc.client().await;
    let h = harness::history(&mut client, &key_of("alice")).await.expect("history");
    let messages: Vec<_> = h.iter().filter(|e| !e.summary).collect();
    assert_eq!(messages.len(), 400);
    assert!(messages[0].compacted && !messages[399].compacted);
    assert_eq!(h.iter().filter(|e| e.summary).count(), summaries.len());
    assert_eq!(h.iter().filter(|e| e.summary && !e.compacted).count(), 1, "one current summary");
    assert!(h.windows(2).all(|w| w[0].seq + 1 == w[1].seq), "seqs are contiguous");
    eprintln!(
        "200 turns, {} summary calls; prompt bytes: turn 10 {}, turn 100 {}, turn 199 {}, largest {}; \
         without compaction turn 199 would have sent about {uncompacted_bytes}",
        summaries.len(),
        prompt_bytes(turns[10]),
        prompt_bytes(turns[100]),
        prompt_bytes(turns[199]),
        turns.iter().map(|r| prompt_bytes(r)).max().unwrap_or(0),
    );
}

/// Every tool result a request carries follows the assistant message that
/// called it, and every call is followed by its result.
fn assert_tool_pairs(r: &RecordedRequest, what: &str) {
    let messages = r.messages();
    for (i, m) in messages.iter().enumerate() {
        if m["role"] == "tool" {
            let id = m["tool_call_id"].as_str().unwrap_or_default();
            let called = messages[..i]
                .iter()
                .any(|a| a["tool_calls"].as_array().is_some_and(|calls| calls.iter().any(|c| c["id"] == id)));
            assert!(called, "{what}: tool result {id} without its call: {messages:?}");
        }
        for call in m["tool_calls"].as_array().into_iter().flatten() {
            let answered =
                messages[i + 1..].iter().any(|t| t["role"] == "tool" && t["tool_call_id"] == call["id"]);
            assert!(answered, "{what}: call {} without its result", call["id"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_never_sends_a_tool_result_without_its_call() {
    let mock = MockUpstream::start().await;
    let s = stack(budgeted(&mock, "truncate")).await;
    for i in 0..40 {
        let id = format!("call_{i}");
        let args = json!({"q": format!("{i} {FILLER}")}).to_string();
        mock.push(Behavior::tool_call(&id, "lookup", &args));
        let question = format!("question {i}");
        let r = chat(&s, &turn("dave", &question)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let calls = r.json()["choices"][0]["message"]["tool_calls"].clone();
        assert_eq!(calls[0]["id"], id.as_str(), "{}", r.text);
        let result = json!({
            "user": "dave",
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": null, "tool_calls": calls},
                {"role": "tool", "tool_call_id": id, "content": format!("result {i}: {FILLER}")},
            ],
        });
        let r = chat(&s, &result).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let requests = mock.requests();
    assert_eq!(requests.len(), 80);
    for (i, r) in requests.iter().enumerate() {
        assert!(!is_summary_call(r), "truncate mode makes no summary call");
        assert_tool_pairs(r, &format!("request {i}"));
        assert!(prompt_bytes(r) <= 3 * BUDGET as usize, "request {i} over the budget");
    }
    let mut client = s.svc.client().await;
    let h = harness::history(&mut client, &key_of("dave")).await.expect("history");
    assert_eq!(h.len(), 160);
    assert!(h[0].compacted && !h[159].compacted && !h.iter().any(|e| e.summary));
}

#[tokio::test]
async fn a_provider_that_finds_the_prompt_too_long_gets_one_compaction_and_a_retry() {
    let mock = MockUpstream::start().await;
    // A budget the provider disagrees with.
    let cfg = config(&mock).set("agents.defaults.compaction", json!({"summaryMaxTokens": SUMMARY_MAX}));
    let s = stack(cfg).await;
    for i in 0..6 {
        assert_eq!(chat(&s, &turn("erin", &format!("turn {i}: {FILLER}"))).await.status, 200);
    }
    let too_long = "This model's maximum context length is 512 tokens. However, you requested 900 tokens.";
    mock.push(Behavior::error(400, too_long));
    let r = chat(&s, &turn("erin", "and now?")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let requests = mock.requests();
    let tail: Vec<&RecordedRequest> = requests[6..].iter().collect();
    assert_eq!(tail.len(), 3, "the refused turn, the summary call, the retry");
    assert!(is_summary_call(tail[1]));
    assert!(prompt_bytes(tail[2]) < prompt_bytes(tail[0]), "the retry is smaller");
    assert!(tail[2].message_texts()[0].1.starts_with("Summary of the earlier conversation:"));

    // When even that does not help, the client gets the provider's 400, once.
    for _ in 0..3 {
        mock.push(Behavior::error(400, too_long));
    }
    let r = chat(&s, &turn("erin", "still?")).await;
    let e = r.expect_error(400, "invalid_request_error");
    assert_eq!(e["code"], "context_length_exceeded", "{e}");
    assert_eq!(mock.request_count(), 9 + 3);
}

#[tokio::test]
async fn a_request_that_cannot_fit_the_budget_is_a_400() {
    let mock = MockUpstream::start().await;
    let s = stack(budgeted(&mock, "summarize")).await;
    let huge = "x".repeat(3 * BUDGET as usize + 10);
    // Stateless: the client's own history is never cut.
    let r = chat(&s, &ask(&huge)).await;
    let e = r.expect_error(400, "invalid_request_error");
    assert_eq!(e["code"], "context_length_exceeded");
    assert_eq!(e["param"], "messages");
    assert!(e["message"].as_str().unwrap_or_default().contains("budget of 1500 tokens"), "{e}");
    // Stable: a new turn that alone is over the budget.
    let r = chat(&s, &turn("frank", &huge)).await;
    assert_eq!(r.expect_error(400, "invalid_request_error")["code"], "context_length_exceeded");
    assert_eq!(mock.request_count(), 0, "nothing went upstream");
}

#[tokio::test]
async fn sessions_are_compacted_reset_and_deleted_over_grpc() {
    let mock = MockUpstream::start().await;
    let s = stack(budgeted(&mock, "summarize")).await;
    let key = key_of("carol");
    for i in 0..5 {
        assert_eq!(chat(&s, &turn("carol", &format!("turn {i}: {FILLER}"))).await.status, 200);
    }
    assert_eq!(mock.request_count(), 5, "below the threshold: no compaction yet");
    let mut c = s.svc.client().await;

    let r = c.compact_session(CompactSessionRequest { session_key: key.clone() }).await.expect("compact");
    let r = r.into_inner();
    assert!(r.compacted && r.summarized, "{r:?}");
    // (The mock's "summary" is the transcript cut to summaryMaxTokens, longer
    // than what a model would write: the token counts are not compared.)
    assert!(r.kept_messages < 10 && r.tokens_before > 0 && r.tokens_after > 0, "{r:?}");
    assert!(mock.requests().iter().any(is_summary_call));
    let h = harness::history(&mut c, &key).await.expect("history");
    assert!(h[0].compacted && h.last().is_some_and(|e| e.summary && !e.compacted), "{h:?}");
    // The next turn sends the summary instead of the compacted turns.
    assert_eq!(chat(&s, &turn("carol", "next")).await.status, 200);
    let sent = mock.requests().last().expect("a request").message_texts();
    assert!(sent[0].1.starts_with("Summary of the earlier conversation:"), "{sent:?}");
    assert!(!sent.iter().any(|(_, t)| t.starts_with("turn 0:")));

    // Reset: the key stays, the transcript goes; the next turn starts afresh.
    let r = c.reset_session(ResetSessionRequest { session_key: key.clone() }).await.expect("reset");
    assert!(r.into_inner().existed);
    assert!(harness::history(&mut c, &key).await.expect("history").is_empty());
    let listed = c.list_sessions(ListSessionsRequest::default()).await.expect("list").into_inner();
    assert!(listed.sessions.iter().any(|s| s.session_key == key && s.message_count == 0));
    assert_eq!(chat(&s, &turn("carol", "fresh start")).await.status, 200);
    assert_eq!(mock.requests().last().expect("a request").roles(), ["user"]);

    // Delete: gone.
    let r = c.delete_session(DeleteSessionRequest { session_key: key.clone() }).await.expect("delete");
    assert!(r.into_inner().deleted);
    let listed = c.list_sessions(ListSessionsRequest::default()).await.expect("list").into_inner();
    assert!(!listed.sessions.iter().any(|s| s.session_key == key));
    let e = harness::history(&mut c, &key).await.expect_err("gone");
    assert_eq!(e.code(), tonic::Code::NotFound);
    let r = c.delete_session(DeleteSessionRequest { session_key: key.clone() }).await.expect("delete");
    assert!(!r.into_inner().deleted);
    let e = c.compact_session(CompactSessionRequest { session_key: key.clone() }).await.expect_err("unknown");
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = c.reset_session(ResetSessionRequest { session_key: String::new() }).await.expect_err("empty key");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn sessions_are_compacted_reset_deleted_and_paged_over_the_websocket() {
    let mock = MockUpstream::start().await;
    let s = stack(budgeted(&mock, "truncate")).await;
    let (mut ws, hello) = WsClient::connect(s.gw.addr(), json!({"token": TOKEN})).await;
    assert_eq!(hello["ok"], true, "{hello}");
    for i in 0..5 {
        let run = ws
            .call(
                "chat.send",
                json!({"sessionKey": "notes", "message": format!("turn {i}: {FILLER}"),
            "idempotencyKey": format!("k{i}")}),
            )
            .await;
        let run_id = run["payload"]["runId"].as_str().expect("run id").to_string();
        let events = ws.chat_run(&run_id).await;
        assert_eq!(events.last().map(|e| e["state"].clone()), Some(json!("final")), "{events:?}");
    }

    let r = ws.call("sessions.compact", json!({"sessionKey": "notes"})).await;
    assert_eq!(r["ok"], true, "{r}");
    let p = &r["payload"];
    assert_eq!(p["sessionKey"], "agent:main:notes");
    assert_eq!((p["compacted"].clone(), p["summarized"].clone()), (json!(true), json!(false)), "{p}");

    // Pages of two, newest first; the cursor walks back to the start.
    let mut seen = Vec::new();
    let mut before = Value::Null;
    loop {
        let mut params = json!({"sessionKey": "notes", "limit": 2});
        if !before.is_null() {
            params["before"] = before.clone();
        }
        let r = ws.call("chat.history", params).await;
        let page = r["payload"]["messages"].as_array().expect("messages").clone();
        let mut seqs: Vec<i64> = page.iter().filter_map(|m| m["seq"].as_i64()).collect();
        seqs.extend(seen);
        seen = seqs;
        before = r["payload"]["nextBefore"].clone();
        if before.is_null() {
            break;
        }
    }
    assert_eq!(seen, (0..10).collect::<Vec<i64>>());
    let r = ws.call("chat.history", json!({"sessionKey": "notes"})).await;
    let all = r["payload"]["messages"].as_array().expect("messages").clone();
    assert_eq!(all[0]["compacted"], true, "{all:?}");
    assert!(all[9].get("compacted").is_none(), "only compacted entries carry the flag");

    let r = ws.call("sessions.reset", json!({"sessionKey": "notes"})).await;
    assert_eq!(r["payload"], json!({"ok": true, "sessionKey": "agent:main:notes", "existed": true}));
    let r = ws.call("chat.history", json!({"sessionKey": "notes"})).await;
    assert_eq!(r["payload"]["messages"], json!([]));
    let r = ws.call("sessions.delete", json!({"sessionKey": "notes"})).await;
    assert_eq!(r["payload"]["deleted"], true, "{r}");
    let r = ws.call("sessions.compact", json!({"sessionKey": "notes"})).await;
    assert_eq!(r["ok"], false);
    assert_eq!(r["error"]["code"], "NOT_FOUND", "{r}");
    let r = ws.call("sessions.reset", json!({"sessionKey": "cron:x"})).await;
    assert_eq!(r["error"]["code"], "INVALID_REQUEST", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_message_history_pages_through_grpc_and_the_websocket() {
    let dir = TempDir::new();
    let key = "agent:main:long";
    let store_spec = format!("sqlite:{}", dir.join("sessions.db").display());
    {
        let store = agent_svc::sessions::open(&store_spec, 1 << 20).await.expect("store");
        for chunk in 0..10 {
            let entries = (0..1000)
                .map(|i| agent_svc::sessions::StoredMessage {
                    message: agent_svc::message::SharedMessage::shared(
                        agent_svc::run::assemble::text_message(
                            if i % 2 == 0 { "user" } else { "assistant" },
                            format!("message {}", chunk * 1000 + i),
                        ),
                    ),
                    ..Default::default()
                })
                .collect();
            store.append(key, "main", entries).await.expect("append");
        }
    }
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock).store(&store_spec)).await;

    let mut c = s.svc.client().await;
    let mut seqs = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let req = GetSessionHistoryRequest { session_key: key.into(), limit: 0, before_seq: before };
        let page = c.get_session_history(req).await.expect("page").into_inner();
        pages += 1;
        let mut page_seqs: Vec<i64> = page.messages.iter().map(|e| e.seq).collect();
        assert!(page.messages.iter().all(|e| harness::role_text(e).1 == format!("message {}", e.seq)));
        page_seqs.extend(seqs);
        seqs = page_seqs;
        match page.next_before_seq {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(pages, 10, "pages of 1000");
    assert_eq!(seqs, (0..10_000).collect::<Vec<i64>>());

    let (mut ws, _) = WsClient::connect(s.gw.addr(), json!({"token": TOKEN})).await;
    let mut count = 0;
    let mut before = Value::Null;
    let mut expected_next = 10_000i64;
    loop {
        let mut params = json!({"sessionKey": key, "limit": 1000});
        if !before.is_null() {
            params["before"] = before.clone();
        }
        let r = ws.call("chat.history", params).await;
        let page = r["payload"]["messages"].as_array().expect("messages").clone();
        let last = page.last().and_then(|m| m["seq"].as_i64()).expect("seq");
        assert_eq!(last, expected_next - 1, "pages join up");
        expected_next = page[0]["seq"].as_i64().expect("seq");
        count += page.len();
        before = r["payload"]["nextBefore"].clone();
        if before.is_null() {
            break;
        }
    }
    assert_eq!((count, expected_next), (10_000, 0));
}

#[tokio::test]
async fn retention_sweeps_sessions_beyond_the_cap_and_past_their_age() {
    let mock = MockUpstream::start().await;
    let cfg = config(&mock)
        .set("session.retention", json!({"maxSessionsPerAgent": 2, "sweepIntervalSeconds": 0.05}));
    let s = stack(cfg).await;
    for user in ["u1", "u2", "u3", "u4"] {
        assert_eq!(chat(&s, &turn(user, "hello")).await.status, 200);
    }
    let client = s.svc.client().await;
    let kept = eventually(T, Duration::from_millis(20), || {
        let mut c = client.clone();
        async move {
            let list = c.list_sessions(ListSessionsRequest::default()).await.ok()?.into_inner();
            let keys: Vec<String> = list.sessions.into_iter().map(|s| s.session_key).collect();
            (keys.len() == 2).then_some(keys)
        }
    })
    .await
    .expect("the sweep keeps two sessions");
    assert_eq!(kept, [key_of("u4"), key_of("u3")], "the most recently used are kept");

    // By age: a session unused for a second goes; one just used stays.
    let mock = MockUpstream::start().await;
    let cfg =
        config(&mock).set("session.retention", json!({"maxAgeSeconds": 1.0, "sweepIntervalSeconds": 0.05}));
    let s = stack(cfg).await;
    assert_eq!(chat(&s, &turn("old", "hello")).await.status, 200);
    let client = s.svc.client().await;
    let gone = eventually(T, Duration::from_millis(20), || {
        let mut c = client.clone();
        async move {
            let list = c.list_sessions(ListSessionsRequest::default()).await.ok()?.into_inner();
            list.sessions.is_empty().then_some(())
        }
    })
    .await;
    assert!(gone.is_some(), "the old session was never swept");
    assert_eq!(chat(&s, &turn("new", "hello")).await.status, 200);
    let list = client.clone().list_sessions(ListSessionsRequest::default()).await.expect("list").into_inner();
    assert_eq!(list.sessions.len(), 1, "a session just used is kept");
}
