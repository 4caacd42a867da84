//! Upstream message assembly (SPEC §4 "Sessions"): the agent's system prompt plus
//! the request's system/developer texts as one system message, then the
//! transcript, then the new turn. How a request splits into those parts is a
//! shared rule: [`services::messages::split`].

use crate::message::SharedMessage;
use crate::sessions::StoredMessage;
use services::messages::message_text;
use services::proto::{content_part::Part, ContentPart, Message};
use std::sync::Arc;

/// A plain text message.
pub fn text_message(role: &str, text: String) -> Message {
    Message {
        role: role.to_string(),
        parts: vec![ContentPart { part: Some(Part::Text(text)) }],
        text_only: true,
        ..Default::default()
    }
}

/// What introduces a compaction summary in the system message.
pub const SUMMARY_HEADING: &str = "Summary of the earlier conversation:";

/// The one system message: the agent's prompt, the request's system texts and
/// the session's summary, in that order, blank-line separated.
pub fn system_text(
    agent_prompt: Option<&str>,
    request_system: Option<&str>,
    summary: Option<&str>,
) -> Option<String> {
    let summary = summary.map(|s| format!("{SUMMARY_HEADING}\n{s}"));
    let parts: Vec<&str> = [agent_prompt.filter(|p| !p.is_empty()), request_system, summary.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

/// A stored message as it goes upstream: an interrupted assistant message keeps
/// only its text (a half-made tool call would make the provider reject the
/// history), and is left out when it has none.
pub fn upstream_message(stored: &StoredMessage) -> Option<Arc<SharedMessage>> {
    if stored.interrupted && stored.message.role == "assistant" {
        let text = message_text(&stored.message);
        (!text.is_empty()).then(|| SharedMessage::shared(text_message("assistant", text)))
    } else {
        Some(Arc::clone(&stored.message))
    }
}

/// Builds what goes upstream: the system message (with the session's summary,
/// if any), the transcript, the request's own history, the new turn.
pub fn upstream_messages(
    system: Option<String>,
    transcript: &[Arc<StoredMessage>],
    client_history: &[Arc<SharedMessage>],
    new_turn: &[Arc<SharedMessage>],
) -> Vec<Arc<SharedMessage>> {
    let mut out = Vec::with_capacity(1 + transcript.len() + client_history.len() + new_turn.len());
    if let Some(s) = system {
        out.push(SharedMessage::shared(text_message("system", s)));
    }
    out.extend(transcript.iter().filter_map(|m| upstream_message(m)));
    out.extend(client_history.iter().cloned());
    out.extend(new_turn.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use services::proto::ToolCall;

    fn msg(role: &str, text: &str) -> Message {
        text_message(role, text.to_string())
    }

    fn shared(m: Message) -> Arc<SharedMessage> {
        SharedMessage::shared(m)
    }

    #[test]
    fn upstream_order_and_interrupted_sanitising() {
        let stored = |m: Message, interrupted| {
            Arc::new(StoredMessage { message: SharedMessage::shared(m), interrupted, ..Default::default() })
        };
        let half_call = Message {
            tool_calls: vec![ToolCall {
                id: "c".into(),
                r#type: "function".into(),
                name: "f".into(),
                arguments: "{\"a".into(),
            }],
            ..msg("assistant", "partial")
        };
        let empty_interrupted = Message { role: "assistant".into(), ..Default::default() };
        let transcript = vec![
            stored(msg("user", "u1"), false),
            stored(half_call, true),
            stored(msg("user", "u2"), false),
            stored(empty_interrupted, true),
        ];
        let out = upstream_messages(
            system_text(Some("AGENT"), Some("REQ"), None),
            &transcript,
            &[],
            &[shared(msg("user", "now"))],
        );
        let expected = [
            msg("system", "AGENT\n\nREQ"),
            msg("user", "u1"),
            msg("assistant", "partial"),
            msg("user", "u2"),
            msg("user", "now"),
        ];
        assert_eq!(out, expected.map(shared));
        // The transcript's entries are shared, not copied.
        assert!(Arc::ptr_eq(&out[1], &transcript[0].message));
        let (h, n) = (shared(msg("user", "h")), shared(msg("user", "n")));
        let out = upstream_messages(
            system_text(None, None, None),
            &[],
            std::slice::from_ref(&h),
            std::slice::from_ref(&n),
        );
        assert_eq!(out, vec![h, n]);
        assert_eq!(
            system_text(Some(""), None, Some("we met")).as_deref(),
            Some("Summary of the earlier conversation:\nwe met")
        );
        assert_eq!(
            system_text(Some("A"), None, Some("S")).as_deref(),
            Some("A\n\nSummary of the earlier conversation:\nS")
        );
    }
}
