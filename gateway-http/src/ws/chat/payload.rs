//! The JSON of `chat` events.

use super::ChatRun;
use serde::Serialize;

/// `{role:"assistant", content:[{type:"text", text}], toolCalls?}`.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AssistantMessage<'a> {
    pub(super) role: &'static str,
    pub(super) content: [TextPart<'a>; 1],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub(super) tool_calls: &'a [ToolCallJson<'a>],
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct TextPart<'a> {
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) text: &'a str,
}

/// A tool call as the WebSocket protocol spells it.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct ToolCallJson<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub arguments: &'a str,
}

/// One entry of `deltaToolCalls`: what a `delta` adds to the tool call at
/// `index` (0-based, one per parallel call). `id` and `name` come once, with the
/// call's first fragment; `arguments` is the argument text received since the
/// previous `delta` (appended, it gives the call's arguments; may be empty).
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct ToolCallDeltaJson<'a> {
    pub(super) index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<&'a str>,
    pub(super) arguments: &'a str,
}

/// `usage` in `final`.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UsageJson {
    pub(super) prompt_tokens: u32,
    pub(super) completion_tokens: u32,
    pub(super) total_tokens: u32,
}

/// The payload of a `chat` event.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ChatPayload<'a> {
    pub(super) run_id: &'a str,
    pub(super) session_key: &'a str,
    pub(super) seq: u64,
    pub(super) state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) delta_text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) delta_tool_calls: Option<&'a [ToolCallDeltaJson<'a>]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) message: Option<AssistantMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) usage: Option<UsageJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) stop_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error_message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error_code: Option<&'a str>,
}

impl<'a> ChatPayload<'a> {
    pub(super) fn new(run: &'a ChatRun, state: &'static str) -> ChatPayload<'a> {
        ChatPayload {
            run_id: &run.run_id,
            session_key: &run.session_key,
            seq: 0,
            state,
            delta_text: None,
            delta_tool_calls: None,
            message: None,
            usage: None,
            stop_reason: None,
            model: None,
            error_message: None,
            error_code: None,
        }
    }
}
