//! What the gateway test files share: `use e2e::prelude::*;` brings the
//! test-support types, the standard config and stack, request bodies, and the
//! SPEC's cancellation bound with the check that asserts it.
//!
//! ```no_run
//! # async fn demo() {
//! use e2e::prelude::*;
//!
//! let mock = MockUpstream::start().await;
//! let s = stack(config(&mock)).await;
//! mock.push(Behavior::text("hello"));
//! let r = chat(&s, &ask("hi")).await;
//! assert_eq!(r.json()["choices"][0]["message"]["content"], "hello");
//! # }
//! ```

pub use crate::gateway::{json_body, open, send, Gateway, Reply, Stack};
pub use crate::harness::{self, eventually, role_text, rt, AgentSvc, ConfigBuilder};
pub use crate::mock::{numbered_words, Behavior, Gate, MockToolCall, MockUpstream, RecordedRequest};
pub use crate::sse::{content_of, read_stream, SseEvent, SseFrame, SseReader, SseReply};
pub use serde_json::{json, Value};
pub use std::time::{Duration, Instant};

/// The gateway token of [`config`], sent by the [`stack`]'s gateway helpers.
pub const TOKEN: &str = "e2e-gateway-token";

/// Bound on waiting for things that should take milliseconds: it only keeps a
/// broken test from hanging, nothing is measured against it.
pub const T: Duration = Duration::from_secs(10);

/// SPEC §4 "Cancellation": a client that disconnects cancels the run, and
/// agent-svc aborts the provider request within 100 ms. The one timing the
/// tests assert: from a client's drop to the mock seeing its request's
/// connection go ([`expect_upstream_cancelled`]), and likewise for the provider
/// request of a run that was aborted or timed out.
pub const CANCEL_BOUND: Duration = Duration::from_millis(100);

/// The mock as the default model, chat completions on, token auth with [`TOKEN`].
pub fn config(mock: &MockUpstream) -> ConfigBuilder {
    ConfigBuilder::with_mock(mock).enable_chat_completions().auth_token(TOKEN)
}

/// agent-svc and a gateway in front of it, both on `cfg`; the gateway's helpers
/// send [`TOKEN`].
pub async fn stack(cfg: ConfigBuilder) -> Stack {
    harness::init_tracing();
    Stack::start(&cfg, Some(TOKEN)).await
}

/// `{"role": "user", "content": text}`.
pub fn user_msg(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// A chat body of one user message.
pub fn ask(text: &str) -> Value {
    json!({"messages": [user_msg(text)]})
}

/// `body` with the top-level fields of `extra` added (or replaced).
pub fn with(mut body: Value, extra: Value) -> Value {
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

/// A streaming chat body of one user message, with `extra` fields.
pub fn streamed(text: &str, extra: Value) -> Value {
    with(json!({"stream": true, "messages": [user_msg(text)]}), extra)
}

/// `POST /v1/chat/completions` with `body` on the stack's gateway, read whole.
pub async fn chat(s: &Stack, body: &Value) -> Reply {
    send(s.gw.chat(body)).await
}

/// Waits for the mock to see the client of a provider request go away (agent-svc
/// aborted it) and asserts that this came within [`CANCEL_BOUND`] of `since`,
/// the moment the test's client dropped. Returns the measured latency.
pub async fn expect_upstream_cancelled(mock: &MockUpstream, since: Instant) -> Duration {
    let at = mock.disconnect_since(since, T).await;
    let at = at.unwrap_or_else(|| panic!("the upstream request was not aborted within {T:?}"));
    let latency = at.duration_since(since);
    eprintln!("client drop -> upstream disconnect: {latency:?} (SPEC bound {CANCEL_BOUND:?})");
    assert!(latency < CANCEL_BOUND, "upstream aborted {latency:?} after the client left");
    latency
}

/// Sends `rb` and, once `when` completes, gives up on it: the request (and with
/// it the connection) is dropped. Returns the instant just before the drop.
/// Panics when the response head comes first.
pub async fn give_up_when(
    rb: reqwest::RequestBuilder,
    when: impl std::future::Future<Output = ()>,
) -> Instant {
    let mut send = Box::pin(rb.send());
    tokio::select! {
        r = &mut send => panic!("the response came before the client gave up: {r:?}"),
        () = when => {}
    }
    let at = Instant::now();
    drop(send);
    at
}

/// [`give_up_when`] after `patience`: a client impatient on purpose.
pub async fn give_up_after(rb: reqwest::RequestBuilder, patience: Duration) -> Instant {
    give_up_when(rb, tokio::time::sleep(patience)).await
}
