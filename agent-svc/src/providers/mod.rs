//! Model providers: one module per provider behind the [`Provider`] trait
//! (`echo.rs`, the built-in offline one; `openai/`, any OpenAI-compatible
//! upstream).
//!
//! A provider turns a [`ProviderRequest`] (neutral, proto-typed messages) into a
//! stream of [`ProviderEvent`]s. Dropping the stream must abort the upstream
//! request (close the connection), which is how cancellation reaches it.

pub mod echo;
pub mod openai;

use crate::message::SharedMessage;
use futures::stream::BoxStream;
use services::proto::{SamplingParams, Tool, ToolChoice};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a provider is asked to do for one attempt.
#[derive(Debug, Clone, Default)]
pub struct ProviderRequest {
    /// The model name as the provider knows it (no `provider/` prefix).
    pub model: String,
    /// Full upstream conversation: system message first (if any), transcript, new
    /// turn; shared with the session's stored entries (no copy per turn or attempt).
    pub messages: Vec<Arc<SharedMessage>>,
    /// Sampling parameters (already validated).
    pub params: SamplingParams,
    /// Effective completion-token cap (client cap clamped to the model's `maxTokens`).
    pub max_tokens: Option<u32>,
    /// Tools offered to the model.
    pub tools: Vec<Tool>,
    /// Tool choice, if given.
    pub tool_choice: Option<ToolChoice>,
    /// `response_format` as JSON text.
    pub response_format_json: Option<String>,
}

/// One thing the provider produced.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEvent {
    /// A piece of assistant text.
    Text(String),
    /// A fragment of a tool call; `id`/`name` are present on the first fragment.
    ToolCall {
        /// Upstream's index for the call.
        index: u32,
        /// Call id, if upstream gave one in this fragment.
        id: Option<String>,
        /// Function name, if given in this fragment.
        name: Option<String>,
        /// Arguments text fragment.
        arguments: String,
    },
    /// The finish reason (`stop`, `length`, `tool_calls`, `content_filter`).
    Finish(String),
    /// Token usage as counted by the provider.
    Usage {
        /// Prompt tokens.
        prompt_tokens: u32,
        /// Completion tokens.
        completion_tokens: u32,
    },
}

/// Why a provider attempt failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// Upstream 429.
    #[error("provider rate limited: {0}")]
    RateLimited(String),
    /// The request itself was rejected (a 4xx other than 401/403/429); the message is upstream's.
    #[error("{0}")]
    Rejected(String),
    /// The prompt is over the model's context window (a `400` to the client,
    /// after one compaction and retry for a stable session).
    #[error("{0}")]
    ContextTooLong(String),
    /// 5xx, connection refused/reset, malformed response, auth failure.
    #[error("provider error: {0}")]
    Upstream(String),
    /// Connect or first-byte timeout.
    #[error("provider timeout: {0}")]
    Timeout(String),
}

/// A stream of provider events; it ends after `Finish` (and `Usage`, when sent).
pub type ProviderStream = BoxStream<'static, Result<ProviderEvent, ProviderError>>;

/// Future that resolves once the upstream answered (status and headers in) or failed.
pub type ProviderFuture = Pin<Box<dyn Future<Output = Result<ProviderStream, ProviderError>> + Send>>;

/// A model provider.
pub trait Provider: Send + Sync + 'static {
    /// Starts one attempt. Errors before any event (including HTTP error statuses)
    /// come from the future; errors mid-stream come as stream items.
    fn stream(&self, req: ProviderRequest) -> ProviderFuture;
}

/// Message builders the provider tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use services::proto::{content_part, ContentPart, ImageUrl, Message};

    /// An image part.
    pub(crate) fn image_part(url: &str, detail: Option<&str>) -> ContentPart {
        let image = ImageUrl { url: url.into(), detail: detail.map(Into::into) };
        ContentPart { part: Some(content_part::Part::ImageUrl(image)) }
    }

    /// A text part.
    pub(crate) fn text_part(t: &str) -> ContentPart {
        ContentPart { part: Some(content_part::Part::Text(t.into())) }
    }

    /// A plain text message (sent as a string `content`).
    pub(crate) fn msg(role: &str, text: &str) -> Message {
        Message { role: role.into(), parts: vec![text_part(text)], text_only: true, ..Default::default() }
    }
}
