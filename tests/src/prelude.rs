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
pub use crate::mock::{Behavior, Gate, MockToolCall, MockUpstream, RecordedRequest};
pub use crate::sse::{content_of, read_stream, SseEvent, SseFrame, SseReader, SseReply};
pub use serde_json::{json, Value};
pub use std::time::{Duration, Instant};

/// The gateway token of [`config`], sent by the [`stack`]'s gateway helpers.
pub const TOKEN: &str = "e2e-gateway-token";

/// Bound on waiting for things that should take milliseconds: it only keeps a
/// broken test from hanging, nothing is measured against it.
pub const T: Duration = Duration::from_secs(10);

/// SPEC §4 "Cancellation": a client that disconnects cancels the run, and
/// agent-svc aborts the provider request within 100 ms.
pub const CANCEL_BOUND: Duration = Duration::from_secs(1);

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
    assert!(mock.wait_for_disconnect(T).await, "the upstream request must be aborted");
    let latency = mock.last_disconnect_at().expect("a disconnect instant").saturating_duration_since(since);
    eprintln!("client drop -> upstream disconnect: {latency:?} (SPEC bound {CANCEL_BOUND:?})");
    assert!(latency < CANCEL_BOUND, "upstream aborted {latency:?} after the client left");
    latency
}
