//! Run events collected into one non-streaming `chat.completion` body.

use crate::client::{is_token, RunEvent, RunEvents};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::openai::UsageJson;
use futures::StreamExt;
use serde::Serialize;
use services::proto::{RunFinished, ToolCall};
use services::run_events::{finish_reason, ToolCallFold};
use std::time::Instant;

/// Collects a whole run for a non-streaming answer. An error at any point
/// before `finished` becomes the HTTP error.
pub async fn collect(
    mut events: RunEvents,
    metrics: &Metrics,
    started_at: Instant,
) -> Result<CompletionFold, ApiError> {
    let mut fold = CompletionFold::default();
    let mut first_token = true;
    while let Some(event) = events.next().await {
        let event = event?;
        if first_token && is_token(&event) {
            first_token = false;
            metrics.first_token(started_at.elapsed());
        }
        if let RunEvent::Finished(f) = &event {
            metrics.run_finished(started_at, f);
        }
        fold.push(event);
        if fold.is_finished() {
            return Ok(fold);
        }
    }
    // `RunEvents` ends with `finished` or an error; this is unreachable in practice.
    Err(crate::client::ended_early())
}

/// Accumulates a run's events: text concatenated, tool calls by index
/// (arguments concatenated), the finish reason and usage.
#[derive(Debug, Default)]
pub struct CompletionFold {
    /// From `started`: the session key (for `x-openclaw-session-key`).
    pub session_key: Option<String>,
    text: String,
    tool_calls: ToolCallFold,
    finished: Option<RunFinished>,
}

impl CompletionFold {
    /// Adds one event.
    pub fn push(&mut self, event: RunEvent) {
        match event {
            RunEvent::Started(s) => self.session_key = Some(s.session_key),
            RunEvent::Text(t) => self.text.push_str(&t.text),
            RunEvent::ToolCall(d) => {
                self.tool_calls.push_delta(&d);
            }
            RunEvent::Finished(f) => self.finished = Some(f),
        }
    }

    /// Whether `finished` has arrived.
    pub fn is_finished(&self) -> bool {
        self.finished.is_some()
    }

    /// The `chat.completion` JSON. `model` is the request's model string.
    pub fn to_json(&self, id: &str, created: u64, model: &str) -> Vec<u8> {
        let calls: Vec<ToolCall> = self.tool_calls.calls();
        let tool_calls: Vec<ToolCallOut<'_>> = calls
            .iter()
            .map(|c| ToolCallOut {
                id: &c.id,
                kind: "function",
                function: FunctionOut { name: &c.name, arguments: &c.arguments },
            })
            .collect();
        let finished = self.finished.as_ref();
        let body = Completion {
            id,
            object: "chat.completion",
            created,
            model,
            choices: [Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    // Null content only when the answer is tool calls alone.
                    content: (!self.text.is_empty() || tool_calls.is_empty()).then_some(self.text.as_str()),
                    tool_calls: &tool_calls,
                },
                finish_reason: finish_reason(finished.map_or("", |f| f.finish_reason.as_str())),
            }],
            usage: finished.and_then(|f| f.usage.as_ref()).into(),
        };
        let mut out = Vec::with_capacity(256 + self.text.len());
        // Serializing plain structs into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &body);
        out
    }
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: UsageJson,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    finish_reason: &'a str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tool_calls: &'a [ToolCallOut<'a>],
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use services::proto::{RunStarted, TextDelta, ToolCallDelta, Usage};

    fn started() -> RunEvent {
        RunEvent::Started(RunStarted {
            run_id: "r1".into(),
            agent_id: "main".into(),
            session_key: "agent:main:openai:abc".into(),
            model: "echo/echo".into(),
        })
    }

    fn text(t: &str) -> RunEvent {
        RunEvent::Text(TextDelta { text: t.into() })
    }

    fn call(index: u32, id: &str, name: &str, args: &str) -> RunEvent {
        RunEvent::ToolCall(ToolCallDelta { index, id: id.into(), name: name.into(), arguments: args.into() })
    }

    fn finished(reason: &str, usage: Option<Usage>) -> RunEvent {
        RunEvent::Finished(RunFinished {
            finish_reason: reason.into(),
            usage,
            model: "echo/echo".into(),
            ..Default::default()
        })
    }

    fn fold(events: Vec<RunEvent>) -> (CompletionFold, Value) {
        let mut f = CompletionFold::default();
        for e in events {
            f.push(e);
        }
        let v = serde_json::from_slice(&f.to_json("chatcmpl_x", 1_700_000_000, "openclaw/main")).unwrap();
        (f, v)
    }

    #[test]
    fn text_answer() {
        let usage = Usage { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 };
        let (f, v) = fold(vec![started(), text("Hel"), text("lo"), finished("stop", Some(usage))]);
        assert_eq!(f.session_key.as_deref(), Some("agent:main:openai:abc"));
        assert!(f.is_finished());
        assert_eq!(
            v,
            json!({
                "id": "chatcmpl_x", "object": "chat.completion", "created": 1_700_000_000, "model": "openclaw/main",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
            })
        );
    }

    #[test]
    fn tool_calls_by_index_with_generated_ids() {
        let (_, v) = fold(vec![
            started(),
            call(1, "", "g", "{\"b\""),
            call(0, "call_abc", "f", "{\"a\":"),
            call(0, "", "", "1}"),
            call(1, "", "", ":2}"),
            finished("tool_calls", None),
        ]);
        let msg = &v["choices"][0]["message"];
        assert_eq!(msg["content"], Value::Null);
        assert_eq!(
            msg["tool_calls"],
            json!([
                {"id": "call_abc", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                {"id": "call_1", "type": "function", "function": {"name": "g", "arguments": "{\"b\":2}"}},
            ])
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        // No usage from agent-svc: zeros.
        assert_eq!(v["usage"], json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}));
    }

    #[test]
    fn text_with_tool_calls_keeps_text_and_empty_answer_is_empty_string() {
        let (_, v) = fold(vec![text("Let me check."), call(0, "c", "f", "{}"), finished("tool_calls", None)]);
        assert_eq!(v["choices"][0]["message"]["content"], "Let me check.");
        let (_, v) = fold(vec![finished("length", None)]);
        assert_eq!(v["choices"][0]["message"]["content"], "");
        assert!(v["choices"][0]["message"].get("tool_calls").is_none());
        assert_eq!(v["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn missing_total_is_computed() {
        let usage = Usage { prompt_tokens: 3, completion_tokens: 4, total_tokens: 0 };
        let (_, v) = fold(vec![finished("", Some(usage))]);
        assert_eq!(v["usage"]["total_tokens"], 7);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
}
