//! The OpenAI Chat Completions wire shapes and their translation, and nothing
//! else in the crate knows OpenAI JSON:
//!
//! - [`request`]: request JSON (+ the OpenClaw headers) → [`services::proto::AgentRunRequest`];
//! - [`response`]: run events collected into one `chat.completion` body;
//! - [`stream`]: run events → `chat.completion.chunk` SSE frames;
//! - [`sse`]: a run streamed to one client as those frames (the response body);
//! - [`models`]: the `/v1/models` list.

pub mod models;
pub mod request;
pub mod response;
pub mod sse;
pub mod stream;

pub use request::{parse_chat_request, ChatRequest, ImagePolicy, Overrides};
pub use response::{collect, CompletionFold};
pub use sse::SseRun;
pub use stream::ChunkWriter;

use services::proto::Usage;
use services::run_events;
use std::time::{SystemTime, UNIX_EPOCH};

/// The `model` echoed when the request has none.
pub const DEFAULT_MODEL: &str = "openclaw";

/// A fresh completion id, `chatcmpl_<uuid>`.
pub fn completion_id() -> String {
    services::ids::with_uuid(&["chatcmpl_"])
}

/// Unix seconds now, for `created`.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `usage` as OpenAI spells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct UsageJson {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

impl From<Option<&Usage>> for UsageJson {
    fn from(u: Option<&Usage>) -> Self {
        match u {
            Some(u) => UsageJson {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                total_tokens: run_events::total_tokens(u),
            },
            None => UsageJson::default(),
        }
    }
}
